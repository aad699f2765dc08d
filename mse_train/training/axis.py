"""The loop's model axis: what `Loop` steps, K >= 1 models at a time.

Two kinds fill it: `solo.Module` (one nn.Module with its torch optimizer, K = 1) and
`stack.Stack` (K small models in batched tensors). Numbers per model are [K] tensors;
`i` names one model. `state_dict`, `capture` and `restore` are for K = 1 (a run).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from mse_train.training.records import Batch, StepResult


class Models(Protocol):
    k: int
    device: torch.device

    def train_mode(self) -> None:
        """Training mode (dropout on), before an epoch's steps."""

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        batch: Batch | None = None,
        divisor: float | None = None,
        wb: torch.Tensor | None = None,
    ) -> StepResult:
        """One update: forward, MSE (+ penalty) per model, backward, optimizer step; with
        `wb`, each row's squared error weighted by its sample weight (step.py says how)."""

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

    def lr_of(self, i: int) -> float:
        """Model i's learning rate now, as its torch optimizer holds it."""

    def step_scheduler(self, i: int, watched: float) -> None:
        """Model i's scheduler at the end of an epoch (plateau reads `watched`)."""

    def keep_best(self, i: int) -> None:
        """Model i's weights now are its best so far: keep a copy."""

    def freeze(self, i: int) -> None:
        """Model i stopped (early, or diverged): no more updates while others train."""

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
