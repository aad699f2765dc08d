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
import os
import socket
import time
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
from mse_train.selection import cv, space, study
from mse_train.selection.fit import Scored, train_and_score, train_and_score_packed
from mse_train.training import packed, signals
from mse_train.training.records import Status

PACK = 16  # trials asked of Optuna at once (so those of one shape can train side by side)
RETRY_OF = "mse_train_retry_of"  # user attr of a trial queued again after an interrupt
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Options:
    trials: int | None = None  # --trials, over sweep.trials
    folds: int | None = None  # --folds, over sweep.folds
    resume: bool = False
    output_dir: Path | None = None
    resume_command: str = "mse-train sweep CONFIG --resume"
    pack: bool = True  # --no-pack: one model at a time
    storage: str | None = None  # --storage, over $MSE_TRAIN_SWEEP_STORAGE and sweep.storage
    study: str | None = None  # --study, over sweep.study
    report: bool = False  # --report: write the leaderboard, best.yaml and sweep.png; train nothing


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
    wants_mlflow = cfg.output.mlflow and not options.report
    store = mlflow_log.connect(str(cfg.output.mlflow_experiment)) if wants_mlflow else None
    fsio.ensure_writable_dir(out)
    tracked = mlflow_sweep.Tracked(store)
    spec = study.storage_spec(options.storage, sweep)
    study_name = options.study or sweep.study
    try:
        # Shared: the workers of one study may use one folder; each writes whole files from it.
        with run_folder.lock(out, shared=True), _quiet_optuna():
            trainer = _Trainer(doc, base, overrides, name, folds, device, options.pack)
            if not options.report:
                trainer.load(cfg)  # bad data is found before the sweep folder holds anything
            where = _connect(spec, out, options, sweep.heartbeat)
            grid = the_space.grid() if sweep.method == "grid" else []
            fingerprint = study.fingerprint(cfg, folds)
            the_study, created = _open_study(where, study_name, options, fingerprint, doc.source, grid)
            keys = list(the_space.params)
            if options.report:
                rows, best_row, best_values, best_cfg = _results(the_study, where, the_space, doc, base,
                                                                 overrides, name, keys, out)  # fmt: skip
                return Outcome(_best(best_row, best_values, out), len(rows), None, rows, keys, out)
            # A sampler seeded as every other worker's would ask the same points again: only the
            # study's creator uses the config's seed (a fresh sweep repeats itself exactly).
            worker_seed = cfg.seed if created else _worker_seed(cfg.seed, the_study)
            the_study.sampler = _sampler(sweep.method, the_space, worker_seed)
            tracked.start(out, cfg, folds, options.resume, reporter.note)
            for row in leaderboard(the_study, keys):  # resumed: trials finished before, if not yet logged
                tracked.trial(row["trial"], _swept(the_study, row["trial"], the_space), row)
            # Trials are asked in batches only when they can train side by side: trained one at
            # a time, each is told (and on the leaderboard) as soon as it ends.
            alone = packed.why_alone(cfg) if options.pack else None
            batch = PACK if options.pack and alone is None else 1
            if alone is not None:
                reporter.note(f"trials of the base config train one at a time: {alone}")
            worker = _Worker(the_study, where, the_space, n_trials, batch, sweep.heartbeat, out, options)
            worker.search(trainer, keys, on_trial, tracked, reporter.note)
            rows, best_row, best_values, best_cfg = _results(the_study, where, the_space, doc, base,
                                                             overrides, name, keys, out)  # fmt: skip
        checkpoint = None
        if sweep.refit and study.claim(where, f"{study_name}:refit-after-{n_trials}"):
            refit_options = recipe.Options(
                overwrite=True,
                resume_command=f"mse-train run {out / 'best.yaml'} --resume",
                overwrite_command=f"mse-train run {out / 'best.yaml'} --overwrite",
                mlflow_tags=tracked.refit_tags(best_row["trial"]),
            )
            recipe.run(best_cfg, refit_options, reporter)
            checkpoint = str(Path(str(best_cfg.output.dir)) / "best.pt")
        elif sweep.refit:
            reporter.note(f"another worker of the study refits the winner (trial {best_row['trial']})")
        best = _best(best_row, best_values, out)
        tracked.finish(out, best, len(rows))
        return Outcome(best, len(rows), checkpoint, rows, keys, out)
    except BaseException as exc:  # the parent run ends FAILED or KILLED, not left RUNNING
        tracked.abort(exc)
        raise


def _results(
    the_study: Any,
    where: study.Where,
    the_space: space.Space,
    doc: yamlio.Document,
    base: Path,
    overrides: Sequence[str],
    name: str,
    keys: list[str],
    out: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], Config]:
    """leaderboard.csv, best.yaml and sweep.png from the study (any worker, or --report)."""
    rows = leaderboard(the_study, keys)
    if not rows:
        raise OutputError(
            f"{where.shown}: study '{the_study.study_name}' has no finished trial yet",
            ["wait for its workers to finish one, or start one: the same command without --report"],
        )
    tables.write_rows(out / "leaderboard.csv", columns(keys), rows)
    completed = [r for r in rows if r["status"] not in ("diverged",)]
    if not completed:
        raise TrainingDiverged(
            f"every trial of the sweep diverged ({len(rows)}); see {out / 'leaderboard.csv'}",
            ["narrow the ranges (e.g. lower optimizer.lr) or set data.standardize: true"],
        )
    best_row = min(completed, key=lambda r: r["score_mean"])
    best_values = _values_of(the_study, best_row["trial"], the_space)
    best_cfg, _ = space.trial_config(doc, base, overrides, best_values, name)
    best_epochs = _trial(the_study, best_row["trial"]).user_attrs.get("best_epochs") or []
    best_cfg = _refit_config(best_cfg, out, best_epochs)
    epochs_said = (
        f"for {best_cfg.train.epochs} epochs, the mean of the epochs its validated training kept as best "
        f"({', '.join(map(str, best_epochs))}), "
        if best_epochs
        else ""
    )
    text = (
        f"# The best trial ({best_row['trial']}) of the sweep in {out}, score (validation MSE in "
        "target units) "
        f"{best_row['score_mean']:.6g}.\n# It trains on all training rows (data.val_fraction: 0) "
        f"{epochs_said}into {best_cfg.output.dir}: mse-train run {out / 'best.yaml'}\n"
    )
    fsio.write_text(out / "best.yaml", text + loading.to_yaml(best_cfg))
    _plot(out / "sweep.png", rows, keys, best_row["trial"])
    return rows, best_row, best_values, best_cfg


def _best(best_row: dict[str, Any], best_values: dict[str, Any], out: Path) -> dict[str, Any]:
    return {
        "trial": best_row["trial"],
        "params": {k: v for k, v in best_values.items() if best_row.get(k) is not None},
        "score": best_row["score_mean"],
        "config": str(out / "best.yaml"),
    }


def _worker_seed(seed: int, the_study: Any) -> int:
    """A seed no other worker of the study has: the config's, the trials so far and a nonce."""
    nonce = f"{seed}:{len(the_study.get_trials(deepcopy=False))}:{os.urandom(8).hex()}"
    return int.from_bytes(hashlib.sha256(nonce.encode()).digest()[:8], "little")


def require_optuna() -> None:
    """Optuna is the `sweep` extra; say how to get it instead of failing on an import."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            "mse-train sweep needs Optuna, which is not installed",
            ["pip install 'mse-train[sweep]'"],
        ) from None


# ------------------------------------------------------------------ one worker's search
class _Worker:
    """Asks for trials while the study needs them, trains them, tells their scores.

    The study's budget is shared: trials finished, running (in any worker) and queued count
    against `n_trials`, in trial-number order, so workers that ask at once never overshoot
    it: a trial asked beyond it is told failed, with a `surplus` attr, and not trained.
    """

    def __init__(
        self,
        the_study: Any,
        where: study.Where,
        the_space: space.Space,
        n_trials: int,
        batch: int,
        heartbeat: int,
        out: Path,
        options: Options,
    ) -> None:
        self.study, self.where, self.space = the_study, where, the_space
        self.n_trials, self.batch, self.heartbeat = n_trials, batch, heartbeat
        self.out, self.options = out, options
        self.grid = the_space.method == "grid"

    def search(
        self,
        trainer: _Trainer,
        keys: list[str],
        on_trial: Callable[[int, int, dict[str, Any]], None],
        tracked: mlflow_sweep.Tracked,
        note: Callable[[str], None],
    ) -> None:
        import optuna

        beats = study.Heartbeats(self.where.storage, self.heartbeat)
        waited = False
        try:
            with signals.on_signals() as stop:
                while True:
                    if stop.requested():
                        _interrupted(self.out, self.study, self.options.resume_command)
                    optuna.storages.fail_stale_trials(self.study)  # a dead worker's trials run again
                    trials = self.study.get_trials(deepcopy=False)
                    if _finished(trials) >= self.n_trials:
                        return
                    if self.grid:
                        self._top_up_grid(trials)
                        trials = self.study.get_trials(deepcopy=False)
                    size = min(self.batch, self._askable(trials))
                    if size <= 0:  # the rest are in flight in other workers: one of them may die
                        if not waited:
                            note("waiting for trials in flight in other workers of the study")
                            waited = True
                        time.sleep(min(2.0, self.heartbeat))
                        continue
                    asked = [self.study.ask(self.space.distributions()) for _ in range(size)]
                    beats.track([t._trial_id for t in asked])
                    for trial in asked:  # which worker ran it, in the leaderboard's study and the dashboard
                        trial.set_user_attr("worker", WORKER)
                    mine = self._within_budget(asked)
                    if mine:
                        self._train(mine, trainer, keys, on_trial, tracked, stop.requested)
                    beats.track([])
        finally:
            beats.close()

    def _askable(self, trials: list[Any]) -> int:
        """How many trials this worker may ask now: those queued, and room left in the budget."""
        from optuna.trial import TrialState

        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        return waiting + self.n_trials - len(_live(trials, self.grid))

    def _top_up_grid(self, trials: list[Any]) -> None:
        """Queue the grid's points that no trial holds (one whose retry also failed)."""
        from optuna.trial import TrialState

        if any(t.state == TrialState.WAITING for t in trials):
            return
        held = {_params_key(t) for t in _live(trials, True)}
        for params in self.space.grid():
            if json.dumps(params, sort_keys=True) not in held:
                self.study.enqueue_trial(params)

    def _within_budget(self, asked: list[Any]) -> list[Any]:
        """The asked trials this worker trains; the others are told failed as surplus."""
        ranked = [t.number for t in _live(self.study.get_trials(deepcopy=False), self.grid)]
        allowed = set(ranked[: self.n_trials])
        mine = [t for t in asked if t.number in allowed]
        for trial in asked:
            if trial.number not in allowed:
                trial.set_user_attr("surplus", True)
                self.study.tell(trial, state=_failed())
        return mine

    def _train(
        self,
        trials: list[Any],
        trainer: _Trainer,
        keys: list[str],
        on_trial: Callable[[int, int, dict[str, Any]], None],
        tracked: mlflow_sweep.Tracked,
        should_stop: Callable[[], bool],
    ) -> None:
        try:
            results = trainer.score([self.space.decode(t.params) for t in trials], should_stop)
        except UserError:  # a trial's data does not work: the sweep stops here
            self._queue_again(trials)
            nobody = _finished(self.study.get_trials(deepcopy=False)) == 0
            if nobody and self.where.default and not self.options.resume:
                _discard(self.out)  # nothing finished: leave no sweep behind to resume
            raise
        if results is None:  # interrupted: the trials run again, from their start
            self._queue_again(trials)
            _interrupted(self.out, self.study, self.options.resume_command)
        for trial, (scored, dropped) in zip(trials, results, strict=True):
            _tell(self.study, trial, scored, dropped)
            rows = leaderboard(self.study, keys)
            tables.write_rows(self.out / "leaderboard.csv", columns(keys), rows)
            row = next(r for r in rows if r["trial"] == trial.number)
            done = _finished(self.study.get_trials(deepcopy=False))
            on_trial(done, self.n_trials, row)
            tracked.trial(trial.number, _swept(self.study, trial.number, self.space), row)

    def _queue_again(self, trials: list[Any]) -> None:
        """Trials this worker cannot finish: failed, and queued with the same settings."""
        for trial in trials:
            self.study.tell(trial, state=_failed())
            self.study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})


def _live(trials: list[Any], grid: bool) -> list[Any]:
    """The trials that count against the budget, in number order: finished, running, queued
    (for a grid, one per point: a second trial of a point is surplus)."""
    from optuna.trial import TrialState

    live, seen = [], set()
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("status") is None and t.state not in (TrialState.RUNNING, TrialState.WAITING):
            continue  # interrupted, lost with its worker, or surplus: not a trial of the search
        if grid:
            key = _params_key(t)
            if key in seen:
                continue
            seen.add(key)
        live.append(t)
    return live


def _params_key(trial: Any) -> str:
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return json.dumps(params, sort_keys=True)


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
    best_epochs = [e for p in parts for e in p.best_epochs]
    return Scored(status, epochs, seconds, overall, best_epochs=best_epochs)


def _tell(study: Any, trial: Any, scored: Scored, dropped: list[str]) -> None:
    trial.set_user_attr("dropped", dropped)
    trial.set_user_attr("epochs", scored.epochs)
    trial.set_user_attr("seconds", scored.seconds)
    trial.set_user_attr("best_epochs", scored.best_epochs)
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


def _trial(the_study: Any, number: int) -> Any:
    return next(t for t in the_study.get_trials(deepcopy=False) if t.number == number)


def _values_of(the_study: Any, number: int, the_space: space.Space) -> dict[str, Any]:
    return the_space.decode(_trial(the_study, number).params)


def _swept(the_study: Any, number: int, the_space: space.Space) -> dict[str, Any]:
    """A trial's swept values, without the keys its choices made inapplicable."""
    trial = _trial(the_study, number)
    dropped = set(trial.user_attrs.get("dropped", []))
    return {k: v for k, v in the_space.decode(trial.params).items() if k not in dropped}


def _refit_config(cfg: Config, out: Path, best_epochs: list[int]) -> Config:
    """The winner on all training rows. With no validation rows left to choose an epoch or
    stop early, it trains for as many epochs as its validated trainings kept as best (their
    mean over the folds: each fold saw (k-1)/k of the rows, and an epoch is a pass over the
    rows, so the refit's more rows already take more steps per epoch)."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.val_fraction = 0.0
    cfg.output.dir = str(out / "best")
    if best_epochs:
        cfg.train.epochs = max(1, round(sum(best_epochs) / len(best_epochs)))
    return cfg


def _discard(out: Path) -> None:
    """Remove a sweep that never finished a trial, so that the same command can start again."""
    for name in (study.DEFAULT_FILE, "leaderboard.csv", mlflow_log.RECORD):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _finished(trials: list[Any]) -> int:
    return sum(1 for t in trials if t.user_attrs.get("status") is not None)


def _failed() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL


def _interrupted(out: Path, the_study: Any, resume_command: str) -> NoReturn:
    done = _finished(the_study.get_trials(deepcopy=False))
    raise TrainingInterrupted(
        f"sweep interrupted after {done} finished trial(s); its trials in flight are queued to run "
        f"again. {out / 'leaderboard.csv'} holds the finished ones and the study the search",
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


def _sampler(method: str, the_space: space.Space, seed: int) -> Any:
    import optuna

    seed32 = seed % 2**32  # Optuna seeds numpy, which takes 32 bits
    if method in ("grid", "random"):  # a grid's trials are all queued with fixed values
        return optuna.samplers.RandomSampler(seed=seed32)
    # Trials are asked in batches (to train side by side): the liar keeps TPE from asking
    # the same point again while a batch is still running.
    return optuna.samplers.TPESampler(seed=seed32, constant_liar=True)


def _connect(spec: str | None, out: Path, options: Options, heartbeat: int) -> study.Where:
    """The study's storage; the folder's own sweep.db starts only without --resume/--report."""
    if spec is None:
        db = out / study.DEFAULT_FILE
        there = db.exists() or db.is_symlink()
        if there:
            study.check_database_file(db)
        if there and not (options.resume or options.report):
            raise OutputError(
                f"{out}: already holds a sweep ({study.DEFAULT_FILE})",
                [f"continue it with: {options.resume_command}", "or choose another folder with --output-dir"],
            )
        if not there and (options.resume or options.report):
            raise OutputError(
                f"{out}: nothing to {'report' if options.report else 'resume'}: no {study.DEFAULT_FILE} "
                "in the folder",
                ["run without --resume to start" if options.resume else "name the sweep's folder with -o"],
            )
    return study.connect(spec, out, heartbeat)


def _open_study(
    where: study.Where,
    name: str,
    options: Options,
    fingerprint: dict[str, Any],
    source: str,
    grid: list[dict[str, Any]],
) -> tuple[Any, bool]:
    """Load the study, or create it (queueing a grid's every combination); True if created.

    A named storage is shared: its study is created by the first worker and joined by the
    rest. A grid is queued rather than given to Optuna's GridSampler: that sampler ends a
    study with `Study.stop()`, which Optuna allows only inside `optimize()`.
    """
    import optuna

    try:
        try:
            the_study = optuna.load_study(study_name=name, storage=where.storage)
            created = False
        except KeyError:  # no study of that name
            if where.default and (options.resume or options.report):
                raise OutputError(
                    f"{where.shown}: not a sweep database mse-train can continue (no study '{name}')",
                    ["start the sweep again in another folder with --output-dir"],
                ) from None
            if options.report:
                raise OutputError(
                    f"{where.shown}: holds no study '{name}', so there is nothing to report",
                    ["check --storage and --study (or sweep.storage / sweep.study)"],
                ) from None
            the_study, created = _create(where, name, fingerprint, grid), True
    except (OutputError, ConfigError):
        raise
    except Exception as exc:
        raise study.storage_error(exc, where.shown) from None
    if not created:
        study.check_fingerprint(the_study, fingerprint, where, source)
        if where.default:
            _check_agrees(where, the_study)
    return the_study, created


def _create(where: study.Where, name: str, fingerprint: dict[str, Any], grid: list[dict[str, Any]]) -> Any:
    import optuna

    try:
        the_study = optuna.create_study(study_name=name, storage=where.storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        return optuna.load_study(study_name=name, storage=where.storage)
    the_study.set_user_attr(study.CONFIG_ATTR, fingerprint)
    for params in grid:
        the_study.enqueue_trial(params)
    return the_study


def _check_agrees(where: study.Where, the_study: Any) -> None:
    """Every trial leaderboard.csv lists must be in sweep.db: a database that lost trials
    (or was replaced by another) is not continued as if nothing happened."""
    board = Path(where.shown).parent / "leaderboard.csv"
    if not board.exists():
        return
    import csv

    try:
        with open(board, newline="", encoding="utf-8") as f:
            listed = {int(row["trial"]) for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return  # a damaged leaderboard is rewritten from the database
    stored = {t.number for t in the_study.get_trials(deepcopy=False) if t.user_attrs.get("status")}
    lost = sorted(listed - stored)
    if lost:
        raise OutputError(
            f"{where.shown}: does not hold trial(s) {', '.join(map(str, lost[:10]))} that "
            "leaderboard.csv lists; the database was damaged or replaced",
            ["start the sweep again in another folder with --output-dir"],
        )


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial and warns about experimental features: mse-train reports itself."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # mse-train records the heartbeats of its asked trials itself (study.Heartbeats)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def _plot(path: Path, rows: list[dict[str, Any]], keys: list[str], best: int) -> None:
    from mse_train.outputs import plots

    plots.write_sweep_plot(path, rows, keys, best)
