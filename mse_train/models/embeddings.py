"""Embeddings of numeric features: periodic (PLR) and piecewise-linear, one vector per feature.

After Gorishniy, Rubachev & Babenko, "On Embeddings for Numerical Features in Tabular Deep
Learning" (NeurIPS 2022), learning from their reference package `rtdl_num_embeddings`
(Apache-2.0): the same formulas, initialisations and defaults, written here so that every
tensor's shape follows from the model config alone (a checkpoint is rebuilt from its spec,
then its state_dict fills the bins) and every stored tensor is floating point.

Inputs are the standardised numeric columns, (rows, features); outputs (rows, features * size).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mse_train.config import schema


class PeriodicEmbedding(nn.Module):
    """PLR: x -> ReLU(Linear([cos(2 pi c x), sin(2 pi c x)])), frequencies c ~ N(0, sigma) learned.

    `lite` shares the linear layer between features (the package's `lite=True`, from the TabR
    paper); by default each feature has its own, as in the NeurIPS paper.
    """

    def __init__(self, n_features: int, size: int, frequencies: int, scale: float, lite: bool) -> None:
        super().__init__()
        self.frequency = nn.Parameter(torch.empty(n_features, frequencies))
        width = 2 * frequencies
        shape = (width, size) if lite else (n_features, width, size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(size if lite else (n_features, size)))
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the package: N(0, sigma) cut at 3 sigma; the linear layer U(+-1/sqrt(fan_in)).
        nn.init.trunc_normal_(self.frequency, 0.0, self.scale, a=-3 * self.scale, b=3 * self.scale)
        bound = self.weight.shape[-2] ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 2 * math.pi * self.frequency * x[..., None]  # (rows, features, k)
        z = torch.cat([torch.cos(v), torch.sin(v)], -1)  # (rows, features, 2k)
        # lite: one matrix for every feature; else each feature its own
        z = z @ self.weight if self.weight.dim() == 2 else torch.einsum("bfi,fio->bfo", z, self.weight)
        return torch.relu(z + self.bias).flatten(1)

    def row_width(self) -> int:
        """Activations held per row (for the memory estimate)."""
        n, k = self.frequency.shape
        return n * (2 * k + self.bias.shape[-1])


class PiecewiseLinearEmbedding(nn.Module):
    """Piecewise-linear encoding of quantile bins, then one linear map per feature.

    Encoding (the paper's Eq. 1): for a value in bin t of edges b_0 < ... < b_m, the vector
    [1, ..., 1, (x - b_t) / (b_{t+1} - b_t), 0, ..., 0]; the first component is left
    unbounded below and the last above, so values beyond the training range extrapolate.
    As the package's version "B" (the one TabM recommends): a linear embedding of x plus the
    encoding's linear map, which starts at zero, so training begins from a plain linear
    embedding. No activation (the package's `activation=False` starting point).

    The bins are buffers of a fixed shape (features, `bins`): a feature whose quantiles
    repeat uses its first slots and the last one; the slots between stay 0 (as the package
    lays them out), so the shapes follow from the config and the values from the state_dict.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    single: torch.Tensor

    def __init__(self, n_features: int, size: int, bins: int) -> None:
        super().__init__()
        # encoding = clamp(scale * x + shift): 1 / width and -left / width per bin
        self.register_buffer("scale", torch.zeros(n_features, bins))
        self.register_buffer("shift", torch.zeros(n_features, bins))
        self.register_buffer("single", torch.zeros(n_features, 1))  # 1.0: the feature has one bin
        self.linear_weight = nn.Parameter(torch.empty(n_features, size))
        self.linear_bias = nn.Parameter(torch.empty(n_features, size))
        self.weight = nn.Parameter(torch.zeros(n_features, bins, size))
        bound = size**-0.5
        nn.init.uniform_(self.linear_weight, -bound, bound)
        nn.init.uniform_(self.linear_bias, -bound, bound)

    @torch.no_grad()
    def set_bins(self, edges: list[np.ndarray]) -> None:
        """Fill the buffers from each feature's sorted, distinct bin edges (at least 2)."""
        scale = torch.zeros_like(self.scale)
        shift = torch.zeros_like(self.shift)
        single = torch.zeros_like(self.single)
        for i, e in enumerate(edges):
            e64 = torch.as_tensor(e, dtype=torch.float64)
            width = e64.diff()
            n = len(width)
            w, b = (1.0 / width).float(), (-e64[:-1] / width).float()
            scale[i, -1], shift[i, -1] = w[-1], b[-1]
            scale[i, : n - 1], shift[i, : n - 1] = w[:-1], b[:-1]
            single[i] = float(n == 1)
        self.scale.copy_(scale)
        self.shift.copy_(shift)
        self.single.copy_(single)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.addcmul(self.shift, self.scale, x[..., None])  # (rows, features, bins)
        last = z[..., -1:]
        # one bin: plain min-max scaling, unbounded both ways (as the package)
        last = torch.where(self.single > 0, last, last.clamp_min(0.0))
        z = torch.cat([z[..., :1].clamp_max(1.0), z[..., 1:-1].clamp(0.0, 1.0), last], -1)
        encoded = torch.einsum("bfi,fio->bfo", z, self.weight)
        linear = torch.addcmul(self.linear_bias, self.linear_weight, x[..., None])
        return (linear + encoded).flatten(1)

    def row_width(self) -> int:
        n, bins, size = self.weight.shape
        return n * (bins + 2 * size)


def quantile_edges(x: np.ndarray, bins: int) -> list[np.ndarray]:
    """Each column's bin edges: its quantiles at 0, 1/bins, ..., 1, repeats removed.

    `x` must hold the training rows only (validation and test rows would leak into the
    bins). A constant column gets one bin [v, v + 1], a plain shift.
    """
    q = np.quantile(x.astype(np.float64), np.linspace(0.0, 1.0, bins + 1), axis=0)
    edges = []
    for column in q.T:
        distinct = np.unique(column)
        edges.append(distinct if len(distinct) >= 2 else np.array([distinct[0], distinct[0] + 1.0]))
    return edges


def build(cfg: schema.EmbeddedModel, n_features: int) -> nn.Module | None:
    """The embedding `cfg` names for `n_features` numeric inputs; None for `none` or no numbers."""
    if cfg.numeric_embedding == "none" or n_features == 0:
        return None
    size = int(cfg.embedding_size or schema.EMBEDDING_SIZES[cfg.numeric_embedding])
    if cfg.numeric_embedding == "periodic":
        return PeriodicEmbedding(n_features, size, cfg.frequencies, cfg.frequency_scale, cfg.periodic_lite)
    return PiecewiseLinearEmbedding(n_features, size, cfg.bins)


def width(cfg: schema.EmbeddedModel, n_features: int) -> int:
    """Inputs the network after the embedding sees for the numeric features."""
    if cfg.numeric_embedding == "none":
        return n_features
    return n_features * int(cfg.embedding_size or schema.EMBEDDING_SIZES[cfg.numeric_embedding])


def fit(model: nn.Module, x_numeric: np.ndarray) -> None:
    """Set the bins of every piecewise-linear embedding in `model` from training rows."""
    for module in model.modules():
        if isinstance(module, PiecewiseLinearEmbedding):
            module.set_bins(quantile_edges(x_numeric, module.scale.shape[1]))


def stored_problems(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> list[str]:
    """Bins in a checkpoint's weights that `set_bins` could not have written (edited by hand)."""
    problems = []
    for name, module in model.named_modules():
        if not isinstance(module, PiecewiseLinearEmbedding):
            continue
        prefix = f"{name}." if name else ""
        scale, single = weights[f"{prefix}scale"], weights[f"{prefix}single"]
        if bool((scale < 0).any()) or not bool((scale[:, -1] > 0).all()):
            problems.append(
                f"`{where}.{prefix}scale` must hold 1 / bin width (> 0, or 0 in unused slots): "
                "the bins were edited"
            )
        if not bool(((single == 0) | (single == 1)).all()):
            problems.append(f"`{where}.{prefix}single` must hold 0 or 1")
    return problems
