"""`mse_train.train(config)` and `mse_train.cv(config)`: the commands' work, returning
result objects instead of printing.

A config is a YAML path, a dict shaped like the YAML, or a `Config`; keyword settings
(`optimizer.lr=0.01` as `**{"optimizer.lr": 0.01}`, or `optimizer__lr=0.01`) are applied on
top, as `--set` is, and the whole is validated at once: a ConfigError names every problem,
as the CLI prints it. Progress goes to `progress` (a callable taking each `EpochRecord`)
or nowhere; nothing is printed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train import config as configs
from mse_train import recipe, runtime
from mse_train.api.model import Model
from mse_train.config import Config, yamlio
from mse_train.errors import ConfigError
from mse_train.outputs.summary import Summary
from mse_train.training.records import EpochRecord

ConfigLike = str | Path | Mapping[str, Any] | Config | None
Progress = Callable[[EpochRecord], None]


def dotted(key: str) -> str:
    """`optimizer__lr` (a keyword argument, scikit-learn's nesting) -> `optimizer.lr`."""
    return key.replace("__", ".")


def plain(value: Any) -> Any:
    """NumPy scalars and tuples (from a parameter grid) as the plain values YAML would give."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def resolve(config: ConfigLike, settings: Mapping[str, Any] | None = None, label: str = "argument") -> Config:
    """The validated config: `config` with `settings` (dotted keys) set on top."""
    values = {dotted(k): plain(v) for k, v in (settings or {}).items()}
    if isinstance(config, Config):
        doc = yamlio.Document(configs.to_dict(config), {}, "the Config")
        base, name = Path.cwd(), Path(str(config.output.dir)).name
    elif isinstance(config, str | Path):
        path = Path(config)
        doc, base, name = yamlio.read(path), path.resolve().parent, path.stem
    elif config is None or isinstance(config, Mapping):
        doc = yamlio.Document(copy.deepcopy(dict(config or {})), {}, "the config dict")
        base, name = Path.cwd(), "run"
    else:
        raise ConfigError(
            f"config: expected a YAML file's path, a dict or a Config, not {type(config).__name__}"
        )
    if doc.data is None:
        doc.data = {}
    return configs.from_document(doc, base, default_name=name, values=values, values_label=label)


class Callbacks(recipe.Silent):
    """recipe's Reporter, calling `progress` with each epoch's record."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def epoch(self, record: EpochRecord, total: int) -> None:
        if self.progress is not None:
            self.progress(record)


@dataclass
class TrainResult:
    """What `run` leaves: its summary (summary.json), its folder, and its best model."""

    summary: Summary
    folder: Path
    notes: list[str]

    @property
    def model(self) -> Model:
        """The best epoch's model (best.pt), as `mse-train predict` uses it."""
        return Model.load(self.folder / "best.pt")

    @property
    def history(self) -> pd.DataFrame:
        """metrics.csv: one row per epoch."""
        return pd.read_csv(self.folder / "metrics.csv")


def train(
    config: ConfigLike,
    *,
    progress: Progress | None = None,
    overwrite: bool = False,
    resume: bool = False,
    **settings: Any,
) -> TrainResult:
    """`mse-train run`: train as configured; the summary and run folder, nothing printed.

    Raises what the command reports: ConfigError, DataError, OutputError (a folder that
    holds a run: pass `overwrite=True` or `resume=True`), TrainingDiverged, ...
    """
    cfg = resolve(config, settings)
    runtime.use_threads(cfg.train.threads, flush_denormals=False)
    reporter = Callbacks(progress)
    options = recipe.Options(
        resume=resume,
        overwrite=overwrite,
        resume_command="mse_train.train(config, resume=True)",
        overwrite_command="mse_train.train(config, overwrite=True)",
    )
    with runtime.denormals_flushed():
        summary = recipe.run(cfg, options, reporter)
    return TrainResult(summary, Path(str(cfg.output.dir)), reporter.notes)


@dataclass
class CVResult:
    """What `cv` leaves: cv.json's summary, a row per fold, and the folder holding both files."""

    summary: dict[str, Any]
    folder: Path

    @property
    def folds(self) -> pd.DataFrame:
        """cv.csv: one row per fold (n, mse, rmse, mae, r2)."""
        return pd.read_csv(self.folder / "cv.csv")


def cv(
    config: ConfigLike,
    folds: int = 5,
    *,
    output_dir: str | Path | None = None,
    on_fold: Callable[[int, dict[str, Any]], None] | None = None,
    pack: bool = True,
    **settings: Any,
) -> CVResult:
    """`mse-train cv`: K-fold cross-validation, written to <output.dir>-cv (or `output_dir`)
    as the command writes it; `on_fold(i, scores)` after each fold."""
    from mse_train.data import folds as kfold
    from mse_train.selection import cv as cross
    from mse_train.training import signals

    if folds < 2:  # the command's own check on --folds
        kfold.kfold(2, folds, 0, "folds")
    cfg = resolve(config, settings)
    runtime.use_threads(cfg.train.threads, flush_denormals=False)
    out = cross.folder(cfg, Path(output_dir) if output_dir is not None else None)
    device = runtime.resolve_device(cfg.train.device)
    store = None
    if cfg.output.mlflow:
        from mse_train.outputs import mlflow_log

        store = mlflow_log.connect(str(cfg.output.mlflow_experiment))

    def scored(i: int, fold: Any) -> None:
        if on_fold is not None and fold.overall is not None:
            on_fold(i, dict(fold.overall))

    with signals.on_signals() as stop, runtime.denormals_flushed():
        summary = cross.run(cfg, folds, out, device, scored, stop.requested, pack, store, lambda text: None)
    return CVResult(summary, out)


@dataclass
class SweepResult:
    """What `sweep` found: the best trial, the leaderboard, and the refit's checkpoint."""

    best: dict[str, Any]  # trial, score, config (best.yaml's path), params
    leaderboard: pd.DataFrame  # leaderboard.csv: a row per trial, best first
    folder: Path
    checkpoint: Path | None  # the winner refitted on every training row (best/best.pt)

    @property
    def model(self) -> Model:
        if self.checkpoint is None:
            raise ConfigError("this sweep refitted no model", ["see the sweep's leaderboard for why"])
        return Model.load(self.checkpoint)


def sweep(
    config: str | Path,
    *,
    trials: int | None = None,
    folds: int | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    on_trial: Callable[[int, int, dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> SweepResult:
    """`mse-train sweep`: search the config's `sweep:` section; the leaderboard as a
    DataFrame. `settings` are applied as `--set` overrides; `on_trial(done, total, row)`
    after each trial, `progress` gets the refit's epochs."""
    import json

    from mse_train.selection import sweep as search
    from mse_train.selection import worker

    path = Path(config)
    overrides = [f"{dotted(k)}={json.dumps(plain(v))}" for k, v in settings.items()]
    options = search.Options(
        trials,
        folds,
        resume,
        Path(output_dir) if output_dir is not None else None,
        "mse_train.sweep(config, resume=True)",
    )
    runtime.use_threads(resolve(path, settings).train.threads, flush_denormals=False)
    with runtime.denormals_flushed():
        outcome = search.run(path, overrides, options, worker.Unwatched(on_trial), Callbacks(progress))
    return SweepResult(
        dict(outcome.best),
        pd.DataFrame(outcome.leaderboard),
        outcome.folder,
        Path(outcome.checkpoint) if outcome.checkpoint else None,
    )
