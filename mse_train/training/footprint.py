"""How much memory training a config takes, estimated before anything is allocated.

`validate` and `run` both refuse a model that cannot fit, with the number, instead of
letting the allocator fail (or the machine swap) minutes into a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mse_train.config import schema
from mse_train.config.schema import Config
from mse_train.errors import ConfigError
from mse_train.models import networks

_FLOAT_BYTES = 4  # models train in float32


@dataclass(frozen=True)
class Footprint:
    parameters: int
    bytes: int


def estimate(
    cfg: Config,
    n_inputs: int,
    n_outputs: int,
    batch_rows: int,
    n_numeric: int,
    categories: dict[str, list[int]] | None = None,
) -> Footprint:
    """Parameters of the model, and the bytes training it holds at its peak.

    Counted: weights, gradients and the optimizer's per-parameter state, the copies kept
    for best.pt and for rolling back a divergence, and one batch's activations.
    """
    with torch.device("meta"):  # shapes only: nothing is allocated, whatever the size
        model = networks.build(cfg.model, n_inputs, n_outputs, n_numeric, **(categories or {}))
    parameters = sum(p.numel() for p in model.parameters())
    state = state_copies(cfg.optimizer)
    copies = 2 + state + 1 + (1 + state)  # weights, grads, state; best; last good + its state
    # layer outputs, their activations, their gradients
    activations = 3 * batch_rows * networks.row_width(model)
    return Footprint(parameters, (copies * parameters + activations) * _FLOAT_BYTES)


def state_copies(cfg: schema.OptimizerConfig) -> int:
    """How many parameter-sized tensors the optimizer keeps."""
    if isinstance(cfg, schema.SGDConfig):
        return 1 if cfg.momentum > 0 else 0
    if isinstance(cfg, schema.AdamConfig):
        return 3 if cfg.amsgrad else 2
    if isinstance(cfg, schema.RMSpropConfig):
        return 1 + (cfg.momentum > 0) + cfg.centered
    return 2 * cfg.history_size + 3  # LBFGS: its history of steps and gradient changes


def check_fits(footprint: Footprint, available: int | None, device: torch.device) -> None:
    """Refuse a model that needs more memory than `device` has free."""
    if available is None or footprint.bytes <= available:
        return
    raise ConfigError(
        f"the model has {footprint.parameters:,} parameters; training it needs about "
        f"{_size(footprint.bytes)} (weights, gradients, optimizer state, the copies kept for "
        f"best.pt and rollback, one batch's activations) but {device} has {_size(available)} free",
        [
            "use fewer or narrower layers in `model.hidden`, a smaller `train.batch_size`, "
            "or a machine with more memory"
        ],
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
