"""TensorBoard scalars for a run (`output.tensorboard: true`), an optional extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mse_train.errors import EnvironmentProblem

FOLDER = "tensorboard"  # inside the run folder: `tensorboard --logdir runs` finds every run


def check_available() -> None:
    """Fail before training, with the fix, when the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise EnvironmentProblem(
            "output.tensorboard is true, but the tensorboard package is not installed",
            ["install it with: pip install 'mse-train[tensorboard]'", "or set output.tensorboard: false"],
        )


class Scalars:
    """Writes each epoch's losses, learning rate and penalty as TensorBoard scalars."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / FOLDER))

    def epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key in ("epoch", "seconds") or value is None:
                continue
            self.writer.add_scalar(_tag(key), float(value), step)

    def close(self) -> None:
        self.writer.close()


def _tag(column: str) -> str:
    """metrics.csv column -> TensorBoard tag, grouping train and val on one chart."""
    if column in ("train_loss", "val_loss", "train_end_loss"):
        return f"loss/{column[:-5]}"
    if column.startswith(("train_mse_", "val_mse_")):
        split, _, target = column.partition("_mse_")
        return f"mse_{target}/{split}"
    return column
