"""Train one config on one split and score its best epoch on the held-out rows.

The unit that cross-validation and sweeps repeat. Scores are in the targets' own units,
from the weights of the epoch the loop chose (what best.pt would hold).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mse_train import recipe
from mse_train.config.schema import Config
from mse_train.data.prepare import Held, Prepared
from mse_train.models import inference
from mse_train.training import packed
from mse_train.training.records import Status
from mse_train.use.evaluate import regression_metrics


@dataclass
class Scored:
    """How one training on one split went, and its validation metrics (None unless it finished)."""

    status: Status
    epochs: int
    seconds: float
    overall: dict[str, Any] | None = None  # mse, rmse, mae, r2, n
    per_target: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""  # why it diverged


def train_and_score(
    cfg: Config,
    prepared: Prepared,
    held: Held,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
) -> Scored:
    """Train as `run` would (no files), then score the best epoch's weights on `held`."""
    started = time.perf_counter()
    loop = recipe.build_loop(cfg, prepared, device)
    status = loop.run(lambda record: None, should_stop)
    epochs = loop.progress.epoch
    if status in (Status.INTERRUPTED, Status.DIVERGED):
        return Scored(status, epochs, time.perf_counter() - started, reason=loop.divergence)
    loop.best.weights.restore()
    return _score(loop.model, prepared, held, device, status, epochs, time.perf_counter() - started)


def train_and_score_packed(
    jobs: list[tuple[Config, Prepared, Held]],
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Scored] | None:
    """Train jobs that share a `packed.pack_key` side by side, then score each as above.

    Seconds are the pack's time shared equally; None when asked to stop.
    """
    started = time.perf_counter()
    members = [
        packed.Member(cfg, _rows(prepared.train.x, prepared.train.y, device),
                      _rows(prepared.val.x, prepared.val.y, device) if prepared.val is not None else None)
        for cfg, prepared, _ in jobs
    ]  # fmt: skip
    trained = packed.train(members, device, should_stop)
    if trained is None:
        return None
    seconds = (time.perf_counter() - started) / len(jobs)
    return [
        Scored(result.status, result.epochs, seconds, reason=result.reason)
        if result.status is Status.DIVERGED
        else _score(result.model, prepared, held, device, result.status, result.epochs, seconds)
        for (_, prepared, held), result in zip(jobs, trained, strict=True)
    ]


def _score(
    model: torch.nn.Module,
    prepared: Prepared,
    held: Held,
    device: torch.device,
    status: Status,
    epochs: int,
    seconds: float,
) -> Scored:
    """The metrics of `model` (the best epoch's weights) on the held-out rows, in target units."""
    raw = inference.predict(model, torch.from_numpy(held.split.x).to(device)).cpu().numpy()
    y_pred = prepared.pre.unscale_targets(raw).astype(np.float64)
    if not np.isfinite(y_pred).all():
        return Scored(Status.DIVERGED, epochs, seconds, reason="its predictions are not finite numbers")
    overall, per_target = regression_metrics(held.y_true, y_pred)
    return Scored(status, epochs, seconds, overall, per_target)


def _rows(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
