"""What the loop keeps from epoch to epoch, besides the weights.

The end-of-epoch rules (divergence, the best epoch, early stopping) live here once, for
every model the loop trains (the model axis keeps the best epoch's weights: `keep_best`);
they keep their numbers in `Progress` (so checkpoints and rollback carry them) and are
told the watched loss: the val loss, or the train loss without validation rows.

`EpochLosses`: the unfinished epoch's per-batch numbers, collected on the device, kept in
`Progress` when an interrupt stops the epoch, and summed over the ranks under torchrun.

`LastGood`: the state of the last finite epoch, kept in memory so that a divergence can go
back to it. Captured after every epoch, so it must be cheap: the model axis (module.py,
stack/) copies its weights and optimizer state into buffers allocated once; RNG states
and the progress are fresh objects that are never changed in place, so keeping a
reference is enough.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from mse_train.training import distributed, rng
from mse_train.training.distributed import World
from mse_train.training.records import PARTIAL, Progress

# A watched loss this many times epoch 1's is a run blowing up, though still finite (summed
# loss on many rows at a large lr: 2e5 -> 5e31 in five epochs). Treated as divergence.
GROWTH_LIMIT = 1e6


def why_diverged(numbers: Sequence[float], watched: float, progress: Progress, name: str) -> str:
    """Why this epoch ends the run as diverged ("" when it does not): a non-finite loss or
    weight among `numbers`, or a watched loss `name` grown GROWTH_LIMIT-fold since epoch 1."""
    if not all(math.isfinite(v) for v in numbers):
        return "the loss or a weight became NaN or infinite"
    first = watched if progress.epoch == 0 else progress.first_loss
    if watched > GROWTH_LIMIT * first:
        return f"{name} grew to {watched:.3g}, over {GROWTH_LIMIT:.0e} times epoch 1's {first:.3g}"
    return ""


def end_epoch(progress: Progress, watched: float) -> None:
    """Count the epoch; remember epoch 1's watched loss, against which growth is judged."""
    progress.first_loss = watched if progress.epoch == 0 else progress.first_loss
    progress.epoch += 1


def improved(progress: Progress, watched: float) -> bool:
    """True (and noted in `progress`) when `watched` beats every epoch so far."""
    if watched < progress.best_loss:
        progress.best_loss, progress.best_epoch = watched, progress.epoch
        return True
    return False


class EarlyStopping:
    """Stop after `patience` epochs without an improvement of more than `min_delta`."""

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta

    def update(self, progress: Progress, watched: float) -> None:
        if self.patience is None:
            return
        if watched < progress.stop_best - self.min_delta:
            progress.stop_best, progress.stop_bad = watched, 0
        else:
            progress.stop_bad += 1
            progress.stopped_early = progress.stop_bad >= self.patience


# ------------------------------------------------------------------ the unfinished epoch
class EpochLosses:
    """The per-batch numbers of the epoch under way, as lists of device tensors."""

    def __init__(self, progress: Progress) -> None:
        # Each batch's losses and penalties are [K] (K = 1 here; a checkpoint may hold scalars).
        losses, penalties, sq = self._tensors(progress)
        self.lists = [
            list(t.reshape(len(t), -1).unbind()) if t is not None else [] for t in (losses, penalties)
        ] + [list(sq.unbind()) if sq is not None else []]
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
        losses[self.reduced :] = list(summed[:, :1].unbind())
        if sq:
            sq[self.reduced :] = list(summed[:, 1:].unbind())
        self.reduced = len(losses)


# ------------------------------------------------------------------ the last finite epoch
class Kept(Protocol):
    """Weights, optimizer and scheduler that can be kept and put back."""

    def capture(self) -> None: ...

    def restore(self) -> None: ...


class LastGood:
    def __init__(self, models: Kept, shuffle: torch.Generator, device: torch.device) -> None:
        self.models = models
        self.shuffle = shuffle
        self.device = device
        self._rest: tuple[Any, ...] | None = None

    def capture(self, progress: Progress) -> None:
        self.models.capture()
        self._rest = (copy.copy(progress), rng.torch_state(self.device), self.shuffle.get_state())

    def restore(self) -> Progress:
        """Put weights, optimizer, scheduler and RNGs back; returns the progress of then."""
        assert self._rest is not None, "capture() runs before the first epoch"
        kept, generators, shuffle = self._rest
        progress: Progress = copy.copy(kept)
        self.models.restore()
        rng.set_torch_state(generators, self.device)
        self.shuffle.set_state(shuffle)
        return progress
