"""`mse-train sweep`: search the `sweep:` section's space with Optuna, trial by trial.

The sweep's folder is `<output.dir>-sweep` (runs/NAME-sweep, beside the run folder of `run`
for the same config, never in it), or `--output-dir` itself. The study lives in
`sweep.journal` (Optuna's journal file; `sweep.db`, SQLite, in a folder made before) in the
sweep folder, so an interrupted sweep continues with `--resume` without re-running finished
trials, and `optuna-dashboard .../sweep.journal` can open it. After every finished trial the
leaderboard is rewritten atomically; at the end come best.yaml, sweep.png and, with
`refit`, a normal run folder `best/` trained on all the training rows (with
`sweep.ensemble`, ensemble.json and the ensemble's one checkpoint, ensemble/best.pt).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mse_train import recipe, runtime
from mse_train.config import loading, yamlio
from mse_train.config.schema import Config, SweepConfig
from mse_train.errors import (
    ConfigError,
    EnvironmentProblem,
    OutputError,
    TrainingDiverged,
)
from mse_train.outputs import fsio, mlflow_log, mlflow_sweep, run_folder, tables
from mse_train.selection import cv, ensemble, space, storage, study, worker
from mse_train.training.stack import why_alone

FOLDER_SUFFIX = "-sweep"  # runs/NAME-sweep beside the run folder runs/NAME, as cv's runs/NAME-cv
PACK = 16  # trials asked of Optuna at once (so those of one shape can train side by side)


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
    # When the command began (epoch seconds; None: when `run` is called): a new study's
    # sweep.time_limit counts from then, so that start-up and reading the table are in it.
    started: float | None = None


@dataclass
class Outcome:
    """What the sweep found: the `--json` object and the rows of the leaderboard."""

    best: dict[str, Any]
    trials: int
    checkpoint: str | None
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    folder: Path = Path()

    ensemble: dict[str, Any] | None = None  # with sweep.ensemble: ensemble.Selection.as_json()

    def as_json(self) -> dict[str, Any]:
        out = {"best": self.best, "trials": self.trials, "checkpoint": self.checkpoint}
        return out if self.ensemble is None else {**out, "ensemble": self.ensemble}


def run(
    config_path: Path,
    overrides: Sequence[str],
    options: Options,
    watch: worker.Watch,
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
    if sweep.ensemble and folds < 2:
        raise ConfigError(
            f"{doc.source}: sweep.ensemble is {sweep.ensemble}, but the trials are scored on "
            "validation rows (folds 0): the ensemble is chosen on out-of-fold predictions",
            ["set `sweep.folds: 5` (or --folds 5), or `sweep.ensemble: 0`"],
        )
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
    if folds == 0 and cfg.data.val is None and cfg.data.val_fraction == 0 and not _holds_out(the_space):
        raise ConfigError(
            f"{doc.source}: the sweep scores trials on validation rows, but the config has none",
            ["set `sweep.folds: 5` for cross-validation, or `data.val_fraction: 0.2`"],
        )
    out = cv.folder(cfg, options.output_dir, FOLDER_SUFFIX)
    device = runtime.resolve_device(cfg.train.device)
    # Before the sweep folder is made: a missing extra or an unreachable store writes nothing.
    wants_mlflow = cfg.output.mlflow and not options.report
    store = mlflow_log.connect(str(cfg.output.mlflow_experiment)) if wants_mlflow else None
    fsio.ensure_writable_dir(out)
    tracked = mlflow_sweep.Tracked(store)
    spec = storage.storage_spec(options.storage, sweep)
    study_name = options.study or sweep.study
    where = None
    try:
        # Shared: the workers of one study may use one folder; each writes whole files from it.
        with run_folder.lock(out, shared=True), _quiet_optuna():
            trainer = worker.Trainer(doc, base, overrides, name, folds, device, options.pack)
            if not options.report:
                trainer.load(cfg)  # bad data is found before the sweep folder holds anything
            resume, report = options.resume, options.report
            where = study.open_storage(spec, out, sweep.heartbeat, resume, report, options.resume_command)
            # a grid queues its every point; a search first tries the config's own values
            start = the_space.start(cfg) if sweep.method != "grid" else None
            queued = the_space.grid() if sweep.method == "grid" else [start] if start is not None else []
            fingerprint = study.fingerprint(cfg, folds)
            opened = study.open_study(
                where, study_name, resume, report, fingerprint, doc.source, queued, options.started
            )
            the_study, created = opened
            if created and start is not None:
                the_study.set_user_attr(study.START_ATTR, 0)  # queued first, so numbered 0
                reporter.note("the first trial is the config's own values (the nearest point of the space)")
            keys = the_space.keys()

            def config_of(values: dict[str, Any]) -> Config:
                return space.trial_config(doc, base, overrides, values, name)[0]

            if report:
                rows, best_row, best_values, best_cfg = _results(
                    the_study, where, the_space, config_of, keys, out, reporter.note
                )
                chosen = _select(sweep, trainer, the_study, best_cfg, best_row, out, options, reporter)
                mix = chosen.as_json() if chosen is not None else None
                return Outcome(_best(best_row, best_values, out), len(rows), None, rows, keys, out, mix)
            # A sampler seeded as every other worker's would ask the same points again: only the
            # study's creator uses the config's seed (a fresh sweep repeats itself exactly).
            worker_seed = cfg.seed if created else _worker_seed(cfg.seed, the_study)
            the_study.sampler = _sampler(sweep.method, the_space, worker_seed)
            tracked.start(out, cfg, folds, options.resume, reporter.note)
            for row in worker.leaderboard(the_study, keys):  # finished before, if not yet logged
                tracked.trial(row["trial"], worker.swept(the_study, row["trial"], the_space), row)
            # Trials are asked in batches only when they can train side by side: trained one at
            # a time, each is told (and on the leaderboard) as soon as it ends.
            alone = _alone(the_space, config_of) if options.pack else None
            batch = PACK if options.pack and alone is None else 1
            if alone is not None:
                reporter.note(f"the sweep's trials train one at a time: {alone}")
            searcher = worker.Worker(the_study, where, the_space, n_trials, batch, sweep.heartbeat, out)
            # The time limit is the whole command's: the search leaves the refit its time.
            deadline = study.deadline(the_study, sweep.time_limit)
            trainer.budget.deadline = deadline
            trainer.budget.members = max(1, sweep.ensemble) if sweep.refit else 0
            # the refit's copies of each member side by side: its seeds, times its bags where
            # the config bags (a refit trains the bags `run` would)
            trainer.budget.bagged = ensemble.bags_kept(cfg)
            trainer.budget.copies = sweep.refit_seeds * (cfg.train.bags if trainer.budget.bagged else 1)
            searcher.budget = trainer.budget
            if sweep.ensemble and sweep.refit and folds >= 2 and trainer.budget.active:
                trainer.choose = ensemble.chooser(*trainer.targets(cfg), steps=sweep.ensemble)
            the_study.pruner, searcher.pruning = _pruner(sweep.pruner), sweep.pruner != "none"
            before = worker.finished(the_study.get_trials(deepcopy=False))
            plan = worker.Plan(n_trials, before, folds, batch, sweep.time_limit, deadline, out)
            trainer.watch = watch
            watch.begin(plan)
            searcher.search(trainer, keys, watch, tracked, reporter.note, resume, options.resume_command)
            trials = the_study.get_trials(deepcopy=False)
            cut = sum(1 for t in trials if (worker.result_of(t) or {}).get("status") == worker.CUT)
            watch.end(worker.finished(trials) - cut, cut)  # before the refit shows its own progress
            results = _results(the_study, where, the_space, config_of, keys, out, reporter.note)
            rows, best_row, best_values, best_cfg = results
            chosen = _select(sweep, trainer, the_study, best_cfg, best_row, out, options, reporter)
            members = {
                n: _member_config(the_study, n, the_space, config_of, out)
                for n in (chosen.counts if chosen else {})
            }
        checkpoint, logged = None, None
        refit_claim = f"{study_name}:refit-after-{n_trials}"
        if sweep.refit and storage.claim(where, refit_claim):
            try:
                if chosen is not None:  # the ensemble's members, into <sweep folder>/ensemble/
                    found = ensemble.refit(
                        members, chosen, out / ensemble.FOLDER, device, options.pack, reporter.note
                    )
                    checkpoint = str(found)
                    logged = functools.partial(_save_model, found)
                else:
                    refit_options = recipe.Options(
                        overwrite=True,
                        resume_command=f"mse-train run {out / 'best.yaml'} --resume",
                        overwrite_command=f"mse-train run {out / 'best.yaml'} --overwrite",
                        mlflow_tags=tracked.refit_tags(best_row["trial"]),
                    )
                    recipe.run(best_cfg, refit_options, reporter)
                    checkpoint = str(Path(str(best_cfg.output.dir)) / "best.pt")
            except BaseException:  # not refitted: `--resume` (or another worker) refits it
                storage.release(where, refit_claim)
                raise
        elif sweep.refit:
            refitted = (
                out / ensemble.FOLDER if chosen is not None else Path(str(best_cfg.output.dir))
            ) / "best.pt"
            reporter.note(
                f"the winner (trial {best_row['trial']}) is refitted already: {refitted}"
                if refitted.exists()
                else f"another worker of the study refits the winner (trial {best_row['trial']}); if "
                f"none does (one was killed during its refit): mse-train run {out / 'best.yaml'} --overwrite"
            )
        best = _best(best_row, best_values, out)
        tracked.finish(out, best, len(rows), logged)
        return Outcome(best, len(rows), checkpoint, rows, keys, out, chosen.as_json() if chosen else None)
    except BaseException as exc:  # the parent run ends FAILED or KILLED, not left RUNNING
        tracked.abort(exc)
        if _storage_failed(exc):  # the storage failed midway (locked, server gone)
            shown = storage.shown_url(spec) if spec else str(storage.default_file(out))
            raise storage.storage_error(exc, shown) from None
        raise
    finally:
        storage.close(where)


def _save_model(ckpt: Path, folder: Path) -> None:
    from mse_train.use import mlflow_model

    mlflow_model.save(ckpt, folder)


def _alone(the_space: space.Space, config_of: Callable[[dict[str, Any]], Config]) -> str | None:
    """Why no trial of the space can train in a stack (None when some can): then trials are
    asked one at a time, each told as soon as it ends. A trial's own settings count (a trial
    that sets optimizer.name: adam packs although the base config's L-BFGS does not)."""
    reasons = set()
    for values in itertools.islice(the_space.combinations(), space.GRID_LIMIT):
        reason = why_alone(config_of(values))
        if reason is None:
            return None
        reasons.add(reason)
    return "; ".join(sorted(reasons)) or None


def _storage_failed(exc: BaseException) -> bool:
    import sys

    import optuna

    # SQLAlchemy only when a database storage imported it: a journal file's sweep never does.
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    failures: tuple[type[BaseException], ...] = (optuna.exceptions.StorageInternalError,)
    if sqlalchemy_exc is not None:
        failures += (sqlalchemy_exc.SQLAlchemyError,)
    return isinstance(exc, failures)


def _results(
    the_study: Any,
    where: storage.Where,
    the_space: space.Space,
    config_of: Callable[[dict[str, Any]], Config],
    keys: list[str],
    out: Path,
    note: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], Config]:
    """leaderboard.csv, best.yaml and sweep.png from the study (any worker, or --report);
    best.yaml trains the winner as `run` would, so a bagged one bags."""
    rows = worker.leaderboard(the_study, keys)
    if not rows:
        raise OutputError(
            f"{where.shown}: study '{the_study.study_name}' has no finished trial yet",
            ["wait for its workers to finish one, or start one: the same command without --report"],
        )
    tables.write_rows(out / "leaderboard.csv", worker.columns(keys), rows)
    best_row = worker.winner(rows)
    if best_row is not None and best_row["status"] == worker.CUT:  # the time limit ended every trial
        note(
            f"no trial finished within sweep.time_limit; the best is trial {best_row['trial']}, "
            "cut short (a larger time_limit lets trials finish)"
        )
    if best_row is None and any(r["status"] == worker.CUT for r in rows):
        raise TrainingDiverged(
            f"sweep.time_limit ended every trial before it could be scored; see {out / 'leaderboard.csv'}",
            ["raise sweep.time_limit, or lower train.epochs or the rows per trial"],
        )
    if best_row is None:
        raise TrainingDiverged(
            f"every trial of the sweep diverged ({len(rows)}); see {out / 'leaderboard.csv'}",
            ["narrow the ranges (e.g. lower optimizer.lr) or set data.standardize: true"],
        )
    start = the_study.user_attrs.get(study.START_ATTR)
    if isinstance(start, int) and (said := _start_rank(rows, start, best_row)):
        note(said)
    best_values = _values_of(the_study, best_row["trial"], the_space)
    best_cfg = config_of(best_values)
    winner = worker.result_of(worker.trial_of(the_study, best_row["trial"])) or {}
    best_epochs = winner.get("best_epochs") or []
    bagged = ensemble.bags_kept(best_cfg)
    best_cfg = _refit_config(best_cfg, out, best_epochs, bagged)
    epochs_said = (
        f"for {best_cfg.train.epochs} epochs, the mean of the epochs its validated training kept as best "
        f"({', '.join(map(str, best_epochs))}), "
        if best_epochs
        else ""
    )
    how = (
        f"as {best_cfg.train.bags} bags (train.bags), each stopped on its own "
        f"data.val_fraction of the training rows, "
        if bagged
        else f"on all training rows (data.val_fraction: 0) {epochs_said}"
    )
    text = (
        f"# The best trial ({best_row['trial']}) of the sweep in {out}, score (validation MSE in "
        "target units) "
        f"{best_row['score_mean']:.6g}.\n# It trains {how}"
        f"into {best_cfg.output.dir}: mse-train run {out / 'best.yaml'}\n"
    )
    fsio.write_text(out / "best.yaml", text + loading.to_yaml(best_cfg))
    _plot(out / "sweep.png", rows, the_space.flat(), best_row["trial"])  # ranges: log axes
    return rows, best_row, best_values, best_cfg


def _best(best_row: dict[str, Any], best_values: dict[str, Any], out: Path) -> dict[str, Any]:
    return {
        "trial": best_row["trial"],
        "params": {k: v for k, v in best_values.items() if best_row.get(k) is not None},
        "score": best_row["score_mean"],
        "config": str(out / "best.yaml"),
    }


def _select(
    sweep: SweepConfig,
    trainer: worker.Trainer,
    the_study: Any,
    best_cfg: Config,
    best_row: dict[str, Any],
    out: Path,
    options: Options,
    reporter: recipe.Reporter,
) -> ensemble.Selection | None:
    """With `sweep.ensemble`: the greedy selection over the trials' out-of-fold predictions,
    written to ensemble.json in the sweep folder; with `sweep.refit_seeds` alone, the winner."""
    if not sweep.ensemble and sweep.refit_seeds == 1:
        return None
    if not sweep.ensemble and trainer.folds < 2:  # no out-of-fold predictions: no residuals
        return ensemble.winner(best_row["trial"], best_row["score_mean"], sweep.refit_seeds)
    y_true, w = trainer.targets(best_cfg)
    off = "sweep.ensemble: 0" if sweep.ensemble else "sweep.refit_seeds: 1"
    fix = f"or set {off}; then: {options.resume_command.replace(' --resume', ' --report')}"
    chosen = ensemble.select(
        the_study,
        out,
        y_true,
        sweep.ensemble,
        best_row["trial"],
        fix,
        reporter.note,
        w,
        sweep.refit_seeds,
    )
    if chosen is not None:
        ensemble.write_report(out, chosen)
    return chosen


def _member_config(
    the_study: Any,
    number: int,
    the_space: space.Space,
    config_of: Callable[[dict[str, Any]], Config],
    out: Path,
) -> Config:
    """Trial `number` as the ensemble's refit trains it (as best.yaml trains the winner:
    a bagged config as its bags)."""
    found = worker.result_of(worker.trial_of(the_study, number)) or {}
    cfg = config_of(_values_of(the_study, number, the_space))
    cfg = _refit_config(cfg, out, found.get("best_epochs") or [], ensemble.bags_kept(cfg))
    cfg.output.dir = str(out / ensemble.FOLDER)
    return cfg


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


def _holds_out(the_space: space.Space) -> bool:
    """Every trial holds validation rows out: the sweep sets `data.val_fraction` above 0
    (as init's sweep of a linear starter does, which trains on every row itself)."""
    swept = the_space.flat().get("data.val_fraction")
    if isinstance(swept, list):
        return bool(swept) and all(isinstance(v, int | float) and v > 0 for v in swept)
    return swept is not None and swept.low > 0


def _values_of(the_study: Any, number: int, the_space: space.Space) -> dict[str, Any]:
    return the_space.decode(worker.trial_of(the_study, number).params)


def _refit_config(cfg: Config, out: Path, best_epochs: list[int], bagged: bool = False) -> Config:
    """The winner on all training rows: `bagged`, as its `train.bags` bags, each stopped on
    its own validation rows; else as one model. With no validation rows left to choose an
    epoch or stop early, that one trains for as many epochs as its validated trainings kept
    as best (their mean over the folds: each fold saw (k-1)/k of the rows, and an epoch is a
    pass over the rows, so the refit's more rows already take more steps per epoch)."""
    cfg = cfg.model_copy(deep=True)
    cfg.output.dir = str(out / "best")
    if bagged:
        return cfg
    cfg.data.val_fraction = 0.0
    cfg.train.bags = 1  # no validation rows to bag with: `sweep.refit_seeds` averages the refit
    if best_epochs:
        cfg.train.epochs = max(1, round(sum(best_epochs) / len(best_epochs)))
    return cfg


def _start_rank(rows: list[dict[str, Any]], start: int, best: dict[str, Any]) -> str:
    """Where the trial of the config's own values ranks among the finished ones ('' if it
    did not finish)."""
    done = worker.finished_best_first(rows)
    rank = next((i for i, r in enumerate(done, start=1) if r["trial"] == start), None)
    if rank is None:
        return ""
    mine = float(done[rank - 1]["score_mean"])
    if rank == 1:
        return f"trial {start}, the config's own values, scored best ({mine:.6g})"
    return (
        f"trial {start}, the config's own values, ranked {rank} of {len(done)} finished trials "
        f"(score {mine:.6g}; the best, trial {best['trial']}, {float(best['score_mean']):.6g})"
    )


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


def _pruner(name: str) -> Any:
    import optuna

    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,  # below the median of earlier trials at that epoch
        "halving": optuna.pruners.SuccessiveHalvingPruner,  # asynchronous successive halving
    }
    return pruners[name]()


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial and warns about experimental features: mse-train reports itself."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # mse-train records the heartbeats of its asked trials itself (storage.Heartbeats)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def _plot(path: Path, rows: list[dict[str, Any]], keys: dict[str, Any], best: int) -> None:
    from mse_train.outputs import plots

    plots.write_sweep_plot(path, rows, keys, best)
