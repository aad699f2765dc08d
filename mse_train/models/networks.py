"""The networks a config can name, built from a registry: a linear layer or an MLP.

To add a model type: a schema class in config/schema.py (with its `type` Literal and
one-line description), a builder here, and an entry in MODELS.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mse_train.config import schema
from mse_train.config.registry import Choice
from mse_train.config.schema import LinearModel, MLPModel

# `model.activation` -> the module put after each hidden layer (tied to the schema by a test).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def _linear(cfg: LinearModel, n_inputs: int, n_outputs: int) -> nn.Module:
    return nn.Linear(n_inputs, n_outputs)


def _mlp(cfg: MLPModel, n_inputs: int, n_outputs: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_inputs
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


MODELS: dict[str, Choice[Any, nn.Module]] = {
    "linear": Choice(LinearModel, _linear),
    "mlp": Choice(MLPModel, _mlp),
}


def build(cfg: schema.ModelConfig, n_inputs: int, n_outputs: int) -> nn.Module:
    """A fresh model with PyTorch's default init (init.py applies the configured one)."""
    model: nn.Module = MODELS[cfg.type].build(cfg, n_inputs, n_outputs)
    return model


def spec(cfg: schema.ModelConfig, n_inputs: int, n_outputs: int) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the model config plus its sizes."""
    return {**cfg.model_dump(mode="json"), "n_inputs": n_inputs, "n_outputs": n_outputs}


def from_spec(data: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from `spec()`'s output."""
    fields = {k: v for k, v in data.items() if k not in ("n_inputs", "n_outputs")}
    entry = MODELS[str(fields.get("type"))]
    return build(entry.schema(**fields), int(data["n_inputs"]), int(data["n_outputs"]))
