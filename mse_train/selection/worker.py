"""One worker of a sweep: asks the study for trials, trains them, tells their scores.

Trials that share a pack key train side by side (selection/fit.py); each trial's folds
(or its holdout) are its jobs. The leaderboard is one row per finished trial of the
study, whichever worker ran it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np
import torch

from mse_train.config import yamlio
from mse_train.config.schema import Config
from mse_train.data import prepare
from mse_train.errors import ConfigError, TrainingInterrupted, UserError
from mse_train.outputs import mlflow_log, mlflow_sweep, tables
from mse_train.selection import budget, cv, oof, space, storage
from mse_train.selection.fit import CUT_REASON, Scored, train_and_score, train_and_score_packed
from mse_train.training import apart, signals
from mse_train.training.records import Status
from mse_train.training.stack import pack_key

RESULT = "mse_train_result"  # user attr of a finished trial: its scores, epochs, status
CUT = "cut"  # a finished trial's status when sweep.time_limit stopped it (fit.CUT_REASON)
RETRY_OF = "mse_train_retry_of"  # user attr of a trial queued again after an interrupt
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Plan:
    """What a sweep worker is about to do, for its start line."""

    trials: int  # the study's budget of trials
    done: int  # finished before (a resume, or other workers)
    folds: int  # 0: each trial scored on its validation rows
    batch: int  # trials asked at once; those of one shape train as one pack
    time_limit: float | None  # sweep.time_limit
    deadline: float | None  # when it is up (epoch seconds), shared by the study's workers
    folder: Path


class Watch(Protocol):
    """Receives a sweep's progress as it happens; the CLI shows it (cli/console.py)."""

    def begin(self, plan: Plan) -> None: ...
    def pack(self, trials: int, models: int, epochs: int, processes: int = 1) -> None: ...
    def epoch(self, epoch: int, epochs: int, training: int, models: int) -> None: ...
    def trial(self, done: int, total: int, row: dict[str, Any]) -> None: ...
    def end(self, finished: int, cut: int) -> None: ...


class Unwatched:
    """A Watch that shows nothing, but for `on_trial(done, total, row)` after each trial
    when given (the Python API's `mse_train.sweep(on_trial=...)`)."""

    def __init__(self, on_trial: Callable[[int, int, dict[str, Any]], None] | None = None) -> None:
        self.on_trial = on_trial

    def begin(self, plan: Plan) -> None:
        pass

    def pack(self, trials: int, models: int, epochs: int, processes: int = 1) -> None:
        pass

    def epoch(self, epoch: int, epochs: int, training: int, models: int) -> None:
        pass

    def trial(self, done: int, total: int, row: dict[str, Any]) -> None:
        if self.on_trial is not None:
            self.on_trial(done, total, row)

    def end(self, finished: int, cut: int) -> None:
        pass


class _Told(Unwatched):
    """A job's watch in a child of `Trainer._apart`: each epoch's end told to the command."""

    def epoch(self, epoch: int, epochs: int, training: int, models: int) -> None:
        apart.tell(epoch)


class Worker:
    """Asks for trials while the study needs them, trains them, tells their scores.

    The study's budget is shared: trials finished, running (in any worker) and queued count
    against `n_trials`, in trial-number order, so workers that ask at once never overshoot
    it: a trial asked beyond it is told failed, with a `surplus` attr, and not trained.
    """

    def __init__(
        self,
        the_study: Any,
        where: storage.Where,
        the_space: space.Space,
        n_trials: int,
        batch: int,
        heartbeat: int,
        out: Path,
    ) -> None:
        self.pruning = False  # report each epoch's loss to the study's pruner (sweep.pruner)
        self.budget = budget.Budget(None)  # sweep.time_limit: when the search leaves the rest to the refit
        self.study, self.where, self.space = the_study, where, the_space
        self.n_trials, self.batch, self.heartbeat = n_trials, batch, heartbeat
        self.out = out
        self.resume, self.resume_command = False, ""
        self.grid = the_space.method == "grid"
        self.note: Callable[[str], None] = lambda text: None

    def search(
        self,
        trainer: Trainer,
        keys: list[str],
        watch: Watch,
        tracked: mlflow_sweep.Tracked,
        note: Callable[[str], None],
        resume: bool,
        resume_command: str,
    ) -> None:
        """Until the study has its trials: ask, train, tell; then return (Ctrl-C: raises
        TrainingInterrupted with its trials in flight queued again)."""
        import optuna
        from optuna.trial import TrialState

        self.resume, self.resume_command = resume, resume_command
        self.note = note

        beats = storage.Heartbeats(self.where.storage, self.heartbeat)
        waited = False
        try:
            with signals.on_signals() as stop:
                while True:
                    if stop.requested():
                        interrupted(self.out, self.study, self.resume_command)
                    optuna.storages.fail_stale_trials(self.study)  # a dead worker's trials run again
                    trials = self.study.get_trials(deepcopy=False)
                    up, busy = self._time_up(), any(t.state == TrialState.RUNNING for t in trials)
                    cut = sum(1 for t in trials if (result_of(t) or {}).get("status") == CUT)
                    ended = finished(trials) >= self.n_trials and not busy
                    if (up and not busy) or (ended and cut):  # the time limit ended the search
                        note(
                            f"sweep.time_limit reached: {finished(trials) - cut} of {self.n_trials} "
                            f"trials finished"
                            + (f", {cut} cut short (status `cut`)" if cut else "")
                            + f"; {max(0.0, self.budget.left()):.0f} s left for the refit "
                            f"(it needs about {self.budget.reserve():.0f} s)"
                        )
                        return
                    if finished(trials) >= self.n_trials:
                        return
                    if up:
                        time.sleep(min(2.0, self.heartbeat))  # packs in flight elsewhere are cut, then told
                        continue
                    if self.grid:
                        self._top_up_grid(trials)
                        trials = self.study.get_trials(deepcopy=False)
                    size = min(self.batch, self._askable(trials))
                    if size <= 0:  # the rest are in flight in other workers: one of them may die
                        if not waited:
                            running = sum(1 for t in trials if t.state == TrialState.RUNNING)
                            note(
                                f"waiting for {running} trial(s) in flight in other workers (those of a "
                                f"worker that stopped run again after {storage.MISSED * self.heartbeat} s "
                                "without its heartbeat)"
                            )
                            waited = True
                        time.sleep(min(2.0, self.heartbeat))
                        continue
                    asked = [self.study.ask() for _ in range(size)]
                    for trial in asked:
                        self.space.suggest(trial)
                    beats.track([t._trial_id for t in asked])
                    for trial in asked:  # which worker ran it, in the leaderboard's study and the dashboard
                        trial.set_user_attr("worker", WORKER)
                    mine = self._within_budget(asked)
                    if mine:
                        self._train(mine, trainer, keys, watch, tracked, stop.requested)
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
        trainer: Trainer,
        keys: list[str],
        watch: Watch,
        tracked: mlflow_sweep.Tracked,
        should_stop: Callable[[], bool],
    ) -> None:
        try:
            asked = trials if self.pruning else None
            values = [self.space.decode(t.params) for t in trials]
            results = trainer.score(values, should_stop, asked, self._time_up)
        except UserError:  # a trial's data does not work: the sweep stops here
            self._queue_again(trials)
            nobody = finished(self.study.get_trials(deepcopy=False)) == 0
            if nobody and self.where.default and not self.resume:
                _discard(self.out)  # nothing finished: leave no sweep behind to resume
            raise
        if results is None:  # interrupted: the trials run again, from their start
            self._queue_again(trials)
            interrupted(self.out, self.study, self.resume_command)
        told = []
        for trial, (scored, dropped) in zip(trials, results, strict=True):
            kept = None
            if scored.predictions is not None and scored.status in (Status.COMPLETED, Status.EARLY_STOPPED):
                kept = oof.write(
                    self.out, self.study.study_name, trial.number, scored.predictions, scored.data
                )
            if _tell(self.study, trial, scored, dropped, kept):
                told.append(trial)
            else:
                self.note(
                    f"trial {trial.number}: another worker gave it up (no heartbeat from this one for "
                    f"{storage.MISSED * self.heartbeat} s: a busy machine?) and runs it again; this "
                    "worker's result for it is dropped (a larger sweep.heartbeat avoids it)"
                )
        # Read once per pack (the study's every trial, whoever ran it), not once per trial.
        rows = leaderboard(self.study, keys)
        tables.write_rows(self.out / "leaderboard.csv", columns(keys), rows)
        by_number = {r["trial"]: r for r in rows}
        done = len(rows) - len(told)
        for trial in told:
            done += 1
            watch.trial(done, self.n_trials, by_number[trial.number])
            tracked.trial(trial.number, swept(self.study, trial.number, self.space), by_number[trial.number])
        if self.budget.active:  # the refit the search must leave time for: the winner's so far
            top = winner(rows)
            found = result_of(trial_of(self.study, top["trial"])) if top is not None else None
            if top is not None and found is not None:
                params = self.space.decode(trial_of(self.study, top["trial"]).params)
                self.budget.best = trainer.refit_seconds(params, found.get("best_epochs") or [])
            self.budget.live = 0.0

    def _time_up(self) -> bool:
        """Only the refit's time is left of sweep.time_limit: packs in flight stop and tell what
        they have, and no trial is asked."""
        return self.budget.time_up()

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
        if result_of(t) is None and t.state not in (TrialState.RUNNING, TrialState.WAITING):
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


class Trainer:
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
        self._rows: dict[str, int] = {}  # by `data:` section: the rows a refit trains on
        self.watch: Watch = Unwatched()  # told when a pack starts and as its epochs end
        self.budget = budget.Budget(None)  # with sweep.time_limit: what a refit would cost
        # With sweep.ensemble under a time limit: the trials greedy selection would choose
        # among {index in `_pool`: out-of-fold predictions}, and the pool of this worker's
        # trials scored so far (data key, score, predictions, refit seconds), which
        # `budget.chosen` is kept from as each pack ends.
        self.choose: Callable[[dict[int, np.ndarray]], list[int]] | None = None
        self._pool: list[tuple[str, float, np.ndarray, float]] = []

    def refit_seconds(self, values: dict[str, Any], best_epochs: list[int]) -> float:
        """The training time of a trial's refit (as sweep._refit_config sets it: the mean of
        its best epochs, on every training row; or bags, with `budget.bagged`, each on its
        share of the rows for those epochs and its patience's), by the probe of its shape."""
        cfg = space.trial_config(self.doc, self.base, self.overrides, values, self.name)[0]
        epochs = max(1, round(sum(best_epochs) / len(best_epochs))) if best_epochs else cfg.train.epochs
        rows = self._rows.get(_data_key(cfg), 0)
        if self.budget.bagged and cfg.data.val_fraction > 0:
            stop = cfg.train.early_stopping
            epochs = min(cfg.train.epochs, epochs + (stop.patience if stop else cfg.train.epochs))
            rows = round(rows * (1 - cfg.data.val_fraction))
        return self.budget.refit_seconds(budget.shape_key(cfg), rows, epochs)

    def _probe(self, jobs: list[tuple[int, Config, prepare.Prepared, prepare.Held]]) -> None:
        """Time each shape of `jobs` trained alone (or its refit's seeds together), once per
        sweep (with sweep.time_limit)."""
        for _, cfg, prepared, _ in jobs:
            key = budget.shape_key(cfg)
            if key not in self.budget.per_row:
                self.budget.per_row[key] = budget.seconds_per_row(
                    cfg, prepared, self.device, self.budget.copies, self.pack
                )

    def _live(
        self, jobs: list[tuple[int, Config, prepare.Prepared, prepare.Held]]
    ) -> Callable[[int, dict[int, float]], None]:
        """Called as the epochs of a pack (model i: `jobs[i]`) end, with each model's watched
        loss: the refit of any of its trials, for the best epoch it has reached, is what the
        search must leave time for should it stop now."""
        costs = [(budget.shape_key(cfg), self._rows.get(_data_key(cfg), 0)) for _, cfg, _, _ in jobs]
        lowest: dict[int, float] = {}
        best: dict[int, int] = {}

        def at(epoch: int, losses: dict[int, float]) -> None:
            for i, loss in losses.items():
                if math.isfinite(loss) and loss < lowest.get(i, math.inf):
                    lowest[i], best[i] = loss, epoch
            most = max((self.budget.refit_seconds(*costs[i], e) for i, e in best.items()), default=0.0)
            self.budget.live = max(self.budget.live, most)

        return at

    def targets(self, cfg: Config) -> tuple[np.ndarray, np.ndarray | None]:
        """The training rows' targets ([rows, targets], float64) and sample weights (None
        without `data.weight`): what out-of-fold predictions are scored against."""
        loaded = self.load(cfg)
        return loaded.table.frame[loaded.targets].to_numpy(dtype=np.float64), loaded.weights()

    def load(self, cfg: Config) -> prepare.Loaded:
        """The training table of `cfg`'s data section, read once per distinct section."""
        key = _data_key(cfg)
        if key not in self._loaded:
            started = time.perf_counter()
            self._loaded[key] = prepare.load_training(cfg.data, cfg.targets)
            self._read(time.perf_counter() - started)
        return self._loaded[key]

    def _read(self, seconds: float) -> None:
        """A refit reads its table again: the longest read so far is its estimate."""
        self.budget.read_seconds = max(self.budget.read_seconds, seconds)

    def score(
        self,
        trials: list[dict[str, Any]],
        should_stop: Callable[[], bool],
        asked: list[Any] | None = None,
        cut: Callable[[], bool] = lambda: False,
    ) -> list[tuple[Scored, list[str]]] | None:
        """Each trial's score (and dropped keys); None when asked to stop.

        Jobs (a trial's folds, or its holdout) that share a pack key train side by side.
        `asked`: the Optuna trials, to report each epoch's validation loss to for pruning.
        `cut`: true once the sweep's time is up: jobs training stop, scored as they are (cut).
        """
        jobs: list[tuple[int, Config, prepare.Prepared, prepare.Held]] = []
        dropped_of, configs = [], []
        for number, values in enumerate(trials):
            try:
                cfg, dropped = space.trial_config(self.doc, self.base, self.overrides, values, self.name)
                splits = self._splits(cfg, values)
            except UserError as exc:
                shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                exc.problems.append(f"in the sweep's trial with {shown}; nothing of it was trained")
                raise
            dropped_of.append(dropped)
            configs.append(cfg)
            jobs += [(number, cfg, prepared, held) for prepared, held in splits]
        groups: dict[str | None, list[int]] = {}
        for index, (_, cfg, _, _) in enumerate(jobs):
            key = pack_key(cfg) if self.pack else None
            groups.setdefault(key, []).append(index)
        scores: dict[int, Scored] = {}
        pooled: set[int] = set()
        for key, members in groups.items():
            self._choose(trials, configs, jobs, scores, pooled)  # from the packs ended so far
            if cut():  # the time is up before this pack started: its trials are cut untrained
                why = f"{CUT_REASON} (before it started)"
                unstarted = Scored(Status.PRUNED, 0, 0.0, reason=why, cut=True)
                scores.update((i, unstarted) for i in members)
                continue
            numbers = [jobs[i][0] for i in members]
            epochs = jobs[members[0]][1].train.epochs
            if self.budget.active:
                self._probe([jobs[i] for i in members])
            if key is not None and len(members) > 1:
                self.watch.pack(len(set(numbers)), len(members), epochs)
                live = self._live([jobs[i] for i in members]) if self.budget.active else None
                judge = _watched(_judge(numbers, asked), self.watch, epochs, len(members), live)
                pack = [jobs[i][1:] for i in members]
                together = train_and_score_packed(pack, self.device, should_stop, judge, cut)
                if together is None:
                    return None
                scores.update(zip(members, together, strict=True))
                continue
            apart_jobs = [jobs[i] for i in members]
            processes = self._processes(apart_jobs, asked)
            if processes > 1:
                self.watch.pack(len(set(numbers)), len(members), epochs, processes)
                scored_apart = self._apart(apart_jobs, processes, should_stop, cut)
                if scored_apart is None:
                    return None
                scores.update(zip(members, scored_apart, strict=True))
                continue
            for i in members:
                number, cfg, prepared, held = jobs[i]
                self.watch.pack(1, 1, cfg.train.epochs)
                pruner = _judge([number], asked) if self.folds == 0 else None  # a fold alone: no curve
                live = self._live([jobs[i]]) if self.budget.active else None
                judge = _watched(pruner, self.watch, cfg.train.epochs, 1, live)
                scored = train_and_score(cfg, prepared, held, self.device, should_stop, self.pack, judge, cut)
                if scored.status is Status.INTERRUPTED:
                    return None
                scores[i] = scored
        self._choose(trials, configs, jobs, scores, pooled)
        out = []
        for number, dropped in enumerate(dropped_of):
            parts = [scores[i] for i, job in enumerate(jobs) if job[0] == number]
            combined = _combine(parts)
            combined.data = oof.data_key(configs[number])
            out.append((combined, dropped))
        return out

    def _choose(
        self,
        trials: list[dict[str, Any]],
        configs: list[Config],
        jobs: list[tuple[int, Config, prepare.Prepared, prepare.Held]],
        scores: dict[int, Scored],
        pooled: set[int],
    ) -> None:
        """With an ensemble under a time limit: the trials of this batch whose every split has
        been scored (and not yet `pooled`) join the pool, and `budget.chosen` becomes the
        refit time of what the selection chooses from it now (among the trials of the best
        one's data), so a pack that starts next leaves that time free."""
        if self.choose is None:
            return
        for number, values in enumerate(trials):
            parts = [scores.get(i) for i, job in enumerate(jobs) if job[0] == number]
            if number in pooled or None in parts:
                continue
            pooled.add(number)
            combined = _combine([p for p in parts if p is not None])
            finished = combined.status in (Status.COMPLETED, Status.EARLY_STOPPED) and not combined.cut
            if finished and combined.predictions is not None and combined.overall is not None:
                seconds = self.refit_seconds(values, combined.best_epochs)
                data = oof.data_key(configs[number])
                self._pool.append((data, combined.overall["mse"], combined.predictions, seconds))
                # as the final selection: only the best that fit in its memory take part
                fits = oof.room(*combined.predictions.shape)
                if len(self._pool) > fits:
                    self._pool.remove(max(self._pool, key=lambda entry: entry[1]))
        if self._pool:
            data = min(self._pool, key=lambda entry: entry[1])[0]
            kin = [entry for entry in self._pool if entry[0] == data]
            chosen = self.choose({i: entry[2] for i, entry in enumerate(kin)})
            self.budget.chosen = sum((kin[i][3] for i in chosen), 0.0)  # refit one after another

    def _processes(self, group: list[tuple[int, Config, prepare.Prepared, prepare.Held]], asked: Any) -> int:
        """How many processes train `group`, jobs that do not pack (TabM, dropout, L-BFGS)
        side by side (training/apart.py): each a fold of its trial, with no pruner to report
        its epochs to from there; one at a time under `--no-pack`, as that option says."""
        if not self.pack or len(group) < 2 or (asked is not None and self.folds < 2):
            return 1
        return apart.workers(group[0][1].train.processes, len(group), self.device)  # the base config's

    def _apart(
        self,
        group: list[tuple[int, Config, prepare.Prepared, prepare.Held]],
        processes: int,
        should_stop: Callable[[], bool],
        cut: Callable[[], bool],
    ) -> list[Scored] | None:
        """`group` trained in `processes` processes side by side, each job as one at a time
        trains it; None when asked to stop. A child keeps its own copy of the budget, told of
        its own epochs: it is cut as its job alone would be. Each job's progress is told to
        the command as its epochs end."""
        models = len(group)

        def train(n: int) -> Scored:  # in a child
            _, cfg, prepared, held = group[n]
            live = self._live([group[n]]) if self.budget.active else None
            judge = _watched(None, _Told(), cfg.train.epochs, 1, live)
            return train_and_score(cfg, prepared, held, self.device, should_stop, self.pack, judge, cut)

        training: dict[int, int] = {}  # job -> its latest epoch, while it trains

        def heard(n: int, epoch: int) -> None:
            training[n] = epoch
            self.watch.epoch(max(training.values()), group[n][1].train.epochs, len(training), models)

        out: list[Scored] = []
        with contextlib.closing(apart.map(train, models, processes, should_stop, heard)) as trained:
            for n, scored in enumerate(trained):
                training.pop(n, None)
                if scored.status is Status.INTERRUPTED:
                    return None
                out.append(scored)
        return out if len(out) == models else None

    def _splits(self, cfg: Config, values: dict[str, Any]) -> list[tuple[prepare.Prepared, prepare.Held]]:
        if self.folds >= 2:
            splits = cv.fold_splits(self.load(cfg), cfg, self.folds)
            self._rows[_data_key(cfg)] = len(splits[0][0].train) + len(splits[0][1].split)
            return splits
        key = json.dumps([cfg.data.model_dump(mode="json"), cfg.seed], sort_keys=True)
        if key not in self._prepared:  # trials that do not change `data:` share one read
            started = time.perf_counter()
            self._prepared[key] = prepare.prepare(cfg.data, cfg.targets, cfg.seed)
            self._read(time.perf_counter() - started)
        prepared = self._prepared[key]
        rows = len(prepared.train) + (len(prepared.val) if prepared.val is not None else 0)
        self._rows[_data_key(cfg)] = rows
        if prepared.val is None:
            raise ConfigError(
                f"{self.doc.source}: a trial with {values} has no validation rows to be scored on",
                ["set `sweep.folds: 5`, or keep `data.val_fraction` above 0 in every trial"],
            )
        y_true = prepared.pre.unscale_targets(prepared.val.y).astype(np.float64)
        return [(prepared, prepare.Held(prepared.val, y_true))]


def _data_key(cfg: Config) -> str:
    return json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)


def _judge(numbers: list[int], asked: list[Any] | None) -> Callable[[int, dict[int, float]], set[int]] | None:
    """For a pack whose model i is a fold (or the holdout) of trial `numbers[i]`: report each
    trial's epoch loss (the mean over its folds still training) to Optuna, and name the
    models of the trials its pruner stops."""
    if asked is None:
        return None

    def judge(epoch: int, losses: dict[int, float]) -> set[int]:
        pruned: set[int] = set()
        for number in sorted({numbers[i] for i in losses}):
            mine = [i for i in losses if numbers[i] == number]
            asked[number].report(sum(losses[i] for i in mine) / len(mine), epoch)
            if asked[number].should_prune():
                pruned |= {i for i, n in enumerate(numbers) if n == number}
        return pruned

    return judge


def _watched(
    judge: Callable[[int, dict[int, float]], set[int]] | None,
    watch: Watch,
    epochs: int,
    models: int,
    live: Callable[[int, dict[int, float]], None] | None = None,
) -> Callable[[int, dict[int, float]], set[int]]:
    """The loop's per-epoch call (`Loop.judge`): the pruner's, if any, then the watch told the
    pack's epoch and how many of its models still train (and `live`, the budget, the epoch)."""

    def judged(epoch: int, losses: dict[int, float]) -> set[int]:
        pruned = judge(epoch, losses) if judge is not None else set()
        watch.epoch(epoch, epochs, len(set(losses) - pruned), models)
        if live is not None:
            live(epoch, losses)
        return pruned

    return judged


def _combine(parts: list[Scored]) -> Scored:
    """One trial's score from its folds (or its one holdout): the mean, and the std over folds."""
    epochs, seconds = sum(p.epochs for p in parts), sum(p.seconds for p in parts)
    failed = next((p for p in parts if p.overall is None), None)
    if failed is not None:
        return Scored(failed.status, epochs, seconds, reason=failed.reason, cut=failed.cut)
    rows = [p.overall for p in parts if p.overall is not None]
    stats = cv.mean_std(rows)
    overall: dict[str, Any] = {m: stats[m]["mean"] for m in cv.METRICS}
    overall["score_std"] = stats["mse"]["std"] if len(parts) > 1 else None
    overall["n"] = sum(r["n"] for r in rows)
    status = (
        Status.PRUNED
        if any(p.status is Status.PRUNED for p in parts)
        else Status.EARLY_STOPPED
        if all(p.status is Status.EARLY_STOPPED for p in parts)
        else Status.COMPLETED
    )
    best_epochs = [e for p in parts for e in p.best_epochs]
    held = [(p.rows, p.predictions) for p in parts if p.rows is not None and p.predictions is not None]
    predictions = oof.combine(held) if len(parts) > 1 and len(held) == len(parts) else None
    cut = next((p for p in parts if p.cut), None)  # one fold cut by the time limit: the trial is
    why = cut.reason if cut is not None else ""
    return Scored(
        status,
        epochs,
        seconds,
        overall,
        best_epochs=best_epochs,
        reason=why,
        predictions=predictions,
        cut=cut is not None,
    )


def _tell(
    study: Any, trial: Any, scored: Scored, dropped: list[str], kept: dict[str, Any] | None = None
) -> bool:
    """The score, and everything the leaderboard shows, in one user attr: one write
    (`kept`: the record of its out-of-fold predictions' file, oof.py). False when the trial
    is no longer this worker's to tell: another worker failed it as stale (its heartbeat was
    late, optuna's fail_stale_trials) and queued it again, and the storage refuses the write."""
    import optuna

    try:
        _tell_once(study, trial, scored, dropped, kept)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        if trial_of(study, trial.number).state == optuna.trial.TrialState.RUNNING:
            raise  # another problem than a trial given up
        return False
    return True


def _tell_once(
    study: Any, trial: Any, scored: Scored, dropped: list[str], kept: dict[str, Any] | None
) -> None:
    result: dict[str, Any] = {
        "dropped": dropped,
        "epochs": scored.epochs,
        "seconds": scored.seconds,
        "best_epochs": scored.best_epochs,
    }
    if kept is not None:
        result[oof.KEY] = kept
    if scored.cut:  # PRUNED, as a pruner's: stopped by a decision, its curve real, not a finished point
        from optuna.trial import TrialState

        got = {**result, **(scored.overall or {}), "status": CUT, "reason": scored.reason}
        trial.set_user_attr(RESULT, got)
        study.tell(trial, state=TrialState.PRUNED)
        return
    if scored.overall is None:
        trial.set_user_attr(RESULT, {**result, "status": "diverged", "reason": scored.reason})
        study.tell(trial, state=_failed())
        return
    trial.set_user_attr(RESULT, {**result, **scored.overall, "status": scored.status.value})
    if scored.status is Status.PRUNED:  # scored on its best epoch so far, but not a finished search point
        from optuna.trial import TrialState

        study.tell(trial, state=TrialState.PRUNED)
        return
    study.tell(trial, scored.overall["mse"])


def winner(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The leaderboard row the refit trains: the best finished trial, or, when the time limit
    cut every trial, the best of those cut (None: no trial scored)."""
    done = finished_best_first(rows)
    if not done:
        done = [r for r in rows if r["status"] == CUT and r["score_mean"] is not None]
    return min(done, key=lambda r: float(r["score_mean"])) if done else None


def finished_best_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leaderboard rows of trials that finished (not diverged, pruned or cut), best first."""
    done = [r for r in rows if r["status"] not in ("diverged", "pruned", CUT)]
    return sorted(done, key=lambda r: float(r["score_mean"]))


def result_of(trial: Any) -> dict[str, Any] | None:
    """A finished trial's result (None while it runs, or when it was interrupted); the
    separate attrs of sweeps written before mse-train kept them in one."""
    attrs = trial.user_attrs
    found = attrs.get(RESULT)
    if isinstance(found, dict):
        from optuna.trial import TrialState

        if trial.state == TrialState.FAIL and found.get("status") != "diverged":
            return None  # given up by another worker between its result's write and its tell
        return found
    return attrs if attrs.get("status") is not None else None


def columns(keys: list[str]) -> list[str]:
    return ["trial", *keys, "score_mean", "score_std", "rmse", "mae", "r2", "epochs", "seconds", "status"]


def leaderboard(study: Any, keys: list[str]) -> list[dict[str, Any]]:
    """One row per finished trial, in trial order; a dropped key is an empty cell."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = result_of(trial)
        if attrs is None:
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


def trial_of(the_study: Any, number: int) -> Any:
    return next(t for t in the_study.get_trials(deepcopy=False) if t.number == number)


def swept(the_study: Any, number: int, the_space: space.Space) -> dict[str, Any]:
    """A trial's swept values, without the keys its choices made inapplicable."""
    trial = trial_of(the_study, number)
    dropped = set((result_of(trial) or {}).get("dropped", []))
    return {k: v for k, v in the_space.decode(trial.params).items() if k not in dropped}


def _discard(out: Path) -> None:
    """Remove a sweep that never finished a trial, so that the same command can start again."""
    for name in (storage.DEFAULT_FILE, "leaderboard.csv", mlflow_log.RECORD):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def finished(trials: list[Any]) -> int:
    return sum(1 for t in trials if result_of(t) is not None)


def _failed() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL


def interrupted(out: Path, the_study: Any, resume_command: str) -> NoReturn:
    done = finished(the_study.get_trials(deepcopy=False))
    raise TrainingInterrupted(
        f"sweep interrupted after {done} finished trial(s); its trials in flight are queued to run "
        f"again. {out / 'leaderboard.csv'} holds the finished ones and the study the search",
        [f"continue with: {resume_command}"],
    )
