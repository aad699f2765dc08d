"""Build the network named in the config: a linear layer or an MLP."""

from __future__ import annotations

from typing import Any

from torch import nn

from mse_train.schema import LinearModel, MLPModel

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def build(cfg: LinearModel | MLPModel, n_inputs: int, n_outputs: int) -> nn.Module:
    """A fresh model with PyTorch's default init (init.py applies the configured one)."""
    if isinstance(cfg, LinearModel):
        return nn.Linear(n_inputs, n_outputs)
    layers: list[nn.Module] = []
    width = n_inputs
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def spec(cfg: LinearModel | MLPModel, n_inputs: int, n_outputs: int) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the model config plus its sizes."""
    return {**cfg.model_dump(mode="json"), "n_inputs": n_inputs, "n_outputs": n_outputs}


def from_spec(data: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from `spec()`'s output."""
    fields = {k: v for k, v in data.items() if k not in ("n_inputs", "n_outputs")}
    cfg: LinearModel | MLPModel = (
        LinearModel(**fields) if fields.get("type") == "linear" else MLPModel(**fields)
    )
    return build(cfg, int(data["n_inputs"]), int(data["n_outputs"]))
