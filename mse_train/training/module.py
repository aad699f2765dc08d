"""The module axis: one model of any kind with its torch optimizer (K = 1).

The loop's other model axis is the stack (training/stack/: K small models in batched
tensors). This one takes what the stack cannot: dropout, embeddings, resnet and tabm,
RMSprop and L-BFGS, and several processes under torchrun. Here, top to bottom:

  Module         what the loop steps: the module, its optimizer and scheduler, its best
                 epoch's weights, and the state a checkpoint or a rollback keeps
  Step           one optimizer update on one batch: MSE (+ L1/L2 penalty), backward, update
  ModelCopy, OptimizerCopy   cheap in-memory copies, taken every epoch

Under torchrun (`ranks` > 1) the model is wrapped in DistributedDataParallel, which
averages gradients across ranks; each rank's loss is its share of the global batch loss
(its squared errors over the `divisor` the loop passes) plus penalty / ranks, and it
back-propagates that times `ranks`, so the averaged gradient is the sum of the shares:
the one-process gradient of that global batch.

With sample weights (`data.weight`) each row's squared error is multiplied by its weight:
mean = sum(w * err^2) / (sum(w) * targets), sum = sum(w * err^2) (`weighted_loss`); under
torchrun the divisor is the global batch's sum of weights times targets.

The copies: the loop keeps the state of the last finite epoch so that a divergence can
roll back to it, and the weights of the best epoch so far. Copies go into tensors
allocated once and refreshed with one foreach kernel; `state_dict()` calls and deep
copies are avoided because on small tables they would cost more than the epoch itself.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mse_train.config.schema import RegularizationConfig
from mse_train.models import networks
from mse_train.models.inference import per_target_sse
from mse_train.training import distributed, optimizers
from mse_train.training import precision as precisions
from mse_train.training.distributed import World
from mse_train.training.optimizers import Scheduler
from mse_train.training.records import StepResult

Penalty = Callable[[], torch.Tensor]


class Module:
    k = 1

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler | None,
        penalty: Penalty | None,
        reduction: str,
        world: World | None = None,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = next(model.parameters()).device
        if world is None:
            self._step = Step(model, optimizer, penalty, nn.MSELoss(reduction=reduction), 1, precision)
        else:  # each rank's loss is a share of the global batch's: see above
            forward = distributed.wrap(model, self.device)
            self._step = Step(forward, optimizer, penalty, nn.MSELoss(reduction="sum"), world.size, precision)
        self._params: list[torch.Tensor] = list(model.parameters())
        self.best = ModelCopy(model)
        self._kept_model = ModelCopy(model)
        self._kept_optimizer = OptimizerCopy(optimizer)
        self._kept_scheduler: dict[str, Any] | None = None

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        batch: object = None,
        divisor: float | None = None,
        wb: torch.Tensor | None = None,
    ) -> StepResult:
        """One update in training mode; the MSE and penalty come back as [1], the model axis of one."""
        if not self.model.training:  # scoring left it in eval mode
            self.model.train()
        out, mse, pen = self._step(xb, yb, divisor, wb)
        return StepResult(out, mse.reshape(1), None if pen is None else pen.reshape(1))

    def sse(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        counts: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum of (weighted, with `w`) squared errors per target in eval mode, [1, targets]."""
        return per_target_sse(self.model, x, y, w).unsqueeze(0)

    def norms(self) -> torch.Tensor:
        """The sum of the parameters' norms, [1]: not finite once a weight is not."""
        with torch.no_grad():
            return torch.stack(torch._foreach_norm(self._params)).sum().reshape(1)

    def schedule(self, i: int, watched: float) -> float:
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            optimizers.step_scheduler(self.scheduler, watched)
        return lr

    def keep_best(self, i: int) -> None:
        self.best.capture()

    def best_state(self, i: int) -> dict[str, torch.Tensor] | None:
        return self.best.state_dict()

    def best_model(self, i: int) -> nn.Module:
        self.best.restore()
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def capture(self) -> None:
        """Keep weights, optimizer and scheduler as they are (the last finite epoch)."""
        self._kept_model.capture()
        self._kept_optimizer.capture()
        if self.scheduler is not None:
            self._kept_scheduler = {
                k: list(v) if isinstance(v, list) else v for k, v in self.scheduler.state_dict().items()
            }

    def restore(self) -> None:
        self._kept_model.restore()
        self._kept_optimizer.restore()
        if self.scheduler is not None and self._kept_scheduler is not None:
            self.scheduler.load_state_dict(copy.copy(self._kept_scheduler))


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
        optimizers.step(self.optimizer)
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


# ------------------------------------------------------------------ in-memory copies
def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class _Buffers:
    """Copies of a list of tensors, reallocated only when the list changes."""

    def __init__(self) -> None:
        self.sources: list[torch.Tensor] = []
        self.copies: list[torch.Tensor] = []

    def capture(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            if _same(tensors, self.sources) and tensors:
                torch._foreach_copy_(self.copies, tensors)
            elif not _same(tensors, self.sources):
                self.copies = [t.detach().clone() for t in tensors]
        self.sources = tensors


class ModelCopy:
    """The parameters and buffers of a model, as of the last `capture()`."""

    def __init__(self, model: nn.Module) -> None:
        self._named = list(model.state_dict(keep_vars=True).items())
        self._buffers = _Buffers()
        self.captured = False

    def capture(self) -> None:
        self._buffers.capture([t for _, t in self._named])
        self.captured = True

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The captured weights by name (this copy's tensors: read them before the next capture)."""
        if not self.captured:
            return None
        return {name: t for (name, _), t in zip(self._named, self._buffers.copies, strict=True)}

    def restore(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_([t for _, t in self._named], self._buffers.copies)


class OptimizerCopy:
    """An optimizer's per-parameter state and hyper-parameters, as of the last `capture()`.

    SGD, Adam and RMSprop keep only tensors, updated in place: those are copied into
    buffers. An optimizer that keeps other values (L-BFGS: counters, lists of tensors) is
    deep-copied instead; it runs few, long epochs, so the cost does not show.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._keys: list[tuple[Any, str]] = []
        self._buffers = _Buffers()
        self._deep: dict[str, Any] | None = None
        self._groups: list[dict[str, Any]] = []

    def capture(self) -> None:
        keys, tensors = [], []
        simple = True
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    simple = False
                keys.append((param, key))
                tensors.append(value)
        if simple:
            self._keys = keys
            self._buffers.capture(tensors)
            self._deep = None
        else:
            self._deep = copy.deepcopy(self.optimizer.state_dict())
        self._groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]

    def restore(self) -> None:
        if self._deep is not None:
            self.optimizer.load_state_dict(self._deep)
            return
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for (param, key), saved in zip(self._keys, self._buffers.copies, strict=True):
            state[param][key] = saved.clone()
        self.optimizer.state = state
        for group, saved_group in zip(self.optimizer.param_groups, self._groups, strict=True):
            group.update(saved_group)
