"""Weight-init schemes, looked up by name and applied to every linear layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

InitFn = Callable[[torch.Tensor, Any], object]

SCHEMES: dict[str, InitFn] = {
    "xavier_normal": lambda w, c: nn.init.xavier_normal_(w, gain=c.gain),
    "xavier_uniform": lambda w, c: nn.init.xavier_uniform_(w, gain=c.gain),
    "kaiming_normal": lambda w, c: nn.init.kaiming_normal_(
        w, a=c.a, mode=c.mode, nonlinearity=c.nonlinearity
    ),
    "kaiming_uniform": lambda w, c: nn.init.kaiming_uniform_(
        w, a=c.a, mode=c.mode, nonlinearity=c.nonlinearity
    ),
    "normal": lambda w, c: nn.init.normal_(w, mean=c.mean, std=c.std),
    "trunc_normal": lambda w, c: nn.init.trunc_normal_(w, mean=c.mean, std=c.std, a=c.a, b=c.b),
    "uniform": lambda w, c: nn.init.uniform_(w, a=c.a, b=c.b),
    "zeros": lambda w, c: nn.init.zeros_(w),
    "orthogonal": lambda w, c: nn.init.orthogonal_(w, gain=c.gain),
}


def apply(model: nn.Module, cfg: Any) -> None:
    """Initialise the weights (and biases, if asked) of every `nn.Linear` in `model`."""
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, nn.Linear):
                continue
            if cfg.scheme != "default":
                SCHEMES[cfg.scheme](layer.weight, cfg)
            if cfg.bias == "zeros" and layer.bias is not None:
                nn.init.zeros_(layer.bias)
