"""The training loop: epochs of mini-batches over tensors already on the device.

The data path is the fast one: each epoch draws one permutation from a seeded
generator, gathers the table once, and takes batches as slices; full-batch training
does no indexing at all. The step keeps no host syncs: batch losses stay on the device
and are read once per epoch, in `_epoch_losses`.

Under torchrun (`world` given; see distributed.py) each rank trains on its slice of every
global batch; its per-batch losses are its shares, summed over the ranks once per epoch
(when the epoch's numbers are stored), so the records mean what they mean in one process.
The end-of-epoch numbers are rank 0's, broadcast, so every rank decides alike.

The jobs around the step live in their own small classes: `Step` (step.py) updates the
weights, `BestTracker` and `EarlyStopping` (tracking.py) keep score, `LastGood`
(rollback.py) returns to the last finite epoch, and `state_dict()` is everything a
checkpoint needs to continue exactly. Reports go through callbacks; nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mse_train.data.stream import Rows
from mse_train.errors import ConfigError
from mse_train.models.inference import per_target_sse
from mse_train.training import distributed, optimizers, rng, tracking
from mse_train.training.distributed import World
from mse_train.training.optimizers import Scheduler
from mse_train.training.records import PARTIAL, EpochRecord, Progress, Settings, Status
from mse_train.training.rollback import LastGood
from mse_train.training.step import Penalty, Step
from mse_train.training.tracking import BestTracker, EarlyStopping

WORLD_SIZE = "world_size"  # key of the training state: how many processes trained (absent: 1)


class _EpochLosses:
    """The per-batch numbers of the epoch under way, as lists of device tensors."""

    def __init__(self, progress: Progress) -> None:
        self.lists = [list(t.unbind()) if t is not None else [] for t in self._tensors(progress)]
        self.reduced = len(self.lists[0])  # numbers from a checkpoint are already global sums

    @staticmethod
    def _tensors(progress: Progress) -> list[torch.Tensor | None]:
        return [getattr(progress, name) for name in PARTIAL]

    def store(self, progress: Progress, world: World | None = None) -> None:
        """Stack what was collected into the progress (the one place partial state is made).

        Under torchrun, this rank's shares of the losses and squared errors collected since
        the epoch (re)started are first summed over the ranks, in one all-reduce.
        """
        if world is not None:
            self._sum_over_ranks()
        for name, values in zip(PARTIAL, self.lists, strict=True):
            setattr(progress, name, torch.stack(values) if values else None)

    def _sum_over_ranks(self) -> None:
        losses, _penalties, sq = self.lists  # penalties: the same on every rank, not shares
        new = [torch.stack(losses[self.reduced :]).reshape(-1, 1)] if len(losses) > self.reduced else []
        if not new:
            return
        if sq:
            new.append(torch.stack(sq[self.reduced :]))
        summed = distributed.sum_(torch.cat(new, dim=1))
        losses[self.reduced :] = list(summed[:, 0].unbind())
        if sq:
            sq[self.reduced :] = list(summed[:, 1:].unbind())
        self.reduced = len(losses)


class Loop:
    """Owns a model, its optimizer and scheduler, and the tensors to train on."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler | None,
        penalty: Penalty | None,
        train: tuple[torch.Tensor, torch.Tensor] | Rows,
        val: tuple[torch.Tensor, torch.Tensor] | Rows | None,
        settings: Settings,
        seed: int,
        world: World | None = None,
    ) -> None:
        self.model = model
        self.world = world
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.penalty = penalty
        # A streamed table (data/stream.py) gives its batches a block at a time.
        self.rows = train if isinstance(train, Rows) else None
        device = next(model.parameters()).device
        self.train_x, self.train_y = (_none(device), _none(device)) if isinstance(train, Rows) else train
        self.n_train = len(train) if isinstance(train, Rows) else len(self.train_x)
        self.val = val
        self.settings = settings
        self.device = device
        if world is None:
            self.step = Step(model, optimizer, penalty, nn.MSELoss(reduction=settings.reduction))
        else:  # each rank's loss is a share of the global batch's: see step.py
            if self.rows is not None:
                raise ConfigError(
                    "this table is streamed (larger than data.memory_budget), which mse-train does "
                    "not do under torchrun yet",
                    ["raise data.memory_budget so the table is held in memory, or train in one process"],
                )
            forward = distributed.wrap(model, self.device)
            self.step = Step(forward, optimizer, penalty, nn.MSELoss(reduction="sum"), world.size)
        self.shuffle = torch.Generator()  # CPU, so the order is the same on any device
        self.shuffle.manual_seed(seed)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self.best = BestTracker(model)
        self.early_stopping = EarlyStopping(settings.patience, settings.min_delta)
        self.last_good = LastGood(model, optimizer, scheduler, self.shuffle, self.device)
        self._multi = len(settings.target_names) > 1
        self._params: list[torch.Tensor] = list(model.parameters())
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None
        self._batch_weights: torch.Tensor | None = None
        self._zero = torch.zeros((), device=self.device)
        self.divergence = ""  # why run() returned DIVERGED, for the message

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        on_epoch: Callable[[EpochRecord], None],
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Status:
        """Train until `settings.epochs`, early stopping, a stop request or a divergence."""
        self.last_good.capture(self.progress)
        while self.progress.epoch < self.settings.epochs and not self.progress.stopped_early:
            started = time.perf_counter() - self.progress.partial_seconds
            if not self._train_epoch(should_stop, on_batch, started):
                return Status.INTERRUPTED
            record = self._finish_epoch(started)
            if record is None:
                return Status.DIVERGED
            on_epoch(record)
            if self.progress.stopped_early:
                return Status.EARLY_STOPPED
            if should_stop():
                return Status.INTERRUPTED
        return Status.EARLY_STOPPED if self.progress.stopped_early else Status.COMPLETED

    def _train_epoch(
        self, should_stop: Callable[[], bool], on_batch: Callable[[int, int], None] | None, started: float
    ) -> bool:
        """The batches of one epoch (from where an interrupt left it); False when asked to stop."""
        p = self.progress
        n = self.n_train
        size = min(self.settings.batch_size or n, n)
        n_batches = -(-n // size)
        if p.batch == 0:
            p.epoch_start_shuffle = self.shuffle.get_state()
        else:  # resuming inside an epoch: draw the same permutation again
            assert p.epoch_start_shuffle is not None
            self.shuffle.set_state(p.epoch_start_shuffle)
        x, y = self.train_x, self.train_y
        if self.rows is not None:
            pass  # the stream draws its own order (from self.shuffle) in _batches
        elif n_batches > 1 and self.settings.shuffle:
            # int32 indices: half the work of the default int64 for the same permutation size
            order = torch.randperm(n, generator=self.shuffle, dtype=torch.int32).to(
                self.device, non_blocking=True
            )
            x, y = self._shuffled(order)
        collected = _EpochLosses(p)
        losses, penalties, sq = collected.lists
        if not self.model.training:
            self.model.train()
        last_report = time.perf_counter()
        for b, (xb, yb, divisor) in enumerate(self._batches(x, y, size, n_batches), start=p.batch):
            out, mse, pen = self.step(xb, yb) if divisor is None else self.step(xb, yb, divisor)
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
                collected.store(p, self.world)
                p.partial_seconds = time.perf_counter() - started
                return False
        p.batch = 0
        collected.store(p, self.world)
        return True

    def _my_slices(
        self, x_batches: Sequence[torch.Tensor], y_batches: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
        """This rank's contiguous slice of each global batch, and what its SSE is divided by.

        A batch the ranks cannot split evenly (the epoch's short last one) gives the first
        ranks one row more; the divisor is the global batch's rows x targets (mean) or 1
        (sum), so the shares add up to the one-process loss of that batch.
        """
        assert self.world is not None
        rank, ranks = self.world.rank, self.world.size
        xs = [xb.tensor_split(ranks)[rank] for xb in x_batches]
        ys = [yb.tensor_split(ranks)[rank] for yb in y_batches]
        if self.settings.reduction == "sum":
            return xs, ys, [1.0] * len(ys)
        return xs, ys, [float(yb.numel()) for yb in y_batches]

    def _batches(
        self, x: torch.Tensor, y: torch.Tensor, size: int, n_batches: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float | None]]:
        """The epoch's batches from `progress.batch` on: slices of the tensors, or the stream's.

        Under torchrun each is this rank's slice, with the divisor that makes its loss a share.
        """
        start = self.progress.batch
        if self.rows is None:
            x_batches, y_batches = torch.split(x, size), torch.split(y, size)  # views, made in one call
            if self.world is not None:
                xs, ys, divisors = self._my_slices(x_batches, y_batches)
                for b in range(start, n_batches):
                    yield xs[b], ys[b], divisors[b]
                return
            for b in range(start, n_batches):
                yield x_batches[b], y_batches[b], None
            return
        generator = self.shuffle if self.settings.shuffle and n_batches > 1 else None
        for xb, yb in self.rows.epoch(generator, size, start):
            yield torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device), None

    def _shuffled(self, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training table in `order`, gathered into buffers reused every epoch."""
        if self._gathered is None:
            self._gathered = (torch.empty_like(self.train_x), torch.empty_like(self.train_y))
        x, y = self._gathered
        torch.index_select(self.train_x, 0, order, out=x)
        torch.index_select(self.train_y, 0, order, out=y)
        return x, y

    def _finish_epoch(self, started: float) -> EpochRecord | None:
        """Read the epoch's numbers (one sync), score the weights, step the scheduler, keep score.

        The watched loss is that of the weights as they are now, at the end of the epoch, so
        that best.pt holds exactly the weights its loss was measured on: on the validation
        rows, or else on the training rows. None when a loss or a weight is no longer finite,
        or the loss has grown by tracking.GROWTH_LIMIT (the caller rolls back).
        """
        p = self.progress
        train_loss, penalty, per_target = self._epoch_losses()
        with torch.no_grad():  # a NaN or inf weight makes this sum non-finite
            param_sum = torch.stack(torch._foreach_norm(self._params)).sum()
        has_val = self.val is not None
        scored, val_sq = self._score(
            self.val if self.val is not None else self.rows or (self.train_x, self.train_y)
        )
        stacked = torch.stack([train_loss, penalty, param_sum, scored])
        if self.world is not None:  # rank 0's numbers decide best, early stop and divergence for all
            distributed.from_main(stacked)
        numbers = stacked.tolist()
        train_value, pen_value, _, watched = numbers
        name = "val_loss" if has_val else "train_end_loss"
        self.divergence = tracking.why_diverged(numbers, watched, p, name)
        if self.divergence:
            return None
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            optimizers.step_scheduler(self.scheduler, watched)
        tracking.end_epoch(p, watched)
        self.best.update(p, watched)
        self.early_stopping.update(p, watched)
        p.partial_losses = p.partial_penalties = p.partial_sq = None
        p.partial_seconds = 0.0
        record = EpochRecord(
            epoch=p.epoch,
            train_loss=train_value,
            val_loss=watched if has_val else None,
            train_end_loss=None if has_val else watched,
            lr=lr,
            penalty=pen_value if self.penalty is not None else None,
            seconds=time.perf_counter() - started,
            per_target=self._per_target(per_target, val_sq if has_val else None),
        )
        self.history.append(record.row())
        self.last_good.capture(p)
        return record

    def _epoch_losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The epoch's MSE (configured reduction), mean penalty and per-target SSE, on device."""
        p = self.progress
        assert p.partial_losses is not None
        losses = p.partial_losses
        n = self.n_train
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

    def _score(self, rows: tuple[torch.Tensor, torch.Tensor] | Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of the current weights on these rows (eval mode), and per-target SSE."""
        if isinstance(rows, Rows):  # streamed: summed block by block
            sq = torch.zeros(rows.outputs, device=self.device)
            for xb, yb in rows.blocks():
                sq += per_target_sse(
                    self.model, torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device)
                )
            numel = len(rows) * rows.outputs
        else:
            sq = per_target_sse(self.model, *rows)
            numel = rows[1].numel()
        loss = sq.sum() if self.settings.reduction == "sum" else sq.sum() / numel
        return loss, sq

    def _per_target(self, train_sq: torch.Tensor | None, val_sq: torch.Tensor | None) -> dict[str, float]:
        """Per-target MSE in each target's own units, for several targets."""
        if not self._multi:
            return {}
        scale = torch.tensor(self.settings.target_std, dtype=torch.float64) ** 2
        out: dict[str, float] = {}
        for prefix, sq, n in (
            ("train", train_sq, self.n_train),
            (
                "val",
                val_sq,
                (len(self.val) if isinstance(self.val, Rows) else len(self.val[0])) if self.val else 0,
            ),
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
        return self.best.weights.state_dict()

    def rollback(self) -> None:
        """Return to the end of the last finite epoch (after a divergence)."""
        self.progress = self.last_good.restore()
        del self.history[self.progress.epoch :]

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly (weights under "model")."""
        generators: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            generators["cuda"] = torch.cuda.get_rng_state(self.device)
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "progress": self.progress.to_dict(),
            "rng": {**generators, **rng.idle_state()},
            "history": list(self.history),
        }
        if self.world is not None:  # absent: one process
            state[WORLD_SIZE] = self.world.size
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress.from_dict(state["progress"], self.device)
        self.history = list(state["history"])
        rng.set_state(state["rng"], self.shuffle, self.device)


def _none(device: torch.device) -> torch.Tensor:
    """Stands for the training tensors of a streamed table (which has none)."""
    return torch.empty((0, 0), device=device)
