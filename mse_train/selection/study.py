"""A sweep's study: opened or created, and what its workers must agree on.

The study records the config its workers run (data files by their sha256, as `run --resume`
compares them), so a worker or a resume with other settings or data is refused, naming
what differs. The sweep folder's own study file (sweep.journal; sweep.db in a folder made
before) starts only without --resume / --report; a named storage's study is created by its
first worker and joined by the others.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from mse_train.config.schema import Config
from mse_train.data.digest import Digest
from mse_train.errors import ConfigError, OutputError
from mse_train.outputs import resume
from mse_train.selection import storage, worker
from mse_train.selection.storage import Where

CONFIG_ATTR = "mse_train_config"  # the config every worker must run, data files as sha256
START_ATTR = "mse_train_start"  # the number of the trial queued with the config's own values
STARTED_ATTR = "mse_train_started"  # when its first worker's command began (epoch seconds): sweep.time_limit
# Where results go, which device trains and how workers meet: may differ between workers.
_LOCAL = {"output.dir", "output.mlflow", "output.mlflow_experiment", "output.plot", "data.cache",
          "train.device", "sweep.trials", "sweep.storage", "sweep.study", "sweep.heartbeat",
          "sweep.time_limit", "sweep.ensemble"}  # fmt: skip
_DATA_ROLES = ("train", "val")


def fingerprint(cfg: Config, folds: int) -> dict[str, Any]:
    """What every worker (and a resume) must share: the config with data files by content."""
    data = cfg.model_dump(mode="json")
    assert data["sweep"] is not None
    data["sweep"]["folds"] = folds
    for role in _DATA_ROLES:
        path = data["data"].get(role)
        data["data"][role] = None if path is None else {"sha256": Digest(Path(path)).result(), "path": path}
    return data


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the study's fingerprint and this worker's, one line per key."""
    skip = _LOCAL | {f"data.{role}" for role in _DATA_ROLES}
    changes = resume.config_changes(recorded, now, skip, "study")
    for role in _DATA_ROLES:
        old, new = (recorded.get("data", {}).get(role), now["data"].get(role))
        if (old is None) != (new is None):
            changes.append(f"data.{role}: {_path(old)} in the study, {_path(new)} now")
        elif old is not None and old.get("sha256") != new.get("sha256"):
            changes.append(
                f"data.{role}: {new['path']} holds other data than the study's workers train on "
                f"({old['path']} when it started; their sha256 differ)"
            )
    return changes


def _path(entry: dict[str, Any] | None) -> str:
    return "none" if entry is None else repr(entry.get("path"))


def check_fingerprint(study: Any, now: dict[str, Any], where: Where, source: str) -> None:
    """Refuse a worker whose config or data differs from the study's, naming what differs."""
    recorded = study.user_attrs.get(CONFIG_ATTR)
    for _ in range(50):  # a study created a moment ago: its creator records the config next
        if recorded is not None or study.get_trials(deepcopy=False):
            break
        time.sleep(0.1)
        recorded = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"{where.shown}: study '{study.study_name}' records no mse-train config (another "
            "program's study, or one from an older mse-train), so this sweep cannot join it",
            ["name another study with --study, or another storage"],
        )
    changes = differences(recorded, now)
    if changes:
        raise ConfigError(
            f"{source}: this sweep's study in {where.shown} was started with a different config or data",
            [
                *changes[:20],
                "run every worker (and --resume) with the config and data the study started with "
                "(only --trials may change), or start a new study with --study NAME or in another folder",
            ],
        )


def open_storage(
    spec: str | None, out: Path, heartbeat: int, resume: bool, report: bool, resume_command: str
) -> Where:
    """The study's storage; the folder's own study file starts only without --resume/--report."""
    if spec is None:
        path = storage.default_file(out)
        there = path.exists() or path.is_symlink()
        if there:
            storage.check_default_file(path)
        if there and not (resume or report):
            raise OutputError(
                f"{out}: already holds a sweep ({path.name})",
                [f"continue it with: {resume_command}", "or choose another folder with --output-dir"],
            )
        if not there and (resume or report):
            raise OutputError(
                f"{out}: nothing to {'report' if report else 'resume'}: no {storage.DEFAULT_FILE} "
                f"(nor an older sweep's {storage.OLD_FILE}) in the folder",
                ["run without --resume to start" if resume else "name the sweep's folder with -o"],
            )
    return storage.connect(spec, out, heartbeat)


def open_study(
    where: Where,
    name: str,
    resume: bool,
    report: bool,
    fingerprint: dict[str, Any],
    source: str,
    queued: list[dict[str, Any]],
    started: float | None = None,
) -> tuple[Any, bool]:
    """Load the study, or create it, queueing the points in `queued` (a grid's every
    combination, or the config's own values to try first); True if created.
    `started`: when the command that creates it began (sweep.time_limit counts from then).

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
            if where.default and (resume or report):
                raise OutputError(
                    f"{where.shown}: not a sweep mse-train can continue (it holds no study '{name}')",
                    ["start the sweep again in another folder with --output-dir"],
                ) from None
            if report:
                raise OutputError(
                    f"{where.shown}: holds no study '{name}', so there is nothing to report",
                    ["check --storage and --study (or sweep.storage / sweep.study)"],
                ) from None
            the_study, created = _create(where, name, fingerprint, queued, started)
    except (OutputError, ConfigError):
        raise
    except Exception as exc:
        raise storage.storage_error(exc, where.shown) from None
    if not created:
        check_fingerprint(the_study, fingerprint, where, source)
        if where.default:
            _check_agrees(where, the_study)
    return the_study, created


def _create(
    where: Where, name: str, fingerprint: dict[str, Any], queued: list[dict[str, Any]], started: float | None
) -> tuple[Any, bool]:
    """The new study and True; or, when another worker created it a moment ago (workers
    started together), that study and False: a joined study's worker checks its config
    and seeds its sampler on its own, or it would ask the creator's very points again."""
    import optuna

    try:
        the_study = optuna.create_study(study_name=name, storage=where.storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=where.storage), False
    # The start first: a joining worker waits for the config (check_fingerprint), then reads it.
    the_study.set_user_attr(STARTED_ATTR, time.time() if started is None else started)
    the_study.set_user_attr(CONFIG_ATTR, fingerprint)
    for params in queued:
        the_study.enqueue_trial(params)
    return the_study, True


def _check_agrees(where: Where, the_study: Any) -> None:
    """Every trial leaderboard.csv lists must be in the folder's study file: one that lost
    trials (or was replaced by another) is not continued as if nothing happened."""
    board = Path(where.shown).parent / "leaderboard.csv"
    if not board.exists():
        return
    try:
        with open(board, newline="", encoding="utf-8") as f:
            listed = {int(row["trial"]) for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return  # a damaged leaderboard is rewritten from the database
    stored = {t.number for t in the_study.get_trials(deepcopy=False) if worker.result_of(t) is not None}
    lost = sorted(listed - stored)
    if lost:
        raise OutputError(
            f"{where.shown}: does not hold trial(s) {', '.join(map(str, lost[:10]))} that "
            "leaderboard.csv lists; the study's file was damaged or replaced",
            ["start the sweep again in another folder with --output-dir"],
        )


def deadline(the_study: Any, time_limit: float | None) -> float | None:
    """When the study's time is up (epoch seconds), refit included, for every worker: counted
    from the start of the command that created it."""
    if time_limit is None:
        return None
    started = the_study.user_attrs.get(STARTED_ATTR)
    if not isinstance(started, (int, float)):  # a study from before time limits: its first trial
        trials = the_study.get_trials(deepcopy=False)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
        started = min(starts, default=time.time())
    return float(started) + time_limit
