"""The run folder: refusing to mix two runs in one, and saving checkpoints and metrics into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mse_train import config
from mse_train.config import Config
from mse_train.data.prepare import Prepared
from mse_train.errors import OutputError
from mse_train.models import networks
from mse_train.outputs import checkpoint, metrics
from mse_train.training.loop import Loop

# What a run folder holds; a folder holding any of these is a previous run.
RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json", "loss.png")


def check(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to mix runs in one folder; True when resuming."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
        if not (out / "last.pt").exists():
            raise OutputError(
                f"{out}: nothing to resume: no last.pt in the run folder",
                ["run without --resume to start, or point --output-dir at the run to continue"],
            )
        return True
    if present and not overwrite:
        raise OutputError(
            f"{out}: already holds a run ({', '.join(present)})",
            [
                "continue it with --resume, replace it with --overwrite, or choose another "
                "folder with --output-dir"
            ],
        )
    return False


def clear_previous_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


class Saver:
    """Writes last.pt, best.pt and metrics.csv for one run."""

    def __init__(self, out: Path, cfg: Config, prepared: Prepared) -> None:
        self.out = out
        self.cfg = config.to_dict(cfg)
        self.prepared = prepared
        self.model_spec = networks.spec(cfg.model, prepared.train.x.shape[1], prepared.train.y.shape[1])
        self.metrics = metrics.MetricsFile(
            out / "metrics.csv", metrics.columns_for(cfg.targets, prepared.val is not None)
        )
        self._best_written: int | None = None

    def checkpoint(self, loop: Loop) -> None:
        """metrics.csv, then best.pt if it changed, then last.pt: each atomically."""
        state = loop.state_dict()
        progress = loop.progress
        best = {"epoch": progress.best_epoch, "loss": progress.best_loss}
        self.metrics.write(state["history"])
        if loop.best_weights is not None and progress.best_epoch != self._best_written:
            self._save("best", progress.best_epoch, loop.best_weights, best)
            self._best_written = progress.best_epoch
        weights = state.pop("model")
        self._save("last", progress.epoch, weights, best, training=state)

    def _save(
        self,
        kind: str,
        epoch: int,
        weights: dict[str, torch.Tensor],
        best: dict[str, Any],
        training: dict[str, Any] | None = None,
    ) -> None:
        checkpoint.save(
            self.out / f"{kind}.pt",
            checkpoint.build(
                kind,
                epoch,
                self.model_spec,
                weights,
                self.prepared.pre,
                self.cfg,
                self.prepared.digests,
                best,
                training=training,
            ),
        )
