"""One optimizer step on one batch: MSE (+ L1/L2 penalty), backward, update.

`Step` is the module axis's update (solo.py calls it once per batch); the stack
(stack.py) writes the same loss, penalty and update out for K models at once.

Under torchrun (`ranks` > 1) the model is wrapped in DistributedDataParallel, which
averages gradients across ranks; each rank's loss is its share of the global batch loss
(its squared errors over the `divisor` the loop passes) plus penalty / ranks, and it
back-propagates that times `ranks`, so the averaged gradient is the sum of the shares:
the one-process gradient of that global batch.

With sample weights (`data.weight`) each row's squared error is multiplied by its weight:
mean = sum(w * err^2) / (sum(w) * targets), sum = sum(w * err^2) (`weighted_loss`); under
torchrun the divisor is the global batch's sum of weights times targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from mse_train.config.schema import RegularizationConfig
from mse_train.models import networks
from mse_train.training import precision as precisions

Penalty = Callable[[], torch.Tensor]


class StepResult(NamedTuple):
    """What one step measured, before its update: outputs, MSE and penalty (detached)."""

    out: torch.Tensor
    mse: torch.Tensor
    penalty: torch.Tensor | None


@dataclass
class Batch:
    """A batch of a stack whose models' rows differ (their own folds, or a frozen model).

    `mask`: [K, rows], 1 for a model's real rows; `counts`: [K] its rows; `full`: every
    model has rows in this batch (so every model's optimizer steps).
    """

    mask: torch.Tensor
    counts: torch.Tensor
    full: bool


class Step:
    """Callable as `step(xb, yb)`; owns the loss, the penalty and the optimizer update."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        penalty: Penalty | None,
        loss_fn: nn.Module,
        ranks: int = 1,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.precision = precision  # `train.precision`: bf16 autocasts the forward pass (precision.py)
        self.device = next(model.parameters()).device
        self.optimizer = optimizer
        self.penalty = penalty
        self.loss_fn = loss_fn  # with ranks > 1: reduction="sum", divided by the call's divisor
        self.ranks = ranks
        self._lbfgs = isinstance(optimizer, torch.optim.LBFGS)

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor, divisor: float | None = None, wb: torch.Tensor | None = None
    ) -> StepResult:
        """One update; `divisor` (ranks > 1 only) turns this rank's SSE into its share of the
        loss; `wb`, the rows' sample weights (None: each weighs 1)."""
        if self._lbfgs:
            return self._lbfgs_step(xb, yb, wb)
        _, result = self._loss(xb, yb, divisor, wb)
        self.optimizer.step()
        return result

    def _loss(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        divisor: float | None = None,
        wb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StepResult]:
        """Forward, loss plus penalty, and backward, with fresh gradients."""
        self.optimizer.zero_grad(set_to_none=True)
        with precisions.forward(self.precision, self.device):
            out = self.model(xb)
        out = out.float()  # the loss in float32 whatever the forward's precision (a no-op in fp32)
        mse = member_loss(self.loss_fn, out, yb, wb)
        pen = self.penalty() if self.penalty is not None else None
        if divisor is not None:  # a share of the global batch: the ranks' gradients are summed
            mse = mse / divisor
            total = mse if pen is None else mse + pen / self.ranks
            # DDP averages gradients over the ranks; times `ranks` first, that average is the sum.
            (total * self.ranks).backward()  # type: ignore[no-untyped-call]
        else:
            total = mse if pen is None else mse + pen
            total.backward()  # type: ignore[no-untyped-call]
        if out.dim() == 3:  # the ensemble's prediction, for the per-target metrics
            out = out.mean(1)
        return total, StepResult(out.detach(), mse.detach(), None if pen is None else pen.detach())

    def _lbfgs_step(self, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None) -> StepResult:
        first: list[StepResult] = []  # L-BFGS evaluates several times; report the first

        def closure() -> torch.Tensor:
            total, result = self._loss(xb, yb, None, wb)
            if not first:
                first.append(result)
            return total

        self.optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS takes a tensor-returning closure
        return first[0]


def member_loss(
    loss_fn: nn.Module, out: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None = None
) -> torch.Tensor:
    """The MSE of `out` (rows, targets), or for an ensemble in training mode (TabM's
    (rows, k, targets)) the mean of its k members' MSEs, each member trained on its own loss
    as TabM does. With `loss.reduction: sum` that mean is a sum over rows, as for one model.
    With `wb` (each row's sample weight) the weighted MSE: `weighted_loss`."""
    if wb is not None:
        return weighted_loss(out, yb, wb, str(getattr(loss_fn, "reduction", "mean")))
    if out.dim() == 2:
        loss: torch.Tensor = loss_fn(out, yb)
        return loss
    k = out.shape[1]
    loss = loss_fn(out, yb[:, None, :].expand_as(out))
    return loss / k if getattr(loss_fn, "reduction", "mean") == "sum" else loss


def weighted_loss(out: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor, reduction: str) -> torch.Tensor:
    """sum(w * err^2) over rows and targets, divided by sum(w) * targets for `mean`; for an
    ensemble's (rows, k, targets) output the mean over its k members, as `member_loss` takes.

    A batch whose weights are all 0 has a loss of 0 (and no gradient), not 0 / 0.
    """
    err = (out - (yb if out.dim() == 2 else yb[:, None, :])).pow(2)
    total = (err * wb.reshape(-1, *([1] * (err.dim() - 1)))).sum()
    if reduction == "mean":
        per_row = math.prod(err.shape[1:])  # targets (times k for an ensemble)
        return total / (wb.sum() * per_row).clamp(min=torch.finfo(total.dtype).tiny)
    return total / out.shape[1] if out.dim() == 3 else total


def build_penalty(model: nn.Module, cfg: RegularizationConfig) -> Penalty | None:
    """l1 * sum|w| + l2 * sum w^2 over weights (biases are left free); None if both are 0.

    Which parameters are weights: `networks.penalized_weights`.
    """
    weights = networks.penalized_weights(model)
    l1, l2 = cfg.l1, cfg.l2
    if l1 == 0 and l2 == 0:
        return None

    def penalty() -> torch.Tensor:
        total = torch.zeros((), device=weights[0].device)
        for w in weights:
            if l1:
                total = total + l1 * w.abs().sum()
            if l2:
                total = total + l2 * w.pow(2).sum()
        return total

    return penalty
