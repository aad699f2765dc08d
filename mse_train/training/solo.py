"""One model of any kind with its torch optimizer: the loop's model axis at K = 1.

The other axis is stack.py (K >= 1 small models in batched tensors). This one takes what
the stack cannot: dropout, embeddings, resnet and tabm, RMSprop and L-BFGS, and several
processes under torchrun, where the module is wrapped in DistributedDataParallel (step.py
says how each rank's loss becomes its share).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mse_train.models.inference import per_target_sse
from mse_train.training import distributed, optimizers
from mse_train.training.distributed import World
from mse_train.training.optimizers import Scheduler
from mse_train.training.snapshot import ModelCopy, OptimizerCopy
from mse_train.training.step import Penalty, Step, StepResult


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
        else:  # each rank's loss is a share of the global batch's: see step.py
            forward = distributed.wrap(model, self.device)
            self._step = Step(forward, optimizer, penalty, nn.MSELoss(reduction="sum"), world.size, precision)
        self._params: list[torch.Tensor] = list(model.parameters())
        self.best = ModelCopy(model)
        self._kept_model = ModelCopy(model)
        self._kept_optimizer = OptimizerCopy(optimizer)
        self._kept_scheduler: dict[str, Any] | None = None

    def train_mode(self) -> None:
        if not self.model.training:
            self.model.train()

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        batch: object = None,
        divisor: float | None = None,
        wb: torch.Tensor | None = None,
    ) -> StepResult:
        """One update; the MSE and penalty come back as [1], the model axis of one."""
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

    def lr_of(self, i: int) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step_scheduler(self, i: int, watched: float) -> None:
        if self.scheduler is not None:
            optimizers.step_scheduler(self.scheduler, watched)

    def keep_best(self, i: int) -> None:
        self.best.capture()

    def freeze(self, i: int) -> None:
        """Nothing to do: a model alone stops with the loop."""

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
