"""The state of the last finite epoch, kept in memory so that a divergence can go back to it.

Captured after every epoch, so it must be cheap: the model axis (solo.py, stack.py) copies
its weights and optimizer state into buffers allocated once; RNG states and the progress
are fresh objects that are never changed in place, so keeping a reference is enough.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch

from mse_train.training.records import Progress


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
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self._rest = (copy.copy(progress), torch.get_rng_state(), self.shuffle.get_state(), cuda)

    def restore(self) -> Progress:
        """Put weights, optimizer, scheduler and RNGs back; returns the progress of then."""
        assert self._rest is not None, "capture() runs before the first epoch"
        kept, rng, shuffle, cuda = self._rest
        progress: Progress = copy.copy(kept)
        self.models.restore()
        torch.set_rng_state(rng)
        self.shuffle.set_state(shuffle)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        return progress
