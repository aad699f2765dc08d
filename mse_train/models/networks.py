"""The networks a config can name, built from a registry: linear, MLP, ResNet, TabM.

To add a model type: a schema class in config/schema.py (with its `type` Literal and
one-line description), a builder here, and an entry in MODELS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mse_train.config import schema
from mse_train.config.registry import Choice
from mse_train.config.schema import LinearModel, MLPModel, ResNetModel, TabMModel
from mse_train.models import blocks, categorical, embeddings

# `model.activation` -> the module put after each hidden layer (tied to the schema by a test).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


@dataclass(frozen=True)
class Inputs:
    """What a model's input row holds: `total` columns, the first `numeric` of them numbers;
    with categorical embeddings, one code column per entry of `categories` (its number of
    categories), embedded `widths` wide. Without them the rest are one-hot columns."""

    total: int
    numeric: int
    categories: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()

    @property
    def after_categorical(self) -> int:
        """Columns the categorical inputs take once embedded (or as one-hot)."""
        return sum(self.widths) if self.categories else self.total - self.numeric


def _embedded(cfg: schema.ModelConfig, inputs: Inputs, network: nn.Module, bare: bool = False) -> nn.Module:
    """`network` behind the configured embeddings; with none and `bare`, the network itself
    (linear and mlp: packing and export read those layer by layer)."""
    numeric = cfg.numeric_embedding if isinstance(cfg, schema.EmbeddedModel) else "none"
    kind = f"model.type {cfg.type}" + (
        f" with model.numeric_embedding {numeric}" if numeric != "none" else ""
    )
    cats = None
    if inputs.categories:
        kind += " with data.categorical_encoding embedding"
        cats = categorical.CategoricalEmbeddings(inputs.categories, inputs.widths)
    if bare and numeric == "none" and cats is None:
        return network
    num = embeddings.build(cfg, inputs.numeric) if isinstance(cfg, schema.EmbeddedModel) else None
    return blocks.Embedded(num, inputs.numeric, network, kind, cats)


def _network_inputs(cfg: schema.ModelConfig, inputs: Inputs) -> int:
    numeric = (
        embeddings.width(cfg, inputs.numeric) if isinstance(cfg, schema.EmbeddedModel) else inputs.numeric
    )
    return numeric + inputs.after_categorical


def _linear(cfg: LinearModel, n_outputs: int, inputs: Inputs) -> nn.Module:
    return _embedded(cfg, inputs, nn.Linear(_network_inputs(cfg, inputs), n_outputs), bare=True)


def _mlp_layers(cfg: MLPModel, n_inputs: int, n_outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def _mlp(cfg: MLPModel, n_outputs: int, inputs: Inputs) -> nn.Module:
    return _embedded(cfg, inputs, _mlp_layers(cfg, _network_inputs(cfg, inputs), n_outputs), bare=True)


def _resnet(cfg: ResNetModel, n_outputs: int, inputs: Inputs) -> nn.Module:
    network = blocks.resnet(
        _network_inputs(cfg, inputs),
        n_outputs,
        cfg.width,
        cfg.blocks,
        max(1, round(cfg.width * cfg.hidden_multiplier)),
        blocks.NORMS[cfg.norm],
        ACTIVATIONS[cfg.activation],
        cfg.dropout,
        cfg.residual_dropout,
    )
    return _embedded(cfg, inputs, network)


def _tabm(cfg: TabMModel, n_outputs: int, inputs: Inputs) -> nn.Module:
    size = embeddings.width(cfg, 1) if inputs.numeric else 1
    # One random start scale per feature: a feature's whole embedding shares it (a one-hot
    # column counts as its own feature, as in the package).
    rest = list(inputs.widths) if inputs.categories else [1] * (inputs.total - inputs.numeric)
    chunks = [size] * inputs.numeric + rest
    network = blocks.TabM(
        _network_inputs(cfg, inputs),
        n_outputs,
        cfg.k,
        cfg.sharing,
        cfg.width,
        int(cfg.blocks or (3 if cfg.numeric_embedding == "none" else 2)),
        ACTIVATIONS[cfg.activation],
        cfg.dropout,
        chunks,
        normal_start=cfg.numeric_embedding != "none",  # as the package: random signs without one
    )
    return _embedded(cfg, inputs, network)


MODELS: dict[str, Choice[Any, nn.Module]] = {
    "linear": Choice(LinearModel, _linear),
    "mlp": Choice(MLPModel, _mlp),
    "resnet": Choice(ResNetModel, _resnet),
    "tabm": Choice(TabMModel, _tabm),
}


def build(
    cfg: schema.ModelConfig,
    n_inputs: int,
    n_outputs: int,
    n_numeric: int,
    categories: Sequence[int] = (),
    widths: Sequence[int] = (),
) -> nn.Module:
    """A fresh model with PyTorch's default init (init.py applies the configured one).

    The first `n_numeric` inputs are the numeric features (a numeric embedding reads them);
    the rest are one-hot columns, or, when `categories` is given (each categorical column's
    number of categories), one code column per categorical feature, embedded `widths` wide.
    Piecewise-linear bins are zero until `embeddings.fit` sets them from training rows, or a
    checkpoint's state_dict does.
    """
    inputs = Inputs(n_inputs, n_numeric, tuple(categories), tuple(widths))
    if inputs.categories and (
        len(inputs.widths) != len(inputs.categories) or n_inputs != n_numeric + len(inputs.categories)
    ):
        raise ValueError(
            f"{n_inputs} inputs with {n_numeric} numeric do not fit {len(inputs.categories)} "
            f"categorical columns with {len(inputs.widths)} widths"
        )
    model: nn.Module = MODELS[cfg.type].build(cfg, n_outputs, inputs)
    return model


def category_sizes(counts: Sequence[int], size: int | None) -> dict[str, list[int]]:
    """`build`'s `categories` and `widths` for embedded categorical columns (none: onehot)."""
    return {"categories": list(counts), "widths": categorical.widths(counts, size)}


def spec(
    cfg: schema.ModelConfig,
    n_inputs: int,
    n_outputs: int,
    n_numeric: int,
    categories: Sequence[int] = (),
    widths: Sequence[int] = (),
) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the model config plus its sizes
    (`categories` and `category_widths` only with categorical embeddings)."""
    sizes: dict[str, Any] = {"n_inputs": n_inputs, "n_outputs": n_outputs, "n_numeric": n_numeric}
    if categories:
        sizes |= {"categories": list(categories), "category_widths": list(widths)}
    return {**cfg.model_dump(mode="json"), **sizes}


SIZE_KEYS = ("n_inputs", "n_outputs", "n_numeric", "categories", "category_widths")
ENSEMBLE = "ensemble"  # the `type` of an ensemble's spec: never a `model.type` of a config


class WeightedMean(nn.Module):
    """A sweep's ensemble (selection/ensemble.py): K members on the same input row, whose
    prediction is the mean of theirs weighted by how often the greedy selection chose each."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = sum(w * member(x) for w, member in zip(self.weights, self.members, strict=True))
        return out


def ensemble_spec(members: Sequence[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """What a checkpoint stores to rebuild a `WeightedMean`: each member's `spec()` and its
    weight, and the members' (shared) input and output sizes."""
    sizes = {k: v for k, v in members[0].items() if k in SIZE_KEYS}
    return {"type": ENSEMBLE, "members": list(members), "weights": [float(w) for w in weights], **sizes}


def from_spec(data: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from `spec()`'s (or `ensemble_spec()`'s) output.

    Checkpoints written before numeric embeddings lack `n_numeric`; their models do not read it.
    """
    if data.get("type") == ENSEMBLE:
        return WeightedMean([from_spec(m) for m in data["members"]], data["weights"])
    fields = {k: v for k, v in data.items() if k not in SIZE_KEYS}
    entry = MODELS[str(fields.get("type"))]
    n_inputs = int(data["n_inputs"])
    n_numeric = int(data.get("n_numeric", n_inputs))
    categories = [int(n) for n in data.get("categories", [])]
    widths = [int(n) for n in data.get("category_widths", [])]
    return build(entry.schema(**fields), n_inputs, int(data["n_outputs"]), n_numeric, categories, widths)


_WIDE = (
    embeddings.PeriodicEmbedding,
    embeddings.PiecewiseLinearEmbedding,
    blocks.EnsembleLinear,
    blocks.MemberHeads,
    blocks.TabM,
    categorical.CategoricalEmbeddings,
)


def row_width(model: nn.Module) -> int:
    """Activations per row a forward pass keeps (outputs of each layer), for the memory estimate."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.out_features
        elif isinstance(module, _WIDE):
            total += module.row_width()
    return total


# TabM's per-member scalings: multipliers that start at 1 (or +-1), not weights to shrink.
_SCALINGS = (".r", ".s", ".start")


def penalized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The parameters L1/L2 regularization applies to: weight matrices (and tensors of them,
    embedding frequencies and categorical embedding tables, which stand in for the first
    layer's weights on one-hot columns), not biases (TabM's (k, width) per-member biases included)
    and not TabM's per-member scalings."""
    return [
        p
        for name, p in model.named_parameters()
        if p.ndim > 1 and not name.endswith("bias") and not name.endswith(_SCALINGS)
    ]
