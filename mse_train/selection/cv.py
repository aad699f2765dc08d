"""`mse-train cv`: K-fold cross-validation of one config over the training rows.

Each fold fits its own preprocessing on its training rows (no leakage), trains as `run`
would (with `data.val_fraction` of its training rows choosing the best epoch and early
stopping), and is scored on its held-out rows, which took no part in any choice, in the
targets' own units.

`run` is the whole command without its console: cv's own folder (never a run's folder),
locked while it trains and writes, cv.csv and cv.json in it, and the MLflow run.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mse_train import recipe
from mse_train.config.schema import Config
from mse_train.data import bags, folds, prepare
from mse_train.errors import TrainingDiverged, TrainingInterrupted
from mse_train.outputs import fsio, metrics, mlflow_log, mlflow_sweep, run_folder, tables
from mse_train.selection.fit import Scored, train_and_score, train_and_score_packed
from mse_train.training import apart
from mse_train.training.records import Status
from mse_train.training.stack import pack_key
from mse_train.use.evaluate import regression_metrics

METRICS = ("mse", "rmse", "mae", "r2")
FOLDER_SUFFIX = "-cv"  # runs/NAME-cv beside the run folder runs/NAME, never inside it
FILES = ("cv.csv", "cv.json")


@dataclass
class CVResult:
    folds: int
    per_fold: list[dict[str, Any]]  # mse, rmse, mae, r2, n (+ targets: {name: {...}})
    status: Status
    failed_fold: int | None = None  # 1-based, when a fold diverged or was interrupted
    reason: str = ""
    epochs: list[int] = field(default_factory=list)  # per fold, as run
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The `--json` object: mean and std (population, as numpy and scikit-learn) per metric."""
        out: dict[str, Any] = {"folds": self.folds}
        out.update(mean_std(self.per_fold))
        names = list(self.per_fold[0].get("targets", {})) if self.per_fold else []
        if names:  # several targets: the same, per target
            out["targets"] = {name: mean_std([f["targets"][name] for f in self.per_fold]) for name in names}
        out["per_fold"] = self.per_fold
        return out


def mean_std(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for name in METRICS:
        values = [r[name] for r in rows]
        if not values or any(v is None for v in values):  # R² of a fold with a constant target
            out[name] = {"mean": None, "std": None}
        else:
            out[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
    return out


def fold_row(scored: Scored, target_names: list[str]) -> dict[str, Any]:
    assert scored.overall is not None
    row = {name: scored.overall[name] for name in (*METRICS, "n")}
    if len(target_names) > 1:
        row["targets"] = dict(zip(target_names, scored.per_target, strict=True))
    return row


def cross_validate(
    cfg: Config,
    k: int,
    device: torch.device,
    on_fold: Callable[[int, Scored], None] = lambda i, s: None,
    should_stop: Callable[[], bool] = lambda: False,
    loaded: prepare.Loaded | None = None,
    pack: bool = True,
) -> CVResult:
    """Train and score `cfg` on each of `k` folds (shuffled with `cfg.seed`).

    With `pack`, the folds train side by side as one stack when the config allows it
    (training/stack/), each as it would alone. A bagged config (`train.bags` > 1) is scored
    as `run` trains it: in each fold its bags, on the fold's training rows (data/bags.py),
    the held-out rows predicted by their mean.
    """
    recipe.check_bags(cfg)
    loaded = loaded or prepare.load_training(cfg.data, cfg.targets)
    groups = _folds(loaded, cfg, k)
    together = None
    if pack and pack_key(cfg) is not None:
        jobs = [(recipe.seeded(cfg, j), one, held) for split, held in groups for j, one in enumerate(split)]
        together = train_and_score_packed(jobs, device, should_stop)
        if together is None:
            return CVResult(k, [], Status.INTERRUPTED, 1)
    alone = [(j, one, held) for split, held in groups for j, one in enumerate(split)]

    def train(n: int) -> Scored:  # training n alone: fold by fold, bag by bag
        j, one, held = alone[n]
        return train_and_score(recipe.seeded(cfg, j), one, held, device, should_stop, stack=pack)

    processes = 1 if together is not None else apart.workers(cfg.train.processes, len(alone), device)
    with contextlib.ExitStack() as closing:
        if together is not None:
            trained: Iterator[Scored] = iter(together)
        elif processes > 1:  # side by side in processes of their own (training/apart.py)
            trained = closing.enter_context(
                contextlib.closing(apart.map(train, len(alone), processes, should_stop))
            )
        else:
            trained = (train(n) for n in range(len(alone)))
        rows: list[dict[str, Any]] = []
        epochs: list[int] = []
        seconds: list[float] = []
        for i, (split, held) in enumerate(groups, start=1):
            members: list[Scored] = []
            for _ in split:
                members.append(next(trained, None) or Scored(Status.INTERRUPTED, 0, 0.0))  # None: stopped
                if members[-1].overall is None:
                    break
            scored = members[0] if len(members) == 1 else mean_of(members, held)
            on_fold(i, scored)
            epochs.append(scored.epochs)
            seconds.append(scored.seconds)
            if scored.overall is None:
                return CVResult(k, rows, scored.status, i, scored.reason, epochs, seconds)
            rows.append(fold_row(scored, loaded.targets))
    return CVResult(k, rows, Status.COMPLETED, None, "", epochs, seconds)


def _folds(loaded: prepare.Loaded, cfg: Config, k: int) -> list[tuple[list[prepare.Prepared], prepare.Held]]:
    """Each fold's training rows (one split, or a bagged config's bags) and its held-out rows."""
    if cfg.train.bags == 1:
        return [([prepared], held) for prepared, held in fold_splits(loaded, cfg, k)]
    out = []
    for i, (train_rows, test_rows) in enumerate(folds.kfold(loaded.table.n_rows, k, cfg.seed), start=1):
        bagged, held = bags.fold_bags(
            loaded, cfg.data, train_rows, test_rows, f"fold {i} of {k}", cfg.seed, cfg.train.bags
        )
        out.append((bagged.bags, held))
    return out


def mean_of(members: list[Scored], held: prepare.Held) -> Scored:
    """A fold's bags as one model: their mean prediction scored on the held-out rows (any
    bag that diverged makes the fold's result diverged)."""
    seconds = sum(m.seconds for m in members)
    epochs = max(m.epochs for m in members)
    predictions = []
    for m in members:
        if m.overall is None or m.predictions is None:
            return Scored(m.status, epochs, seconds, reason=m.reason)
        predictions.append(m.predictions)
    y_pred = np.mean(predictions, axis=0)
    overall, per_target = regression_metrics(held.y_true, y_pred, held.split.w)
    best_epochs = [e for m in members for e in m.best_epochs]
    return Scored(
        Status.COMPLETED, epochs, seconds, overall, per_target,
        best_epochs=best_epochs, predictions=y_pred, rows=held.rows,
    )  # fmt: skip


def fold_splits(loaded: prepare.Loaded, cfg: Config, k: int) -> list[tuple[prepare.Prepared, prepare.Held]]:
    """The `k` folds of `cfg` (shuffled with its seed), each preprocessed on its own rows."""
    return [
        prepare.fit_split(loaded, cfg.data, train_rows, test_rows, f"fold {i} of {k}", cfg.seed)
        for i, (train_rows, test_rows) in enumerate(folds.kfold(loaded.table.n_rows, k, cfg.seed), start=1)
    ]


# ------------------------------------------------------------------ the command's work
def folder(cfg: Config, output_dir: Path | None, suffix: str = FOLDER_SUFFIX) -> Path:
    """The folder of cv (or sweep, with its `suffix`): `--output-dir` itself, else
    `<output.dir><suffix>` (runs/NAME-cv) beside the run folder, so the command never writes
    into (or locks) the run folder of `run`, nor its mlflow.json."""
    if output_dir is not None:
        out = output_dir.resolve()
    else:
        run_dir = Path(str(cfg.output.dir))
        run_folder.check_not_a_system_folder(run_dir)  # `/etc` is refused, not turned into /etc-cv
        out = run_dir.with_name(run_dir.name + suffix)
    run_folder.check_not_a_system_folder(out)
    return out


def run(
    cfg: Config,
    k: int,
    out: Path,
    device: torch.device,
    on_fold: Callable[[int, Scored], None],
    should_stop: Callable[[], bool],
    pack: bool,
    store: mlflow_log.Store | None,
    note: mlflow_log.Note,
) -> dict[str, Any]:
    """Cross-validate `cfg` into `out`; returns the summary written to cv.json.

    The folder is locked from before the first fold to the last file, so a second cv into
    it is refused at once, not after training. A cv that fails (bad data, a fold diverged,
    interrupted) writes nothing: a folder it made is removed again.
    """
    with _folder(out), run_folder.lock(out):
        result = cross_validate(cfg, k, device, on_fold, should_stop, pack=pack)
        if result.status is Status.INTERRUPTED:
            raise TrainingInterrupted(
                f"interrupted in fold {result.failed_fold} of {k}; nothing was written",
                ["cross-validation has no resume: run the same command again"],
            )
        if result.status is Status.DIVERGED:
            raise TrainingDiverged(
                f"fold {result.failed_fold} of {k} diverged: {result.reason}",
                ["lower optimizer.lr or set data.standardize: true; no cv.csv or cv.json was written"],
            )
        summary = result.summary()
        write(out, result, summary)
        if store is not None:
            mlflow_sweep.log_cv(store, out, cfg, summary, note)
        return summary


def write(out: Path, result: CVResult, summary: dict[str, Any]) -> None:
    """cv.csv (a row per fold; with several targets, `mse_<target>`, ... columns) and cv.json."""
    columns = ["fold", "n", *METRICS]
    rows = [{"fold": i, **r} for i, r in enumerate(result.per_fold, start=1)]
    target_columns: list[str] = []
    for row in rows:
        for name, m in row.pop("targets", {}).items():
            for metric in METRICS:
                row[f"{metric}_{name}"] = m[metric]
                if f"{metric}_{name}" not in target_columns:
                    target_columns.append(f"{metric}_{name}")
    tables.write_rows(out / FILES[0], columns + target_columns, rows)
    metrics.write_json(out / FILES[1], summary)


@contextlib.contextmanager
def _folder(out: Path) -> Iterator[None]:
    """Make `out`; if this cv made it and fails, remove it again (it holds only the lock file)."""
    made = not out.exists()
    fsio.ensure_writable_dir(out)
    try:
        yield
    except BaseException:
        if made and {p.name for p in out.iterdir()} <= {run_folder.LOCK_FILE}:
            with contextlib.suppress(OSError):
                (out / run_folder.LOCK_FILE).unlink(missing_ok=True)
                out.rmdir()
        raise
