"""`mse-train sweep`: search the `sweep:` section's space with Optuna, trial by trial.

The study lives in `sweep.db` (Optuna's RDB storage, SQLite) in the sweep folder, so an
interrupted sweep continues with `--resume` without re-running finished trials, and
`optuna-dashboard sqlite:///.../sweep.db` can open it. After every finished trial the
leaderboard is rewritten atomically; at the end come best.yaml, sweep.png and, with
`refit`, a normal run folder `best/` trained on all the training rows.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from mse_train import recipe, runtime
from mse_train.config import loading, yamlio
from mse_train.config.schema import Config, SweepConfig
from mse_train.data import prepare
from mse_train.errors import (
    ConfigError,
    EnvironmentProblem,
    OutputError,
    TrainingDiverged,
    TrainingInterrupted,
    UserError,
)
from mse_train.outputs import fsio, mlflow_log, mlflow_sweep, run_folder, tables
from mse_train.selection import cv, space
from mse_train.selection.fit import Scored, train_and_score, train_and_score_packed
from mse_train.training import packed, signals
from mse_train.training.records import Status

STUDY = "sweep"
PACK = 16  # trials asked of Optuna at once (so those of one shape can train side by side)
FINGERPRINT = "mse_train_fingerprint"


@dataclass
class Options:
    trials: int | None = None  # --trials, over sweep.trials
    folds: int | None = None  # --folds, over sweep.folds
    resume: bool = False
    output_dir: Path | None = None
    resume_command: str = "mse-train sweep CONFIG --resume"
    pack: bool = True  # --no-pack: one model at a time


@dataclass
class Outcome:
    """What the sweep found: the `--json` object and the rows of the leaderboard."""

    best: dict[str, Any]
    trials: int
    checkpoint: str | None
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    folder: Path = Path()

    def as_json(self) -> dict[str, Any]:
        return {"best": self.best, "trials": self.trials, "checkpoint": self.checkpoint}


def run(
    config_path: Path,
    overrides: Sequence[str],
    options: Options,
    on_trial: Callable[[int, int, dict[str, Any]], None],
    reporter: recipe.Reporter,
) -> Outcome:
    require_optuna()
    doc = yamlio.read(config_path)
    base, name = config_path.resolve().parent, config_path.stem
    cfg = loading.from_document(
        yamlio.Document(copy.deepcopy(doc.data), doc.lines, doc.source), base, overrides, name
    )
    sweep = _sweep_section(cfg, doc)
    folds = sweep.folds if options.folds is None else options.folds
    if folds == 1:
        raise ConfigError(f"{doc.source}: folds is 1; use 0 (score on validation rows) or 2 and more")
    the_space = space.space_of(sweep, doc, sweep.method)
    if sweep.method == "grid":
        n_trials = the_space.grid_size()
        if n_trials > space.GRID_LIMIT:
            raise ConfigError(
                f"{doc.source}: the grid has {n_trials:,} combinations",
                [f"keep it under {space.GRID_LIMIT:,}, or use method: random or tpe with `trials`"],
            )
    else:
        n_trials = options.trials or sweep.trials
    space.check_trials(doc, base, overrides, the_space, name)
    if folds == 0 and cfg.data.val is None and cfg.data.val_fraction == 0:
        raise ConfigError(
            f"{doc.source}: the sweep scores trials on validation rows, but the config has none",
            ["set `sweep.folds: 5` for cross-validation, or `data.val_fraction: 0.2`"],
        )
    out = options.output_dir.resolve() if options.output_dir is not None else Path(str(cfg.output.dir))
    run_folder.check_not_a_system_folder(out)
    device = runtime.resolve_device(cfg.train.device)
    # Before the sweep folder is made: a missing extra or an unreachable store writes nothing.
    store = mlflow_log.connect(str(cfg.output.mlflow_experiment)) if cfg.output.mlflow else None
    fsio.ensure_writable_dir(out)
    tracked = mlflow_sweep.Tracked(store)
    try:
        with run_folder.lock(out), _quiet_optuna():
            trainer = _Trainer(doc, base, overrides, name, folds, device, options.pack)
            trainer.load(cfg)  # bad data is found before the sweep folder holds anything
            sampler = _sampler(sweep.method, the_space, cfg.seed)
            grid = the_space.grid() if sweep.method == "grid" else []
            fingerprint = _fingerprint(cfg, sweep, folds)
            study = _open_study(out, options.resume, fingerprint, options.resume_command, sampler, grid)
            keys = list(the_space.params)
            tracked.start(out, cfg, folds, options.resume, reporter.note)
            for row in leaderboard(study, keys):  # resumed: trials finished before, if not yet logged
                tracked.trial(row["trial"], _swept(study, row["trial"], the_space), row)
            # Trials are asked in batches only when they can train side by side: trained one at
            # a time, each is told (and on the leaderboard) as soon as it ends.
            alone = packed.why_alone(cfg) if options.pack else None
            batch = PACK if options.pack and alone is None else 1
            if alone is not None:
                reporter.note(f"trials of the base config train one at a time: {alone}")
            with signals.on_signals() as stop:
                _requeue_unfinished(study)
                while _finished(study) < n_trials:
                    if stop.requested():
                        _interrupted(out, study, options.resume_command)
                    size = min(batch, n_trials - _finished(study))
                    trials = [study.ask(the_space.distributions()) for _ in range(size)]
                    try:
                        results = trainer.score([the_space.decode(t.params) for t in trials], stop.requested)
                    except UserError:  # a trial's data does not work: the sweep stops here
                        for trial in trials:
                            study.tell(trial, state=_failed())
                            study.enqueue_trial(trial.params)  # after a fix, --resume runs it
                        if _finished(study) == 0 and not options.resume:
                            _discard(out)  # nothing finished: leave no sweep behind to resume
                        raise
                    if results is None:
                        for trial in trials:
                            study.tell(trial, state=_failed())
                            study.enqueue_trial(trial.params)  # --resume runs it again, from its start
                        _interrupted(out, study, options.resume_command)
                    for trial, (scored, dropped) in zip(trials, results, strict=True):
                        _tell(study, trial, scored, dropped)
                        rows = leaderboard(study, keys)
                        tables.write_rows(out / "leaderboard.csv", columns(keys), rows)
                        row = next(r for r in rows if r["trial"] == trial.number)
                        on_trial(_finished(study), n_trials, row)
                        tracked.trial(trial.number, _swept(study, trial.number, the_space), row)
            rows = leaderboard(study, keys)
            tables.write_rows(out / "leaderboard.csv", columns(keys), rows)
            completed = [r for r in rows if r["status"] not in ("diverged",)]
            if not completed:
                raise TrainingDiverged(
                    f"every trial of the sweep diverged ({len(rows)}); see {out / 'leaderboard.csv'}",
                    ["narrow the ranges (e.g. lower optimizer.lr) or set data.standardize: true"],
                )
            best_row = min(completed, key=lambda r: r["score_mean"])
            best_values = _values_of(study, best_row["trial"], the_space)
            best_cfg, _ = space.trial_config(doc, base, overrides, best_values, name)
            best_cfg = _refit_config(best_cfg, out)
            text = (
                f"# The best trial ({best_row['trial']}) of the sweep in {out}, score (validation MSE in "
                "target units) "
                f"{best_row['score_mean']:.6g}.\n# It trains on all training rows (data.val_fraction: 0) "
                f"into {best_cfg.output.dir}: mse-train run {out / 'best.yaml'}\n"
            )
            fsio.write_text(out / "best.yaml", text + loading.to_yaml(best_cfg))
            _plot(out / "sweep.png", rows, the_space.params, best_row["trial"])  # ranges: log axes
        checkpoint = None
        if sweep.refit:
            refit_options = recipe.Options(
                overwrite=True,
                resume_command=f"mse-train run {out / 'best.yaml'} --resume",
                overwrite_command=f"mse-train run {out / 'best.yaml'} --overwrite",
                mlflow_tags=tracked.refit_tags(best_row["trial"]),
            )
            recipe.run(best_cfg, refit_options, reporter)
            checkpoint = str(Path(str(best_cfg.output.dir)) / "best.pt")
        best = {
            "trial": best_row["trial"],
            "params": {k: v for k, v in best_values.items() if best_row.get(k) is not None},
            "score": best_row["score_mean"],
            "config": str(out / "best.yaml"),
        }
        tracked.finish(out, best, len(rows))
        return Outcome(best, len(rows), checkpoint, rows, keys, out)
    except BaseException as exc:  # the parent run ends FAILED or KILLED, not left RUNNING
        tracked.abort(exc)
        raise


def require_optuna() -> None:
    """Optuna is the `sweep` extra; say how to get it instead of failing on an import."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            "mse-train sweep needs Optuna, which is not installed",
            ["pip install 'mse-train[sweep]'"],
        ) from None


# ------------------------------------------------------------------ trials
class _Trainer:
    """Trains trial configs, reading each distinct `data:` section once."""

    def __init__(
        self,
        doc: yamlio.Document,
        base: Path,
        overrides: Sequence[str],
        name: str,
        folds: int,
        device: torch.device,
        pack: bool,
    ) -> None:
        self.doc, self.base, self.overrides, self.name = doc, base, overrides, name
        self.folds, self.device, self.pack = folds, device, pack
        self._loaded: dict[str, prepare.Loaded] = {}
        self._prepared: dict[str, prepare.Prepared] = {}

    def load(self, cfg: Config) -> prepare.Loaded:
        """The training table of `cfg`'s data section, read once per distinct section."""
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._loaded:
            self._loaded[key] = prepare.load_training(cfg.data, cfg.targets)
        return self._loaded[key]

    def score(
        self, trials: list[dict[str, Any]], should_stop: Callable[[], bool]
    ) -> list[tuple[Scored, list[str]]] | None:
        """Each trial's score (and dropped keys); None when asked to stop.

        Jobs (a trial's folds, or its holdout) that share a pack key train side by side.
        """
        jobs: list[tuple[int, Config, prepare.Prepared, prepare.Held]] = []
        dropped_of = []
        for number, values in enumerate(trials):
            try:
                cfg, dropped = space.trial_config(self.doc, self.base, self.overrides, values, self.name)
                splits = self._splits(cfg, values)
            except UserError as exc:
                shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                exc.problems.append(f"in the sweep's trial with {shown}; nothing of it was trained")
                raise
            dropped_of.append(dropped)
            jobs += [(number, cfg, prepared, held) for prepared, held in splits]
        groups: dict[str | None, list[int]] = {}
        for index, (_, cfg, _, _) in enumerate(jobs):
            key = packed.pack_key(cfg) if self.pack else None
            groups.setdefault(key, []).append(index)
        scores: dict[int, Scored] = {}
        for key, members in groups.items():
            if key is not None and len(members) > 1:
                together = train_and_score_packed([jobs[i][1:] for i in members], self.device, should_stop)
                if together is None:
                    return None
                scores.update(zip(members, together, strict=True))
                continue
            for i in members:
                _, cfg, prepared, held = jobs[i]
                scored = train_and_score(cfg, prepared, held, self.device, should_stop, stack=self.pack)
                if scored.status is Status.INTERRUPTED:
                    return None
                scores[i] = scored
        out = []
        for number, dropped in enumerate(dropped_of):
            parts = [scores[i] for i, job in enumerate(jobs) if job[0] == number]
            out.append((_combine(parts), dropped))
        return out

    def _splits(self, cfg: Config, values: dict[str, Any]) -> list[tuple[prepare.Prepared, prepare.Held]]:
        if self.folds >= 2:
            return cv.fold_splits(self.load(cfg), cfg, self.folds)
        key = json.dumps([cfg.data.model_dump(mode="json"), cfg.seed], sort_keys=True)
        if key not in self._prepared:  # trials that do not change `data:` share one read
            self._prepared[key] = prepare.prepare(cfg.data, cfg.targets, cfg.seed)
        prepared = self._prepared[key]
        if prepared.val is None:
            raise ConfigError(
                f"{self.doc.source}: a trial with {values} has no validation rows to be scored on",
                ["set `sweep.folds: 5`, or keep `data.val_fraction` above 0 in every trial"],
            )
        y_true = prepared.pre.unscale_targets(prepared.val.y).astype(np.float64)
        return [(prepared, prepare.Held(prepared.val, y_true))]


def _combine(parts: list[Scored]) -> Scored:
    """One trial's score from its folds (or its one holdout): the mean, and the std over folds."""
    epochs, seconds = sum(p.epochs for p in parts), sum(p.seconds for p in parts)
    failed = next((p for p in parts if p.overall is None), None)
    if failed is not None:
        return Scored(failed.status, epochs, seconds, reason=failed.reason)
    rows = [p.overall for p in parts if p.overall is not None]
    stats = cv.mean_std(rows)
    overall: dict[str, Any] = {m: stats[m]["mean"] for m in cv.METRICS}
    overall["score_std"] = stats["mse"]["std"] if len(parts) > 1 else None
    overall["n"] = sum(r["n"] for r in rows)
    status = (
        Status.EARLY_STOPPED if all(p.status is Status.EARLY_STOPPED for p in parts) else Status.COMPLETED
    )
    return Scored(status, epochs, seconds, overall)


def _tell(study: Any, trial: Any, scored: Scored, dropped: list[str]) -> None:
    trial.set_user_attr("dropped", dropped)
    trial.set_user_attr("epochs", scored.epochs)
    trial.set_user_attr("seconds", scored.seconds)
    if scored.overall is None:
        trial.set_user_attr("status", "diverged")
        trial.set_user_attr("reason", scored.reason)
        study.tell(trial, state=_failed())
        return
    for metric, value in scored.overall.items():
        trial.set_user_attr(metric, value)
    trial.set_user_attr("status", scored.status.value)
    study.tell(trial, scored.overall["mse"])


def columns(keys: list[str]) -> list[str]:
    return ["trial", *keys, "score_mean", "score_std", "rmse", "mae", "r2", "epochs", "seconds", "status"]


def leaderboard(study: Any, keys: list[str]) -> list[dict[str, Any]]:
    """One row per finished trial, in trial order; a dropped key is an empty cell."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if attrs.get("status") is None:
            continue  # running, or interrupted and queued again
        row: dict[str, Any] = {"trial": trial.number}
        dropped = set(attrs.get("dropped", []))
        for key in keys:
            value = trial.params.get(key)
            row[key] = None if key in dropped else value
        row.update(
            score_mean=attrs.get("mse"),
            score_std=attrs.get("score_std"),
            rmse=attrs.get("rmse"),
            mae=attrs.get("mae"),
            r2=attrs.get("r2"),
            epochs=attrs.get("epochs"),
            seconds=round(float(attrs.get("seconds", 0.0)), 3),
            status=attrs["status"],
        )
        rows.append(row)
    return rows


def _values_of(study: Any, number: int, the_space: space.Space) -> dict[str, Any]:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return the_space.decode(trial.params)


def _swept(study: Any, number: int, the_space: space.Space) -> dict[str, Any]:
    """A trial's swept values, without the keys its choices made inapplicable."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    dropped = set(trial.user_attrs.get("dropped", []))
    return {k: v for k, v in the_space.decode(trial.params).items() if k not in dropped}


def _refit_config(cfg: Config, out: Path) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.data.val_fraction = 0.0
    cfg.output.dir = str(out / "best")
    return cfg


def _discard(out: Path) -> None:
    """Remove a sweep that never finished a trial, so that the same command can start again."""
    for name in ("sweep.db", "leaderboard.csv", mlflow_log.RECORD):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _finished(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") is not None)


def _failed() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL


def _requeue_unfinished(study: Any) -> None:
    """A trial left running by a killed process is failed and queued to run again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params)


def _interrupted(out: Path, study: Any, resume_command: str) -> NoReturn:
    raise TrainingInterrupted(
        f"sweep interrupted after {_finished(study)} finished trial(s); {out / 'leaderboard.csv'} "
        "holds them and sweep.db the search",
        [f"continue with: {resume_command}"],
    )


# ------------------------------------------------------------------ the study
def _sweep_section(cfg: Config, doc: yamlio.Document) -> SweepConfig:
    if cfg.sweep is None:
        raise ConfigError(
            f"{doc.source}: no `sweep:` section, so there is nothing to search",
            [
                "add one, e.g.\n    sweep:\n      method: tpe\n      trials: 20\n      params:\n"
                "        optimizer.lr: {low: 1.0e-4, high: 0.1, log: true}"
            ],
        )
    return cfg.sweep


def _fingerprint(cfg: Config, sweep: SweepConfig, folds: int) -> str:
    """What must not change between a sweep and its --resume: the base config and the space."""
    data = cfg.model_dump(mode="json")
    for key in ("dir", "mlflow", "mlflow_experiment"):  # where results go, not what is searched
        data["output"].pop(key, None)
    data["sweep"] = {**sweep.model_dump(mode="json"), "trials": None, "folds": folds}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _sampler(method: str, the_space: space.Space, seed: int) -> Any:
    import optuna

    seed32 = seed % 2**32  # Optuna seeds numpy, which takes 32 bits
    if method in ("grid", "random"):  # a grid's trials are all queued with fixed values
        return optuna.samplers.RandomSampler(seed=seed32)
    # Trials are asked in batches (to train side by side): the liar keeps TPE from asking
    # the same point again while a batch is still running.
    return optuna.samplers.TPESampler(seed=seed32, constant_liar=True)


def _open_study(
    out: Path, resume: bool, fingerprint: str, resume_command: str, sampler: Any, grid: list[dict[str, Any]]
) -> Any:
    """Create the study (queueing a grid's every combination), or load it to resume.

    A grid is queued rather than given to Optuna's GridSampler: that sampler ends a study
    with `Study.stop()`, which Optuna allows only inside `optimize()`, not with ask-and-tell.
    """
    import optuna

    db = out / "sweep.db"
    if db.exists() and not resume:
        raise OutputError(
            f"{out}: already holds a sweep (sweep.db)",
            [f"continue it with: {resume_command}", "or choose another folder with --output-dir"],
        )
    if resume and not db.exists():
        raise OutputError(
            f"{out}: nothing to resume: no sweep.db in the folder", ["run without --resume to start"]
        )
    if resume:
        _check_sqlite(db)
    storage = f"sqlite:///{db}"
    try:
        if resume:
            study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler)
        else:
            study = optuna.create_study(
                study_name=STUDY, storage=storage, direction="minimize", sampler=sampler
            )
            study.set_user_attr(FINGERPRINT, fingerprint)
            for params in grid:
                study.enqueue_trial(params)
    except (KeyError, ValueError, RuntimeError, optuna.exceptions.OptunaError, Exception) as exc:
        if isinstance(exc, (OutputError,)):
            raise
        raise OutputError(
            f"{db}: not a sweep database mse-train can continue ({type(exc).__name__})",
            ["start the sweep again in another folder with --output-dir"],
        ) from None
    if resume:
        _check_agrees(out, study)
    if study.user_attrs.get(FINGERPRINT) != fingerprint:
        raise ConfigError(
            f"{db}: this sweep was started with a different config or `sweep:` section",
            [
                "resume with the config it started with (only --trials may change), or start a new "
                "sweep in another folder with --output-dir"
            ],
        )
    return study


def _check_agrees(out: Path, study: Any) -> None:
    """Every trial leaderboard.csv lists must be in sweep.db: a database that lost trials
    (or was replaced by another) is not continued as if nothing happened."""
    board = out / "leaderboard.csv"
    if not board.exists():
        return
    import csv

    try:
        with open(board, newline="", encoding="utf-8") as f:
            listed = {int(row["trial"]) for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return  # a damaged leaderboard is rewritten from the database
    stored = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status")}
    lost = sorted(listed - stored)
    if lost:
        raise OutputError(
            f"{out / 'sweep.db'}: does not hold trial(s) {', '.join(map(str, lost[:10]))} that "
            "leaderboard.csv lists; the database was damaged or replaced",
            ["start the sweep again in another folder with --output-dir"],
        )


def _check_sqlite(db: Path) -> None:
    with open(db, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise OutputError(
                f"{db}: not an SQLite database, so not a sweep mse-train wrote",
                ["start the sweep again in another folder with --output-dir"],
            )


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial and warns about experimental features: mse-train reports itself."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _plot(path: Path, rows: list[dict[str, Any]], keys: dict[str, Any], best: int) -> None:
    from mse_train.outputs import plots

    plots.write_sweep_plot(path, rows, keys, best)
