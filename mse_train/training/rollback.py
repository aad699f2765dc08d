"""The state of the last finite epoch, kept in memory so that a divergence can go back to it.

Captured after every epoch, so it must be cheap: weights and optimizer state go into
buffers allocated once (snapshot.py); RNG states and the progress are fresh objects that
are never changed in place, so keeping a reference is enough.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mse_train.training.optimizers import Scheduler
from mse_train.training.records import Progress
from mse_train.training.snapshot import ModelCopy, OptimizerCopy


class LastGood:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler | None,
        shuffle: torch.Generator,
        device: torch.device,
    ) -> None:
        self.model = ModelCopy(model)
        self.optimizer = OptimizerCopy(optimizer)
        self.scheduler = scheduler
        self.shuffle = shuffle
        self.device = device
        self._rest: tuple[Any, ...] | None = None

    def capture(self, progress: Progress) -> None:
        self.model.capture()
        self.optimizer.capture()
        scheduler = None
        if self.scheduler is not None:
            scheduler = {
                k: list(v) if isinstance(v, list) else v for k, v in self.scheduler.state_dict().items()
            }
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self._rest = (scheduler, copy.copy(progress), torch.get_rng_state(), self.shuffle.get_state(), cuda)

    def restore(self) -> Progress:
        """Put weights, optimizer, scheduler and RNGs back; returns the progress of then."""
        assert self._rest is not None, "capture() runs before the first epoch"
        scheduler, kept, rng, shuffle, cuda = self._rest
        progress: Progress = copy.copy(kept)
        self.model.restore()
        self.optimizer.restore()
        if self.scheduler is not None and scheduler is not None:
            self.scheduler.load_state_dict(scheduler)
        torch.set_rng_state(rng)
        self.shuffle.set_state(shuffle)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        return progress
