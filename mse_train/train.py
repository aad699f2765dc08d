"""The training loop: epochs of mini-batches over tensors already on the device.

The data path is the fast one: each epoch draws one permutation from a seeded
generator, gathers the table once, and takes batches as slices; full-batch training
does no indexing at all. The step keeps no host syncs: batch losses stay on the device
and are read once per epoch.

Everything needed to continue a run exactly lives in `Loop.state_dict()`: weights,
optimizer and scheduler state, the position inside the current epoch, best and
early-stopping bookkeeping, and every RNG. Reports go through callbacks; nothing here
prints. Per-epoch aggregation happens in one place (`_epoch_losses`), which is where a
distributed run would all-reduce its sums.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from mse_train import rng, snapshot
from mse_train.optim import Penalty, Scheduler

EVAL_CHUNK = 65536  # rows per forward pass when evaluating


@dataclass
class Settings:
    epochs: int
    batch_size: int | None
    shuffle: bool
    reduction: str  # "mean" | "sum", as nn.MSELoss
    target_names: list[str]
    target_std: list[float]  # to report per-target MSE in each target's own units
    patience: int | None = None
    min_delta: float = 0.0


@dataclass
class EpochRecord:
    """One row of metrics.csv."""

    epoch: int
    train_loss: float
    val_loss: float | None
    lr: float
    penalty: float | None
    seconds: float
    per_target: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "lr": self.lr,
            "penalty": self.penalty,
            "seconds": round(self.seconds, 6),
            **self.per_target,
        }


@dataclass
class Progress:
    """Where the loop is, and what it has seen; plain data so a checkpoint can hold it."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in epoch `epoch + 1` (non-zero only after an interrupt)
    epoch_start_shuffle: torch.Tensor | None = None  # shuffle RNG state when that epoch began
    partial_losses: torch.Tensor | None = None  # per-batch MSE of the unfinished epoch
    partial_penalties: torch.Tensor | None = None
    partial_sq: torch.Tensor | None = None  # per-batch per-target squared-error sums
    partial_seconds: float = 0.0
    best_loss: float = math.inf
    best_epoch: int = 0
    stop_best: float = math.inf
    stop_bad: int = 0
    stopped_early: bool = False


class Loop:
    """Owns a model, its optimizer and scheduler, and the tensors to train on."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler | None,
        penalty: Penalty | None,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor] | None,
        settings: Settings,
        seed: int,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.penalty = penalty
        self.train_x, self.train_y = train
        self.val = val
        self.settings = settings
        self.loss_fn = nn.MSELoss(reduction=settings.reduction)
        self.device = self.train_x.device
        self.shuffle = torch.Generator()  # CPU, so the order is the same on any device
        self.shuffle.manual_seed(seed)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self.best = snapshot.ModelCopy(model)  # weights of the best epoch so far
        self._good_model = snapshot.ModelCopy(model)  # the last finite epoch, for rollback()
        self._good_optimizer = snapshot.OptimizerCopy(optimizer)
        self._good: tuple[Any, ...] | None = None
        self._lbfgs = isinstance(optimizer, torch.optim.LBFGS)
        self._multi = len(settings.target_names) > 1
        self._params: list[torch.Tensor] = list(model.parameters())
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None
        self._batch_weights: torch.Tensor | None = None
        self._zero = torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        on_epoch: Callable[[EpochRecord], None],
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> str:
        """Train until `settings.epochs`; returns completed, early_stopped, interrupted or diverged."""
        self._mark_good()
        while self.progress.epoch < self.settings.epochs and not self.progress.stopped_early:
            started = time.perf_counter() - self.progress.partial_seconds
            if not self._train_epoch(should_stop, on_batch, started):
                return "interrupted"
            record = self._finish_epoch(started)
            if record is None:
                return "diverged"
            on_epoch(record)
            if self.progress.stopped_early:
                return "early_stopped"
            if should_stop():
                return "interrupted"
        return "early_stopped" if self.progress.stopped_early else "completed"

    def _train_epoch(
        self, should_stop: Callable[[], bool], on_batch: Callable[[int, int], None] | None, started: float
    ) -> bool:
        p = self.progress
        x, y = self.train_x, self.train_y
        n = len(x)
        size = min(self.settings.batch_size or n, n)
        n_batches = -(-n // size)
        if p.batch == 0:
            p.epoch_start_shuffle = self.shuffle.get_state()
        else:  # resuming inside an epoch: draw the same permutation again
            assert p.epoch_start_shuffle is not None
            self.shuffle.set_state(p.epoch_start_shuffle)
        if n_batches > 1 and self.settings.shuffle:
            # int32 indices: half the work of the default int64 for the same permutation size
            order = torch.randperm(n, generator=self.shuffle, dtype=torch.int32).to(
                self.device, non_blocking=True
            )
            x, y = self._shuffled(order)
        losses = list(p.partial_losses.unbind()) if p.partial_losses is not None else []
        penalties = list(p.partial_penalties.unbind()) if p.partial_penalties is not None else []
        sq = list(p.partial_sq.unbind()) if p.partial_sq is not None else []
        if not self.model.training:
            self.model.train()
        last_report = time.perf_counter()
        x_batches, y_batches = torch.split(x, size), torch.split(y, size)  # views, made in one call
        for b in range(p.batch, n_batches):
            xb, yb = x_batches[b], y_batches[b]
            out, mse, pen = self._step(xb, yb)
            losses.append(mse)
            if pen is not None:
                penalties.append(pen)
            if self._multi:
                sq.append((out - yb).pow(2).sum(0))
            if on_batch is not None and (now := time.perf_counter()) - last_report > 0.25:
                on_batch(b + 1, n_batches)
                last_report = now
            if should_stop() and b + 1 < n_batches:
                p.batch = b + 1
                p.partial_losses = torch.stack(losses)
                p.partial_penalties = torch.stack(penalties) if penalties else None
                p.partial_sq = torch.stack(sq) if sq else None
                p.partial_seconds = time.perf_counter() - started
                return False
        p.batch = 0
        p.partial_losses = torch.stack(losses)
        p.partial_penalties = torch.stack(penalties) if penalties else None
        p.partial_sq = torch.stack(sq) if sq else None
        return True

    def _shuffled(self, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training table in `order`, gathered into buffers reused every epoch."""
        if self._gathered is None:
            self._gathered = (torch.empty_like(self.train_x), torch.empty_like(self.train_y))
        x, y = self._gathered
        torch.index_select(self.train_x, 0, order, out=x)
        torch.index_select(self.train_y, 0, order, out=y)
        return x, y

    def _step(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One optimizer step; returns the output, the MSE and the penalty before the step."""
        if self._lbfgs:
            return self._lbfgs_step(xb, yb)
        out = self.model(xb)
        mse = self.loss_fn(out, yb)
        pen = self.penalty() if self.penalty is not None else None
        total = mse if pen is None else mse + pen
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return out.detach(), mse.detach(), None if pen is None else pen.detach()

    def _lbfgs_step(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        first: list[torch.Tensor | None] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model(xb)
            mse: torch.Tensor = self.loss_fn(out, yb)
            pen = self.penalty() if self.penalty is not None else None
            total = mse if pen is None else mse + pen
            total.backward()  # type: ignore[no-untyped-call]
            if not first:
                first.extend([out.detach(), mse.detach(), None if pen is None else pen.detach()])
            return total

        self.optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS takes a tensor-returning closure
        out, mse, pen = first
        assert out is not None and mse is not None
        return out, mse, pen

    def _finish_epoch(self, started: float) -> EpochRecord | None:
        """Read the epoch's numbers (one sync), validate, step the scheduler, keep score."""
        p = self.progress
        train_loss, penalty, per_target = self._epoch_losses()
        with torch.no_grad():  # a NaN or inf weight makes this sum non-finite
            param_sum = torch.stack(torch._foreach_norm(self._params)).sum()
        val_loss, val_sq = self._validate()
        numbers = torch.stack([train_loss, penalty, param_sum, val_loss]).tolist()
        train_value, pen_value, param_value, val_value = numbers
        has_val = self.val is not None
        if not all(math.isfinite(v) for v in (train_value, pen_value, param_value, val_value)):
            return None
        lr = float(self.optimizer.param_groups[0]["lr"])
        watched = val_value if has_val else train_value
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(watched)
            else:
                self.scheduler.step()
        p.epoch += 1
        extra = self._per_target(per_target, val_sq)
        if watched < p.best_loss:
            p.best_loss, p.best_epoch = watched, p.epoch
            self.best.capture()
        if self.settings.patience is not None:
            if watched < p.stop_best - self.settings.min_delta:
                p.stop_best, p.stop_bad = watched, 0
            else:
                p.stop_bad += 1
                p.stopped_early = p.stop_bad >= self.settings.patience
        p.partial_losses = p.partial_penalties = p.partial_sq = None
        p.partial_seconds = 0.0
        record = EpochRecord(
            epoch=p.epoch,
            train_loss=train_value,
            val_loss=val_value if has_val else None,
            lr=lr,
            penalty=pen_value if self.penalty is not None else None,
            seconds=time.perf_counter() - started,
            per_target=extra,
        )
        self.history.append(record.row())
        self._mark_good()
        return record

    def _epoch_losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The epoch's MSE (configured reduction), mean penalty and per-target SSE, on device."""
        p = self.progress
        assert p.partial_losses is not None
        losses = p.partial_losses
        n = len(self.train_x)
        if self.settings.reduction == "sum":
            train = losses.sum()
        elif len(losses) == 1:
            train = losses[0]
        else:
            if self._batch_weights is None:  # rows per batch, over all rows: the same every epoch
                size = min(self.settings.batch_size or n, n)
                weights = torch.full((len(losses),), size / n, device=losses.device)
                weights[-1] = (n - size * (len(losses) - 1)) / n
                self._batch_weights = weights
            train = (losses * self._batch_weights).sum()
        penalty = p.partial_penalties.mean() if p.partial_penalties is not None else self._zero
        per_target = p.partial_sq.sum(0) if p.partial_sq is not None else None
        return train, penalty, per_target

    def _validate(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.val is None:
            return self._zero, None
        x, y = self.val
        sq = per_target_sse(self.model, x, y)
        loss = sq.sum() if self.settings.reduction == "sum" else sq.sum() / y.numel()
        return loss, sq

    def _per_target(self, train_sq: torch.Tensor | None, val_sq: torch.Tensor | None) -> dict[str, float]:
        """Per-target MSE in each target's own units, for several targets."""
        if not self._multi:
            return {}
        scale = torch.tensor(self.settings.target_std, dtype=torch.float64) ** 2
        out: dict[str, float] = {}
        for prefix, sq, n in (
            ("train", train_sq, len(self.train_x)),
            ("val", val_sq, len(self.val[0]) if self.val else 0),
        ):
            if sq is None:
                continue
            values = (sq.double().cpu() / n * scale).tolist()
            out.update(
                {
                    f"{prefix}_mse_{name}": v
                    for name, v in zip(self.settings.target_names, values, strict=True)
                }
            )
        return out

    # ----------------------------------------------------------------- state
    @property
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights of the best epoch so far, or None before the first epoch ends."""
        return self.best.state_dict()

    def _mark_good(self) -> None:
        """Remember the current state as the last finite one, to roll back to on divergence."""
        self._good_model.capture()
        self._good_optimizer.capture()
        scheduler = None
        if self.scheduler is not None:
            scheduler = {
                k: list(v) if isinstance(v, list) else v for k, v in self.scheduler.state_dict().items()
            }
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        # The RNG states and the progress' tensors are fresh objects, never changed in place.
        self._good = (
            scheduler,
            copy.copy(self.progress),
            torch.get_rng_state(),
            self.shuffle.get_state(),
            cuda,
        )

    def rollback(self) -> None:
        """Return to the end of the last finite epoch (after a divergence)."""
        assert self._good is not None
        scheduler, progress, rng, shuffle, cuda = self._good
        self._good_model.restore()
        self._good_optimizer.restore()
        if self.scheduler is not None and scheduler is not None:
            self.scheduler.load_state_dict(scheduler)
        self.progress = copy.copy(progress)
        torch.set_rng_state(rng)
        self.shuffle.set_state(shuffle)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        del self.history[progress.epoch :]

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly (weights under "model")."""
        generators: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            generators["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "progress": {f.name: getattr(self.progress, f.name) for f in fields(self.progress)},
            "rng": {**generators, **rng.idle_state()},
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        progress = Progress(**state["progress"])
        # Checkpoints load onto the CPU; an unfinished epoch's losses go back to the device.
        for name in ("partial_losses", "partial_penalties", "partial_sq"):
            value = getattr(progress, name)
            if value is not None:
                setattr(progress, name, value.to(self.device))
        self.progress = progress
        self.history = list(state["history"])
        rng.set_state(state["rng"], self.shuffle, self.device)


def per_target_sse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors per target over all rows, in chunks, in eval mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros(y.shape[1], device=x.device)
    with torch.inference_mode():
        for start in range(0, len(x), EVAL_CHUNK):
            out = model(x[start : start + EVAL_CHUNK])
            total += (out - y[start : start + EVAL_CHUNK]).pow(2).sum(0)
    model.train(was_training)
    return total


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs for all rows, in chunks, in eval mode."""
    model.eval()
    with torch.inference_mode():
        return (
            torch.cat([model(x[s : s + EVAL_CHUNK]) for s in range(0, len(x), EVAL_CHUNK)])
            if len(x)
            else model(x)
        )
