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
from mse_train.training.records import Built, Status
from mse_train.training.stack import Stack
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
    # The held-out rows' predictions (target units, float64) and their indices in the table: a
    # fold's share of its trial's out-of-fold predictions (selection/ensemble.py).
    predictions: np.ndarray | None = None
    rows: np.ndarray | None = None
    data: str = ""  # oof.data_key of the config: what rows `predictions` are of
    cut: bool = False  # sweep.time_limit stopped it before it finished (scored on its best epoch so far)


CUT_REASON = "cut by sweep.time_limit before it finished"


def train_and_score(
    cfg: Config,
    prepared: Prepared,
    held: Held,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
    stack: bool = True,
    judge: Callable[[int, dict[int, float]], set[int]] | None = None,
    cut: Callable[[], bool] = lambda: False,
) -> Scored:
    """Train as `run` would (no files), then score the best epoch's weights on `held`.

    `stack` False: as a torch module even where a stack of one could (`--no-pack`).
    `cut`: true once the sweep's time is up; the training stops then, even inside an epoch,
    and is scored on its best epoch so far, marked `cut` (should_stop: INTERRUPTED, unscored).
    """
    started = time.perf_counter()
    loop = recipe.build_loop(cfg, prepared, device, stack=stack)
    loop.judge = judge
    status = loop.run(lambda record: None, lambda: should_stop() or cut())
    epochs = loop.progress.epoch
    if status is Status.INTERRUPTED and not should_stop():
        return _cut(loop, 0, loop.models.best_model, prepared, held, device, time.perf_counter() - started)
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
    cut: Callable[[], bool] = lambda: False,
) -> list[Scored] | None:
    """Train jobs that share a `pack_key` side by side in one stack, then score each
    as above. Seconds are the stack's time shared equally; None when asked to stop. When
    `cut` turns true, the models still training stop and are scored on their best epoch so
    far, marked `cut`; those that had ended (early stopped, diverged, pruned) keep their result.

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
            cut,
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
    cut: Callable[[], bool],
) -> list[Scored] | None:
    """The models `builts` (of one shape) of `jobs` trained as one stack, each scored."""
    started = time.perf_counter()
    stack = Stack(builts, device)
    loop = Loop(stack, [recipe.member(cfg, prepared, device) for cfg, prepared, _ in jobs])
    loop.judge = judge
    cutting = False
    if loop.run(lambda record: None, lambda: should_stop() or cut()) is Status.INTERRUPTED:
        if should_stop():
            return None
        cutting = True
    seconds = (time.perf_counter() - started) / len(jobs)
    scored = []
    for i, (_, prepared, held) in enumerate(jobs):
        status, epochs, reason = loop.status_of(i)
        if cutting and loop.training(i):
            scored.append(_cut(loop, i, stack.best_model, prepared, held, device, seconds))
        elif status is Status.DIVERGED:
            scored.append(Scored(status, epochs, seconds, reason=reason))
        else:
            one = _score(stack.best_model(i), prepared, held, device, status, epochs, seconds)
            one.best_epochs = [loop.best_epoch_of(i)]
            scored.append(one)
    return scored


def _cut(
    loop: Loop,
    i: int,
    best_model: Callable[[int], torch.nn.Module],
    prepared: Prepared,
    held: Held,
    device: torch.device,
    seconds: float,
) -> Scored:
    """Model i, stopped by the time limit: its best epoch so far scored (none before its
    first epoch ended), marked cut."""
    _, epochs, _ = loop.status_of(i)
    best = loop.best_epoch_of(i)
    if best == 0:
        return Scored(Status.PRUNED, epochs, seconds, reason=f"{CUT_REASON} (in its first epoch)", cut=True)
    one = _score(best_model(i), prepared, held, device, Status.PRUNED, epochs, seconds)
    if one.overall is not None:
        one.reason = f"{CUT_REASON} (after {epochs} epochs; scored on epoch {best})"
    one.best_epochs, one.cut = [best], True
    return one


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
    overall, per_target = regression_metrics(held.y_true, y_pred, held.split.w)
    return Scored(status, epochs, seconds, overall, per_target, predictions=y_pred, rows=held.rows)
