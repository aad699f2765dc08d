"""The networks beyond a plain MLP: residual blocks, TabM's weight-sharing ensemble, and the
wrapper that puts numeric and categorical embeddings in front of any of them.

ResNet after Gorishniy, Rubachev, Khrulkov & Babenko, "Revisiting Deep Learning Models for
Tabular Data" (NeurIPS 2021); TabM after Gorishniy, Kotelnikov & Babenko, "TabM: Advancing
Tabular Deep Learning with Parameter-Efficient Ensembling" (ICLR 2025), learning from the
reference package `tabm` (Apache-2.0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


class Embedded(nn.Module):
    """A numeric embedding on the first `n_numeric` inputs, and a categorical one on the rest
    (their integer codes); without one, those inputs (numbers, one-hot columns) pass as they are."""

    def __init__(
        self,
        embedding: nn.Module | None,
        n_numeric: int,
        network: nn.Module,
        kind: str,
        categorical: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.n_numeric = n_numeric
        self.network = network
        self.kind = kind  # what `export` names when it cannot write the model
        self.categorical = categorical

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None or self.categorical is not None:
            numbers, rest = x[:, : self.n_numeric], x[:, self.n_numeric :]
            if self.embedding is not None:
                numbers = self.embedding(numbers)
            if self.categorical is not None:
                rest = self.categorical(rest)
            x = torch.cat([numbers, rest], 1)
        out: torch.Tensor = self.network(x)
        return out


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d without its int64 batch counter, which only `momentum=None` reads: a
    checkpoint holds floating-point tensors only."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # BatchNorm's own loader adds the counter back to a state_dict without version
        # metadata (a copied dict, a checkpoint); the plain Module loader does not.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args)


NORMS: dict[str, NormFactory] = {"batch_norm": BatchNorm, "layer_norm": nn.LayerNorm}


class ResidualBlock(nn.Module):
    """x + Dropout(Linear(Dropout(Act(Linear(Norm(x))))))."""

    def __init__(
        self, width: int, hidden: int, norm: NormFactory, act: nn.Module, dropout: float, residual: float
    ) -> None:
        super().__init__()
        self.norm = norm(width)
        self.first = nn.Linear(width, hidden)
        self.act = act
        self.dropout = nn.Dropout(dropout)
        self.second = nn.Linear(hidden, width)
        self.residual_dropout = nn.Dropout(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.act(self.first(self.norm(x))))
        out: torch.Tensor = x + self.residual_dropout(self.second(z))
        return out


def resnet(
    n_in: int,
    n_out: int,
    width: int,
    blocks: int,
    hidden: int,
    norm: NormFactory,
    act: Callable[[], nn.Module],
    dropout: float,
    residual: float,
) -> nn.Sequential:
    """Linear to `width`, the blocks, then norm, activation and the linear head."""
    layers: list[nn.Module] = [nn.Linear(n_in, width)]
    layers += [ResidualBlock(width, hidden, norm, act(), dropout, residual) for _ in range(blocks)]
    layers += [norm(width), act(), nn.Linear(width, n_out)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ TabM
class EnsembleLinear(nn.Module):
    """BatchEnsemble linear layer: one shared weight W, and per member i a scaling r_i of the
    inputs, s_i of the outputs and a bias b_i: y_i = ((x_i * r_i) W^T) * s_i + b_i.

    (rows, k, in) -> (rows, k, out). `scale_inputs=False` drops r (TabM's first layer, whose
    input scaling is the model's random `start`); `per_member=False` is a plain shared layer
    (tabm_mini).
    """

    def __init__(self, n_in: int, n_out: int, k: int, per_member: bool, scale_inputs: bool = True) -> None:
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.empty(n_out, n_in))  # nn.Linear's layout: init schemes apply
        self.r = nn.Parameter(torch.ones(k, n_in)) if per_member and scale_inputs else None
        self.s = nn.Parameter(torch.ones(k, n_out)) if per_member else None
        self.bias = nn.Parameter(torch.empty(k if per_member else 1, n_out))
        bound = n_in**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        # All members' biases start equal (as the package): one shared bias plus k zero offsets.
        self.bias.data.copy_(torch.empty(n_out).uniform_(-bound, bound).expand_as(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r is not None:
            x = x * self.r
        x = x @ self.weight.T
        if self.s is not None:
            x = x * self.s
        return x + self.bias

    def row_width(self) -> int:
        return self.k * self.weight.shape[0]  # every member's outputs, shared weight or not


class MemberHeads(nn.Module):
    """k separate linear layers, (rows, k, in) -> (rows, k, out): TabM's heads, and every layer
    of the packed sharing mode."""

    def __init__(self, n_in: int, n_out: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, n_out, n_in))  # each member in nn.Linear's layout
        self.bias = nn.Parameter(torch.empty(k, n_out))
        bound = n_in**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bki,koi->bko", x, self.weight) + self.bias

    def row_width(self) -> int:
        return int(self.bias.numel())


class TabM(nn.Module):
    """k MLPs in one network. Training mode returns every member's prediction, (rows, k, out),
    so that each member is trained on its own MSE (the loss averages them, as TabM does); eval
    mode returns their mean, (rows, out), which is what validation, eval and predict score.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        k: int,
        sharing: str,
        width: int,
        blocks: int,
        act: Callable[[], nn.Module],
        dropout: float,
        chunks: list[int],
        normal_start: bool,
    ) -> None:
        super().__init__()
        self.k = k
        # The very first per-member scaling is random, one value per input feature (`chunks`:
        # the widths of each feature's embedding); the rest start at 1 ("TabM init").
        # packed: the members share nothing, their own first weights set them apart; `start`
        # stays 1 (a per-member input scaling their first layer could learn anyway).
        self.start = nn.Parameter(torch.ones(k, n_in))
        with torch.no_grad():
            at = 0
            # On the meta device (footprint.py counts parameters there) no values are drawn:
            # torch draws them there through its Python reference ops, whose checks import
            # sympy (0.3 s; `normal_` there imports torch._dynamo too) for values that do not exist.
            for chunk in chunks if sharing != "packed" and not self.start.is_meta else []:
                value = torch.randn(k, 1) if normal_start else torch.randint(0, 2, (k, 1)) * 2.0 - 1.0
                self.start[:, at : at + chunk] = value
                at += chunk
        layers: list[nn.Module] = []
        for i in range(blocks):
            # tabm: every layer a BatchEnsemble one (its first input scaling is `start`);
            # tabm_mini: all shared, the members differ only by `start`; packed: k layers.
            n = width if i else n_in
            if sharing == "packed":
                layers.append(MemberHeads(n, width, k))
            else:
                layers.append(EnsembleLinear(n, width, k, sharing == "tabm", scale_inputs=i > 0))
            layers.append(act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.backbone = nn.Sequential(*layers)
        self.head = MemberHeads(width, n_out, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, None, :] * self.start  # (rows, k, in): each member its own view of the row
        out: torch.Tensor = self.head(self.backbone(z))
        return out if self.training else out.mean(1)

    def row_width(self) -> int:
        return self.k * self.start.shape[1]
