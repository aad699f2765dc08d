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
from mse_train.training.loop import Loop
from mse_train.training.records import Status
from mse_train.training.stack import Built, Stack
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
    best_epochs: list[int] = field(default_factory=list)  # of the weights scored, one per split


def train_and_score(
    cfg: Config,
    prepared: Prepared,
    held: Held,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
    stack: bool = True,
    judge: Callable[[int, dict[int, float]], set[int]] | None = None,
) -> Scored:
    """Train as `run` would (no files), then score the best epoch's weights on `held`.

    `stack` False: as a torch module even where a stack of one could (`--no-pack`).
    """
    started = time.perf_counter()
    loop = recipe.build_loop(cfg, prepared, device, stack=stack)
    loop.judge = judge
    status = loop.run(lambda record: None, should_stop)
    epochs = loop.progress.epoch
    if status in (Status.INTERRUPTED, Status.DIVERGED):
        return Scored(status, epochs, time.perf_counter() - started, reason=loop.divergence)
    model = loop.models.best_model(0)
    scored = _score(model, prepared, held, device, status, epochs, time.perf_counter() - started)
    scored.best_epochs = [loop.progress.best_epoch]
    return scored


def train_and_score_packed(
    jobs: list[tuple[Config, Prepared, Held]],
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
    judge: Callable[[int, dict[int, float]], set[int]] | None = None,
) -> list[Scored] | None:
    """Train jobs that share a `packed.pack_key` side by side in one stack, then score each
    as above. Seconds are the stack's time shared equally; None when asked to stop.

    Equal configs can still build models of different shapes: a fold whose training rows
    lack a rare category has one one-hot input fewer. Models of one shape share a stack,
    one stack per shape (the `judge` then only sees a pack that is one stack, as its
    trials' losses per epoch must come from all their folds at once).
    """
    builts = [recipe.build_one(cfg, prepared, device) for cfg, prepared, _ in jobs]
    shapes: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i, built in enumerate(builts):
        shapes.setdefault(tuple(tuple(t.shape) for t in built.model.state_dict().values()), []).append(i)
    scored: dict[int, Scored] = {}
    for members in shapes.values():
        part = _train_stack(
            [builts[i] for i in members],
            [jobs[i] for i in members],
            device,
            should_stop,
            judge if len(shapes) == 1 else None,
        )
        if part is None:
            return None
        scored.update(zip(members, part, strict=True))
    return [scored[i] for i in range(len(jobs))]


def _train_stack(
    builts: list[Built],
    jobs: list[tuple[Config, Prepared, Held]],
    device: torch.device,
    should_stop: Callable[[], bool],
    judge: Callable[[int, dict[int, float]], set[int]] | None,
) -> list[Scored] | None:
    """The models `builts` (of one shape) of `jobs` trained as one stack, each scored."""
    started = time.perf_counter()
    stack = Stack(builts, device)
    loop = Loop(stack, [recipe.member(cfg, prepared, device) for cfg, prepared, _ in jobs])
    loop.judge = judge
    if loop.run(lambda record: None, should_stop) is Status.INTERRUPTED:
        return None
    seconds = (time.perf_counter() - started) / len(jobs)
    scored = []
    for i, (_, prepared, held) in enumerate(jobs):
        status, epochs, reason = loop.status_of(i)
        if status is Status.DIVERGED:
            scored.append(Scored(status, epochs, seconds, reason=reason))
        else:
            one = _score(stack.best_model(i), prepared, held, device, status, epochs, seconds)
            one.best_epochs = [loop.best_epoch_of(i)]
            scored.append(one)
    return scored


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
