"""Keeping score at the end of each epoch: divergence, the best epoch, early stopping.

The rules live here once, for every model the loop trains (the model axis keeps the best
epoch's weights: `keep_best`).

Both keep their numbers in `Progress` (so checkpoints and rollback carry them) and are
told the watched loss: the val loss, or the train loss without validation rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mse_train.training.records import Progress

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
