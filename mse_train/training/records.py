"""The plain records of training, in one module so that the loop and its two model axes
(module.py, stack/) share them without importing each other: what one model trains on
(`Member`, `Built`), what a step takes and gives (`Batch`, `StepResult`), settings in,
status and epoch records out, and the progress a checkpoint holds so that a run can
continue exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

if TYPE_CHECKING:  # for annotations only: this module stays cheap to import
    from torch import nn

    from mse_train.config.schema import Config
    from mse_train.data.stream import Rows
    from mse_train.training.optimizers import Scheduler

Tensors = tuple[torch.Tensor, torch.Tensor]


class Status(str, Enum):
    """How a call to `Loop.run` ended; the value is what summary.json says."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    PRUNED = "pruned"  # a sweep's pruner stopped it (frozen as early stopping freezes a model)


@dataclass
class Settings:
    epochs: int
    batch_size: int | None
    shuffle: bool
    reduction: Literal["mean", "sum"]  # as nn.MSELoss
    target_names: list[str]
    target_std: list[float]  # to report per-target MSE in each target's own units
    patience: int | None = None
    min_delta: float = 0.0
    penalized: bool = False  # an L1/L2 penalty is added to the loss (records report it)


@dataclass
class Member:
    """One model's rows and settings (a fold of a cv, a trial of a sweep, or a run's one)."""

    train: Tensors | Rows
    val: Tensors | Rows | None
    settings: Settings
    seed: int
    train_w: torch.Tensor | None = None  # each training row's sample weight (None: 1)
    val_w: torch.Tensor | None = None  # each validation row's


@dataclass
class Built:
    """What `run` builds for one model alone: the module, its optimizer and scheduler, its config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    cfg: Config


@dataclass
class Batch:
    """A batch of a stack whose models' rows differ (their own folds, or a frozen model).

    `mask`: [K, rows], 1 for a model's real rows; `counts`: [K] its rows; `full`: every
    model has rows in this batch (so every model's optimizer steps).
    """

    mask: torch.Tensor
    counts: torch.Tensor
    full: bool


class StepResult(NamedTuple):
    """What one step measured, before its update: outputs, MSE and penalty (detached)."""

    out: torch.Tensor
    mse: torch.Tensor
    penalty: torch.Tensor | None


@dataclass
class EpochRecord:
    """One row of metrics.csv."""

    epoch: int
    train_loss: float  # mean of the epoch's batch losses, each taken before its update
    val_loss: float | None
    train_end_loss: float | None  # the weights at the epoch's end on the training rows (no validation)
    lr: float
    penalty: float | None
    seconds: float
    per_target: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "train_end_loss": self.train_end_loss,
            "lr": self.lr,
            "penalty": self.penalty,
            "seconds": round(self.seconds, 6),
            **self.per_target,
        }


PARTIAL = ("partial_losses", "partial_penalties", "partial_sq")  # the unfinished epoch's tensors


@dataclass
class Progress:
    """Where the loop is, and what it has seen; plain data so a checkpoint can hold it.

    Treated as immutable by rollback: the loop replaces its tensors, never changes them in place.
    """

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in epoch `epoch + 1` (non-zero only after an interrupt)
    epoch_start_shuffle: torch.Tensor | None = None  # shuffle RNG state when that epoch began
    partial_losses: torch.Tensor | None = None  # per-batch MSE of the unfinished epoch
    partial_penalties: torch.Tensor | None = None
    partial_sq: torch.Tensor | None = None  # per-batch per-target squared-error sums
    partial_seconds: float = 0.0
    best_loss: float = math.inf
    best_epoch: int = 0
    stop_best: float = math.inf
    stop_bad: int = 0
    stopped_early: bool = False
    first_loss: float = math.nan  # the watched loss of epoch 1, against which growth is judged

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any], device: torch.device) -> Progress:
        """From `to_dict()`'s output; an unfinished epoch's tensors go back to the device."""
        progress = cls(**state)
        for name in PARTIAL:
            value = getattr(progress, name)
            if value is not None:
                setattr(progress, name, value.to(device))
        return progress
