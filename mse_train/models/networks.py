"""The networks a config can name, built from a registry: linear, MLP, ResNet, TabM.

To add a model type: a schema class in config/schema.py (with its `type` Literal and
one-line description), a builder here, and an entry in MODELS.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mse_train.config import schema
from mse_train.config.registry import Choice
from mse_train.config.schema import LinearModel, MLPModel, ResNetModel, TabMModel
from mse_train.models import blocks, embeddings

# `model.activation` -> the module put after each hidden layer (tied to the schema by a test).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def _linear(cfg: LinearModel, n_inputs: int, n_outputs: int, n_numeric: int) -> nn.Module:
    return nn.Linear(n_inputs, n_outputs)


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


def _embedded(
    cfg: MLPModel | ResNetModel | TabMModel, n_inputs: int, n_numeric: int, network: nn.Module
) -> nn.Module:
    """`network` behind the configured numeric embedding (no wrapper when there is none)."""
    kind = f"model.type {cfg.type}" + (
        f" with model.numeric_embedding {cfg.numeric_embedding}" if cfg.numeric_embedding != "none" else ""
    )
    return blocks.Embedded(embeddings.build(cfg, n_numeric), n_numeric, network, kind)


def _network_inputs(cfg: schema.EmbeddedModel, n_inputs: int, n_numeric: int) -> int:
    return embeddings.width(cfg, n_numeric) + n_inputs - n_numeric


def _mlp(cfg: MLPModel, n_inputs: int, n_outputs: int, n_numeric: int) -> nn.Module:
    if cfg.numeric_embedding == "none":  # a plain Sequential: packing and export read it layer by layer
        return _mlp_layers(cfg, n_inputs, n_outputs)
    layers = _mlp_layers(cfg, _network_inputs(cfg, n_inputs, n_numeric), n_outputs)
    return _embedded(cfg, n_inputs, n_numeric, layers)


def _resnet(cfg: ResNetModel, n_inputs: int, n_outputs: int, n_numeric: int) -> nn.Module:
    network = blocks.resnet(
        _network_inputs(cfg, n_inputs, n_numeric),
        n_outputs,
        cfg.width,
        cfg.blocks,
        max(1, round(cfg.width * cfg.hidden_multiplier)),
        blocks.NORMS[cfg.norm],
        ACTIVATIONS[cfg.activation],
        cfg.dropout,
        cfg.residual_dropout,
    )
    return _embedded(cfg, n_inputs, n_numeric, network)


def _tabm(cfg: TabMModel, n_inputs: int, n_outputs: int, n_numeric: int) -> nn.Module:
    size = embeddings.width(cfg, 1) if n_numeric else 1
    # One random start scale per feature: a numeric feature's whole embedding shares it.
    chunks = [size] * n_numeric + [1] * (n_inputs - n_numeric)
    network = blocks.TabM(
        _network_inputs(cfg, n_inputs, n_numeric),
        n_outputs,
        cfg.k,
        cfg.sharing == "tabm_mini",
        cfg.width,
        int(cfg.blocks or (3 if cfg.numeric_embedding == "none" else 2)),
        ACTIVATIONS[cfg.activation],
        cfg.dropout,
        chunks,
        normal_start=cfg.numeric_embedding != "none",  # as the package: random signs without one
    )
    return _embedded(cfg, n_inputs, n_numeric, network)


MODELS: dict[str, Choice[Any, nn.Module]] = {
    "linear": Choice(LinearModel, _linear),
    "mlp": Choice(MLPModel, _mlp),
    "resnet": Choice(ResNetModel, _resnet),
    "tabm": Choice(TabMModel, _tabm),
}


def build(cfg: schema.ModelConfig, n_inputs: int, n_outputs: int, n_numeric: int) -> nn.Module:
    """A fresh model with PyTorch's default init (init.py applies the configured one).

    The first `n_numeric` inputs are the numeric features (a numeric embedding reads them);
    the rest are one-hot columns. Piecewise-linear bins are zero until `embeddings.fit` sets
    them from training rows, or a checkpoint's state_dict does.
    """
    model: nn.Module = MODELS[cfg.type].build(cfg, n_inputs, n_outputs, n_numeric)
    return model


def spec(cfg: schema.ModelConfig, n_inputs: int, n_outputs: int, n_numeric: int) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the model config plus its sizes."""
    sizes = {"n_inputs": n_inputs, "n_outputs": n_outputs, "n_numeric": n_numeric}
    return {**cfg.model_dump(mode="json"), **sizes}


SIZE_KEYS = ("n_inputs", "n_outputs", "n_numeric")


def from_spec(data: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from `spec()`'s output.

    Checkpoints written before numeric embeddings lack `n_numeric`; their models do not read it.
    """
    fields = {k: v for k, v in data.items() if k not in SIZE_KEYS}
    entry = MODELS[str(fields.get("type"))]
    n_inputs = int(data["n_inputs"])
    n_numeric = int(data.get("n_numeric", n_inputs))
    return build(entry.schema(**fields), n_inputs, int(data["n_outputs"]), n_numeric)


_WIDE = (
    embeddings.PeriodicEmbedding,
    embeddings.PiecewiseLinearEmbedding,
    blocks.EnsembleLinear,
    blocks.MemberHeads,
    blocks.TabM,
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
    and embedding frequencies), not biases (TabM's (k, width) per-member biases included)
    and not TabM's per-member scalings."""
    return [
        p
        for name, p in model.named_parameters()
        if p.ndim > 1 and not name.endswith("bias") and not name.endswith(_SCALINGS)
    ]
