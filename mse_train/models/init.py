"""Weight-init schemes, looked up by name and applied to every linear layer.

To add a scheme: a schema class (or a tag on an existing one) in config/schema.py, and an
entry in SCHEMES naming that class and the function that fills a weight tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mse_train.config import schema
from mse_train.config.registry import Choice
from mse_train.errors import ConfigError
from mse_train.models import blocks

SCHEMES: dict[str, Choice[Any, object]] = {
    "default": Choice(schema.DefaultInit, lambda c, w: None),  # keep PyTorch's own init
    "xavier_normal": Choice(schema.XavierInit, lambda c, w: nn.init.xavier_normal_(w, gain=c.gain)),
    "xavier_uniform": Choice(schema.XavierInit, lambda c, w: nn.init.xavier_uniform_(w, gain=c.gain)),
    "kaiming_normal": Choice(
        schema.KaimingInit,
        lambda c, w: nn.init.kaiming_normal_(w, a=c.a, mode=c.mode, nonlinearity=c.nonlinearity),
    ),
    "kaiming_uniform": Choice(
        schema.KaimingInit,
        lambda c, w: nn.init.kaiming_uniform_(w, a=c.a, mode=c.mode, nonlinearity=c.nonlinearity),
    ),
    "normal": Choice(schema.NormalInit, lambda c, w: nn.init.normal_(w, mean=c.mean, std=c.std)),
    "trunc_normal": Choice(
        schema.TruncNormalInit, lambda c, w: nn.init.trunc_normal_(w, mean=c.mean, std=c.std, a=c.a, b=c.b)
    ),
    "uniform": Choice(schema.UniformInit, lambda c, w: nn.init.uniform_(w, a=c.a, b=c.b)),
    "zeros": Choice(schema.ZerosInit, lambda c, w: nn.init.zeros_(w)),
    "orthogonal": Choice(schema.OrthogonalInit, lambda c, w: nn.init.orthogonal_(w, gain=c.gain)),
}


def apply(model: nn.Module, cfg: schema.InitConfig) -> None:
    """Initialise the weights (and biases, if asked) of every linear layer in `model`.

    Linear layers are `nn.Linear`, TabM's shared `EnsembleLinear` weights and each of its
    member heads (all in nn.Linear's (out, in) layout, so fan-in and fan-out mean the same).
    TabM's per-member scalings and the numeric embeddings keep the papers' own init: a
    scheme made for weight matrices would change what they mean (a scaling of 0, say).
    """
    fill = SCHEMES[cfg.scheme].build
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Linear, blocks.EnsembleLinear)):
                fill(cfg, layer.weight)
            elif isinstance(layer, blocks.MemberHeads):
                for member in layer.weight:
                    fill(cfg, member)
            else:
                continue
            if cfg.bias == "zeros" and layer.bias is not None:
                nn.init.zeros_(layer.bias)
    _check_finite(model, cfg)


def _check_finite(model: nn.Module, cfg: schema.InitConfig) -> None:
    """A scale too large for float32 (`gain: 1e300`) makes inf weights: refuse them here,
    before they are trained or saved, naming the keys that set the scale."""
    for name, weight in model.named_parameters():
        if not bool(torch.isfinite(weight).all()):
            scale = {
                key: value
                for key, value in cfg.model_dump().items()
                if key not in ("scheme", "bias") and isinstance(value, float)
            }
            given = ", ".join(f"init.{key}: {value:g}" for key, value in scale.items())
            raise ConfigError(
                f"init.scheme {cfg.scheme!r}{' with ' + given if given else ''} makes weights "
                f"that are not finite in float32 ({name})",
                ["use a scale that float32 can hold, e.g. init.gain or init.std near 1"],
            )
