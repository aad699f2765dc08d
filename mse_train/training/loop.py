"""The training loop: epochs of mini-batches for K >= 1 models, each keeping its own score.

There is one loop, and one epoch method. Its model axis (`Models`, below) is what it
steps: `module.Module` (one module of any kind with its torch optimizer, K = 1) or
`stack.Stack` (K small models of one shape in batched tensors); the loop imports neither.
`run` is K = 1, as a stack of one when its config can stack (`stack.why_alone`) and a
module otherwise; `cv` and `sweep` stack their folds and trials. Everything around the
step is written once: the shuffled order, the epoch's losses, scoring the weights at each
epoch's end, divergence, schedules, the best epoch, early stopping, records, interrupts.
For one model also rollback and the state a checkpoint holds (keeping.py).

Each epoch a model draws one permutation from its own seeded generator and its batches
are slices of its rows gathered once, from one batch source (batches.py). A model that
stops (early, diverged, pruned) gets no more rows while the others train. The step keeps
no host syncs: batch losses stay on the device and are read once per epoch, in
`_finish_epoch`.

Under torchrun (`world` given; see distributed.py) each rank trains on its slice of every
global batch; its per-batch losses are its shares, summed over the ranks once per epoch
(keeping.py), so the records mean what they mean in one process. The end-of-epoch numbers
are rank 0's, broadcast, so every rank decides alike.
With sample weights (`data.weight`) every loss here is weighted (module.py): the steps', the
watched loss that picks the best epoch and stops early (sum(w * err^2) / (sum(w) * targets)
for a mean), and the per-target MSEs. The epoch's train_loss averages its batches' weighted
losses by their rows, as without weights: exact for full-batch training.

Reports go through callbacks; nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from mse_train.data.stream import Rows
from mse_train.training import batches, distributed, keeping, rng
from mse_train.training.distributed import World
from mse_train.training.keeping import EarlyStopping, EpochLosses, LastGood
from mse_train.training.records import Batch, EpochRecord, Member, Progress, Status, StepResult

WORLD_SIZE = "world_size"  # key of the training state: how many processes trained (absent: 1)


class Models(Protocol):
    """The loop's model axis: K >= 1 models stepped together. Numbers per model are [K]
    tensors; `i` names one model. The last four are for K = 1 (a run's checkpoint and
    rollback). A model that stopped is not frozen by a call: its batches have no rows."""

    k: int
    device: torch.device

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        batch: Batch | None = None,
        divisor: float | None = None,
        wb: torch.Tensor | None = None,
    ) -> StepResult:
        """One update in training mode: forward, MSE (+ penalty) per model, backward,
        optimizer step; with `wb`, each row's squared error weighted by its sample weight
        (module.py says how); `batch`, which rows are real when the models' rows differ."""

    def sse(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        counts: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each model's sum of (sample-weighted, with `w`) squared errors per target in eval
        mode, [K, targets]."""

    def norms(self) -> torch.Tensor:
        """A number per model that is not finite once one of its weights is not."""

    def schedule(self, i: int, watched: float) -> float:
        """Model i's learning rate this epoch, as its torch optimizer holds it; then its
        scheduler steps at the epoch's end (plateau reads `watched`)."""

    def keep_best(self, i: int) -> None:
        """Model i's weights now are its best so far: keep a copy."""

    def best_state(self, i: int) -> dict[str, torch.Tensor] | None:
        """Model i's best weights by its module's parameter names; None before any."""

    def best_model(self, i: int) -> nn.Module:
        """Model i's module, holding its best weights."""

    def state_dict(self) -> dict[str, Any]:
        """{"model", "optimizer", "scheduler"}: torch's formats, whichever axis wrote them."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From `state_dict()`'s output, written by either axis."""

    def capture(self) -> None:
        """Keep weights, optimizer and scheduler state in memory (the last finite epoch)."""

    def restore(self) -> None:
        """Put back what `capture` kept."""


@dataclass
class _Model:
    """How one model's training is going: as `Progress` keeps it, plus why it stopped."""

    n: int
    size: int
    shuffle: torch.Generator
    stopping: EarlyStopping
    progress: Progress = field(default_factory=Progress)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: Status | None = None  # set when it stops before the others: early stopped or diverged
    reason: str = ""  # why it diverged


class Loop:
    """Trains K >= 1 models (`models`) on their members' rows, epoch by epoch, each keeping
    its own score; a model that stops early or diverges gets no more rows while the others go on."""

    def __init__(self, models: Models, members: Sequence[Member], world: World | None = None) -> None:
        self.models = models
        self.k = models.k
        assert len(members) == self.k
        first = members[0]
        self.world = world
        self.settings = first.settings  # epochs, batches, shuffle and reduction are the same for all
        self.device = models.device
        self._model: list[_Model] = []
        for m in members:
            n = len(m.train) if isinstance(m.train, Rows) else len(m.train[0])
            shuffle = torch.Generator()  # CPU, so the order is the same on any device
            shuffle.manual_seed(m.seed)
            stopping = EarlyStopping(m.settings.patience, m.settings.min_delta)
            self._model.append(_Model(n, min(m.settings.batch_size or n, n), shuffle, stopping))
        self.members = list(members)
        self.val = first.val
        self.val_w = first.val_w
        self.source = batches.source(members, [m.size for m in self._model], world, self.device)
        self.n_train = self._model[0].n  # (the first model's)
        # What per-target MSEs divide by: rows, or their weights' sum (the first model's).
        self._train_amount = float(first.train_w.sum()) if first.train_w is not None else float(self.n_train)
        self._multi = len(self.settings.target_names) > 1 and self.k == 1
        self._weights: torch.Tensor | None = None
        self._zero = torch.zeros(self.k, device=self.device)
        # A run rolls back to its last finite epoch; a model of several that diverges is only stopped.
        self.last_good = LastGood(models, self._model[0].shuffle, self.device) if self.k == 1 else None
        # A sweep's pruner: told each epoch's watched loss of the models still training (by
        # index), it names those to stop, which stop as early stopping stops them.
        self.judge: Callable[[int, dict[int, float]], set[int]] | None = None

    # ---------------------------------------------------------- one model (a run)
    @property
    def progress(self) -> Progress:
        return self._model[0].progress

    @progress.setter
    def progress(self, value: Progress) -> None:
        self._model[0].progress = value

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._model[0].history

    @property
    def shuffle(self) -> torch.Generator:
        return self._model[0].shuffle

    @property
    def divergence(self) -> str:
        """Why run() returned DIVERGED, for the message."""
        return self._model[0].reason

    def status_of(self, i: int) -> tuple[Status, int, str]:
        """How model i ended: status, epochs trained, why it diverged."""
        m = self._model[i]
        status = m.status or (Status.EARLY_STOPPED if m.progress.stopped_early else Status.COMPLETED)
        return status, m.progress.epoch, m.reason

    def training(self, i: int) -> bool:
        """Model i had epochs left to train when the loop returned (it was stopped)."""
        return self._active()[i]

    def best_epoch_of(self, i: int) -> int:
        """The epoch whose weights model i keeps as its best (0 before any)."""
        return self._model[i].progress.best_epoch

    def best_loss_of(self, i: int) -> float:
        """Model i's watched loss at its best epoch (inf before any)."""
        return self._model[i].progress.best_loss

    def history_of(self, i: int) -> list[dict[str, Any]]:
        """Model i's epoch records (metrics.csv rows), as `history` is model 0's."""
        return list(self._model[i].history)

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        on_epoch: Callable[[EpochRecord], None],
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Status:
        """Train until `settings.epochs`, a stop request, or every model stopped early or
        diverged. With one model, its own status; with several, COMPLETED (see `status_of`)."""
        if self.last_good is not None:
            self.last_good.capture(self.progress)
        while any(active := self._active()):
            started = time.perf_counter() - self.progress.partial_seconds
            if not self._train_epoch(active, should_stop, on_batch, started):
                return Status.INTERRUPTED
            for record in self._finish_epoch(active, started):
                on_epoch(record)
            if self.k == 1 and (status := self._model[0].status) is not None:
                return status
            if should_stop():
                return Status.INTERRUPTED
        return self.status_of(0)[0] if self.k == 1 else Status.COMPLETED

    def _active(self) -> list[bool]:
        epochs = self.settings.epochs
        return [
            m.status is None and not m.progress.stopped_early and m.progress.epoch < epochs
            for m in self._model
        ]

    def _train_epoch(
        self,
        active: list[bool],
        should_stop: Callable[[], bool],
        on_batch: Callable[[int, int], None] | None,
        started: float,
    ) -> bool:
        """The batches of one epoch, each model on its own rows in its own order, from where
        an interrupt left it; False when asked to stop before the epoch's last batch. The
        unfinished epoch's numbers are kept in the (first) model's progress, which a run's
        checkpoint holds; a stack of several starts its epoch over (cv and sweep restart)."""
        p = self.progress
        if p.batch == 0:
            p.epoch_start_shuffle = self.shuffle.get_state()
        else:  # resuming inside an epoch: draw the same permutation again
            assert p.epoch_start_shuffle is not None
            self.shuffle.set_state(p.epoch_start_shuffle)
        orders = [m.shuffle if self.settings.shuffle else None for m in self._model]
        collected = EpochLosses(p)
        losses, penalties, sq = collected.lists
        n_batches = self.source.n_batches
        last_report = time.perf_counter()
        epoch = self.source.epoch(orders, active, p.batch)
        for b, (xb, yb, wb, batch, divisor) in enumerate(epoch, start=p.batch):
            out, mse, pen = self.models.step(xb, yb, batch, divisor, wb)
            losses.append(mse)
            if pen is not None:
                penalties.append(pen)
            if self._multi:
                err = (out - yb).pow(2)
                sq.append((err if wb is None else err * wb[:, None]).sum(0))
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

    def _finish_epoch(self, active: list[bool], started: float) -> list[EpochRecord]:
        """Read the epoch's numbers (one sync), score the weights, step the schedulers, keep score.

        Each model's watched loss is that of its weights as they are now, at the end of the
        epoch, so that best.pt holds exactly the weights its loss was measured on: on the
        validation rows, or else on the training rows. A model whose loss or weights are no
        longer finite, or whose loss has grown by keeping.GROWTH_LIMIT, is marked diverged
        and stops (a run rolls back to the epoch before).
        """
        train_loss, penalty, per_target = self._epoch_losses()
        done = self.progress  # the epoch's per-batch numbers are read: none is unfinished now
        done.partial_losses = done.partial_penalties = done.partial_sq = None
        done.partial_seconds = 0.0
        norms = self.models.norms()
        has_val = self.val is not None
        watched_t, val_sq = self.source.score(self.models)
        stacked = torch.stack([train_loss, penalty, norms, watched_t])
        if self.world is not None:  # rank 0's numbers decide best, early stop and divergence for all
            distributed.from_main(stacked)
        numbers = stacked.tolist()
        name = "val_loss" if has_val else "train_end_loss"
        records = []
        for i, m in enumerate(self._model):
            if not active[i]:
                continue
            train_value, pen_value, _, watched = (row[i] for row in numbers)
            p = m.progress
            m.reason = keeping.why_diverged([row[i] for row in numbers], watched, p, name)
            if m.reason:
                m.status = Status.DIVERGED
                continue
            lr = self.models.schedule(i, watched)
            keeping.end_epoch(p, watched)
            if keeping.improved(p, watched):
                self.models.keep_best(i)
            m.stopping.update(p, watched)
            if p.stopped_early:
                m.status = Status.EARLY_STOPPED
            record = EpochRecord(
                epoch=p.epoch,
                train_loss=train_value,
                val_loss=watched if has_val else None,
                train_end_loss=None if has_val else watched,
                lr=lr,
                penalty=pen_value if self.members[i].settings.penalized else None,
                seconds=time.perf_counter() - started,
                per_target=self._per_target(per_target, val_sq if has_val else None),
            )
            m.history.append(record.row())
            records.append(record)
        if self.judge is not None:
            still = {i: numbers[3][i] for i, m in enumerate(self._model) if active[i] and m.status is None}
            if still:
                epoch = self._model[next(iter(still))].progress.epoch
                for i in self.judge(epoch, still) & set(still):
                    self._model[i].status = Status.PRUNED
        if self.last_good is not None and self._model[0].status is not Status.DIVERGED:
            self.last_good.capture(self.progress)
        return records

    def _epoch_losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Each model's epoch MSE (configured reduction), mean penalty and per-target SSE (one
        model), [K], on the device."""
        p = self.progress
        losses, penalties = p.partial_losses, p.partial_penalties
        assert losses is not None
        losses = losses.reshape(len(losses), -1)
        if self._weights is None:  # each batch's rows over all rows: the same every epoch
            weights = batches.batch_weights(
                [m.n for m in self._model], [m.size for m in self._model], self.settings.reduction
            )
            self._weights = weights.to(self.device)
        if len(losses) == 1 and self.settings.reduction == "mean":
            train = losses[0]
        else:
            train = (losses * self._weights).sum(0)
        penalty = penalties.reshape(len(penalties), -1).mean(0) if penalties is not None else self._zero
        per_target = p.partial_sq.sum(0) if p.partial_sq is not None else None
        return train, penalty, per_target

    def _per_target(self, train_sq: torch.Tensor | None, val_sq: torch.Tensor | None) -> dict[str, float]:
        """Per-target MSE in each target's own units, for several targets (one model); with
        sample weights, sum(w * err^2) / sum(w)."""
        if not self._multi:
            return {}
        scale = torch.tensor(self.settings.target_std, dtype=torch.float64) ** 2
        out: dict[str, float] = {}
        val_amount = float(
            (len(self.val) if isinstance(self.val, Rows) else len(self.val[0])) if self.val else 0
        )
        if self.val_w is not None:
            val_amount = float(self.val_w.sum())
        for prefix, sq, n in (("train", train_sq, self._train_amount), ("val", val_sq, val_amount)):
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

    # ----------------------------------------------------------------- state (one model)
    @property
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights of the best epoch so far, or None before the first epoch ends."""
        return self.models.best_state(0)

    def rollback(self) -> None:
        """Return to the end of the last finite epoch (after a divergence)."""
        assert self.last_good is not None
        self.progress = self.last_good.restore()
        del self.history[self.progress.epoch :]

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly (weights under "model")."""
        generators: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            generators["cuda"] = torch.cuda.get_rng_state(self.device)
        state: dict[str, Any] = {
            **self.models.state_dict(),
            "progress": self.progress.to_dict(),
            "rng": {**generators, **rng.idle_state()},
            "history": list(self.history),
        }
        if self.world is not None:  # absent: one process
            state[WORLD_SIZE] = self.world.size
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.models.load_state_dict(state)
        self.progress = Progress.from_dict(state["progress"], self.device)
        self._model[0].history = list(state["history"])
        rng.set_state(state["rng"], self.shuffle, self.device)
