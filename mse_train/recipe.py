"""`mse-train run`: setup -> train -> save, reading top to bottom.

The config is already validated (config.py). Here the data is prepared, the model,
optimizer, scheduler and penalty are built, the loop runs, and every output lands
atomically in the run folder. Progress goes to a Reporter; nothing here prints.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from mse_train import (
    __version__,
    checkpoint,
    config,
    data,
    fsio,
    init,
    metrics,
    models,
    optim,
    resume,
    rng,
    stopping,
    tblog,
    train,
)
from mse_train.errors import OutputError, TrainingDiverged, TrainingInterrupted
from mse_train.schema import Config

# What a run folder holds; a folder holding any of these is a previous run.
RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json", "loss.png")


class Reporter(Protocol):
    """Receives progress; the CLI shows it."""

    def start(self, info: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...
    def epoch(self, record: train.EpochRecord, total: int) -> None: ...
    def batch(self, done: int, total: int) -> None: ...
    def finish(self) -> None: ...


class Silent:
    """A Reporter that shows nothing."""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def epoch(self, record: train.EpochRecord, total: int) -> None:
        pass

    def batch(self, done: int, total: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Options:
    resume: bool = False
    force: bool = False  # resume even though config (beyond epochs) or data changed
    overwrite: bool = False  # replace a previous run in the same folder
    resume_command: str = "mse-train run CONFIG --resume"  # shown when interrupted


def run(cfg: Config, options: Options, reporter: Reporter) -> dict[str, Any]:
    """Train as configured; returns the summary written to summary.json."""
    out = Path(str(cfg.output.dir))
    status, summary, history = _train(cfg, options, reporter, out)
    # The tables, model and optimizer are gone by now, so matplotlib does not add to the peak.
    data.release_freed_memory()
    if cfg.output.plot and history:
        from mse_train import plots  # matplotlib costs ~0.3 s; import only when plotting

        plots.write_loss_plot(out / "loss.png", history, summary["best"]["epoch"] or 0)
    if status == "interrupted":
        raise TrainingInterrupted(
            f"interrupted at epoch {len(history) + 1}; {out / 'last.pt'} holds the state",
            [f"continue with: {options.resume_command}"],
        )
    if status == "diverged":
        raise TrainingDiverged(
            f"training diverged at epoch {len(history) + 1}: the loss or a weight became NaN or infinite",
            [
                f"last.pt and best.pt keep the last finite state (epoch {len(history)})",
                "lower optimizer.lr, set data.standardize: true, or add gradient-friendly "
                "regularization; with loss.reduction: sum, the lr must shrink as rows grow",
            ],
        )
    return summary


def _train(
    cfg: Config, options: Options, reporter: Reporter, out: Path
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """Prepare, build, train and save; returns the status, the summary and the history."""
    started = time.perf_counter()
    resumed = _check_output(out, options)
    if cfg.output.tensorboard:
        tblog.check_available()
    fsio.ensure_writable_dir(out)
    prepared = data.prepare(cfg.data, cfg.targets, cfg.seed)
    for text in prepared.notes:
        reporter.note(text)
    resume_from = resume.load(out, cfg, prepared.digests, options.force) if resumed else None
    device = _setup_device(cfg.train.device)

    loop = build_loop(cfg, prepared, device)
    if resume_from is not None:
        resume.restore(loop, resume_from, cfg, options.force)

    if options.overwrite and not resumed:
        _clear_previous_run(out)
    fsio.remove_stale_temporaries(out)
    saver = _Saver(out, cfg, prepared)
    fsio.write_text(out / "config.yaml", config.to_yaml(cfg))
    reporter.start(
        {
            "out": str(out),
            "device": str(device),
            "rows": len(prepared.train),
            "val_rows": len(prepared.val) if prepared.val is not None else 0,
            "inputs": prepared.train.x.shape[1],
            "targets": cfg.targets,
            "epochs": cfg.train.epochs,
            "from_epoch": loop.progress.epoch,
        }
    )

    scalars = tblog.Scalars(out) if cfg.output.tensorboard else None

    def on_epoch(record: train.EpochRecord) -> None:
        reporter.epoch(record, cfg.train.epochs)
        if scalars is not None:
            scalars.epoch(record.row())
        every = cfg.output.checkpoint_every
        if every and record.epoch % every == 0:
            saver.checkpoint(loop)
        else:
            saver.metrics.maybe_write(loop.history)

    with stopping.on_signals() as stop:
        status = loop.run(on_epoch, should_stop=stop.requested, on_batch=reporter.batch)
    reporter.finish()
    if scalars is not None:
        scalars.close()

    if status == "diverged":
        loop.rollback()
    saver.checkpoint(loop)
    summary = _summary(cfg, loop, status, time.perf_counter() - started, prepared, device)
    metrics.write_json(out / "summary.json", summary)
    return status, summary, loop.history


# --------------------------------------------------------------------- setup
def build_loop(cfg: Config, prepared: data.Prepared, device: torch.device) -> train.Loop:
    """Seed, then build model, init, optimizer, scheduler and penalty around the tensors."""
    rng.seed_everything(cfg.seed)
    model = _setup_model(cfg, prepared, device)
    optimizer = optim.build_optimizer(list(model.parameters()), cfg.optimizer)
    return train.Loop(
        model,
        optimizer,
        optim.build_scheduler(optimizer, cfg.scheduler),
        optim.build_penalty(model, cfg.regularization),
        train=_tensors(prepared.train, device),
        val=_tensors(prepared.val, device) if prepared.val is not None else None,
        settings=_settings(cfg, prepared),
        seed=cfg.seed,
    )


def _check_output(out: Path, options: Options) -> bool:
    """Refuse to mix runs in one folder; True when resuming."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if options.resume:
        if not (out / "last.pt").exists():
            raise OutputError(
                f"{out}: nothing to resume: no last.pt in the run folder",
                ["run without --resume to start, or point --output-dir at the run to continue"],
            )
        return True
    if present and not options.overwrite:
        raise OutputError(
            f"{out}: already holds a run ({', '.join(present)})",
            [
                "continue it with --resume, replace it with --overwrite, or choose another "
                "folder with --output-dir"
            ],
        )
    return False


def _clear_previous_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _setup_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OutputError(
                f"train.device is {name!r} but no CUDA GPU is available to torch {torch.__version__}",
                ["use `device: auto` or `cpu`, or install a CUDA build of torch"],
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OutputError(f"train.device is {name!r} but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def _setup_model(cfg: Config, prepared: data.Prepared, device: torch.device) -> torch.nn.Module:
    model = models.build(cfg.model, prepared.train.x.shape[1], prepared.train.y.shape[1])
    init.apply(model, cfg.init)
    return model.to(device)


def _tensors(split: data.Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(split.x).to(device), torch.from_numpy(split.y).to(device)


def _settings(cfg: Config, prepared: data.Prepared) -> train.Settings:
    stop = cfg.train.early_stopping
    return train.Settings(
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        shuffle=cfg.train.shuffle,
        reduction=cfg.loss.reduction,
        target_names=cfg.targets,
        target_std=[t.std for t in prepared.pre.targets],
        patience=stop.patience if stop else None,
        min_delta=stop.min_delta if stop else 0.0,
    )


# ------------------------------------------------------------------- saving
class _Saver:
    """Writes last.pt, best.pt and metrics.csv for one run."""

    def __init__(self, out: Path, cfg: Config, prepared: data.Prepared) -> None:
        self.out = out
        self.cfg = config.to_dict(cfg)
        self.prepared = prepared
        self.model_spec = models.spec(cfg.model, prepared.train.x.shape[1], prepared.train.y.shape[1])
        self.metrics = metrics.MetricsFile(
            out / "metrics.csv", metrics.columns_for(cfg.targets, prepared.val is not None)
        )
        self._best_written: int | None = None

    def checkpoint(self, loop: train.Loop) -> None:
        """metrics.csv, then best.pt if it changed, then last.pt: each atomically."""
        state = loop.state_dict()
        progress = state["progress"]
        best = {"epoch": progress["best_epoch"], "loss": progress["best_loss"]}
        self.metrics.write(state["history"])
        if loop.best_weights is not None and progress["best_epoch"] != self._best_written:
            checkpoint.save(
                self.out / "best.pt",
                checkpoint.build(
                    "best",
                    progress["best_epoch"],
                    self.model_spec,
                    loop.best_weights,
                    self.prepared.pre,
                    self.cfg,
                    self.prepared.digests,
                    best,
                ),
            )
            self._best_written = progress["best_epoch"]
        weights = state.pop("model")
        checkpoint.save(
            self.out / "last.pt",
            checkpoint.build(
                "last",
                progress["epoch"],
                self.model_spec,
                weights,
                self.prepared.pre,
                self.cfg,
                self.prepared.digests,
                best,
                training=state,
            ),
        )


def _summary(
    cfg: Config,
    loop: train.Loop,
    status: str,
    seconds: float,
    prepared: data.Prepared,
    device: torch.device,
) -> dict[str, Any]:
    history = loop.history
    final = history[-1] if history else {}
    best_epoch = loop.progress.best_epoch
    best = history[best_epoch - 1] if 0 < best_epoch <= len(history) else {}
    return {
        "status": status,
        "epochs_run": len(history),
        "epochs_configured": cfg.train.epochs,
        "final": {
            "epoch": final.get("epoch"),
            "train_loss": final.get("train_loss"),
            "val_loss": final.get("val_loss"),
        },
        "best": {
            "epoch": best.get("epoch"),
            "train_loss": best.get("train_loss"),
            "val_loss": best.get("val_loss"),
            "watched": "val_loss" if prepared.val is not None else "train_loss",
        },
        "loss_units": "standardised targets" if cfg.data.standardize_target else "target units",
        "rows": {"train": len(prepared.train), "val": len(prepared.val) if prepared.val is not None else 0},
        "inputs": prepared.pre.input_names,
        "targets": cfg.targets,
        "device": str(device),
        "wall_seconds": round(seconds, 3),
        "output_dir": str(cfg.output.dir),
        "data": {"train": cfg.data.train, "val": cfg.data.val},
        "notes": prepared.notes,
        "versions": {
            "mse_train": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
