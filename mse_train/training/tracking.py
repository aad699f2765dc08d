"""Keeping score at the end of each epoch: the best epoch's weights, and early stopping.

Both keep their numbers in `Progress` (so checkpoints and rollback carry them) and are
told the watched loss: the val loss, or the train loss without validation rows.
"""

from __future__ import annotations

from torch import nn

from mse_train.training.records import Progress
from mse_train.training.snapshot import ModelCopy


class BestTracker:
    """The weights of the epoch with the lowest watched loss so far."""

    def __init__(self, model: nn.Module) -> None:
        self.weights = ModelCopy(model)

    def update(self, progress: Progress, watched: float) -> None:
        if watched < progress.best_loss:
            progress.best_loss, progress.best_epoch = watched, progress.epoch
            self.weights.capture()


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
