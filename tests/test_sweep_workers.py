"""Several workers of one sweep on a shared study: a journal file and a real PostgreSQL.

Three processes run the same command; one is killed with SIGKILL in the middle of a trial.
The study must end with exactly the configured number of completed trials, none of them
the same point twice, the killed trial run again by another worker, one refit, and the
leaderboard `--report` writes from the study.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import linear_rows, start_process, write_config, write_csv

TRIALS = 24


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _unavailable(reason: str) -> None:
    """Skip with the reason, except in CI, which installs PostgreSQL: there it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI installs PostgreSQL, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of the distribution's packages in a temporary folder, reached by
    its unix socket; as the `postgres` user when run as root (the server refuses root)."""
    pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2) is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None:
        _unavailable(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql"
        )
    assert bin_dir is not None
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="mse-train-pg-")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _unavailable("running as root without `runuser` to start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, socket = Path(root) / "data", Path(root)
    port = "54329"
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        options = f"-p {port} -k {socket} -c listen_addresses='' -c max_connections=50"
        log = str(Path(root) / "log")
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", log,
                        "start"], check=True, capture_output=True, timeout=120)  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"PostgreSQL did not start: {exc}")
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={socket}&port={port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _config(tmp_path: Path) -> Path:
    header, values = linear_rows(600, n_features=4)
    table = write_csv(tmp_path / "table.csv", header, values.round(6).tolist())
    config = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.25},
        "model": {"type": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 40, "batch_size": 16},
        "output": {"dir": str(tmp_path / "run"), "plot": False},
        "sweep": {
            "method": "random",
            "trials": TRIALS,
            "heartbeat": 1,  # a killed worker's trial is retried 3 s after its last heartbeat
            "params": {"optimizer.lr": {"low": 0.001, "high": 0.05, "log": True}},
        },
    }
    return write_config(tmp_path / "sweep.yaml", config)


def _board(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _three_workers_one_killed(tmp_path: Path, storage: Any) -> list[dict[str, Any]]:
    """`storage`: the URL or journal path the workers get, and an Optuna storage to watch."""
    from optuna.trial import TrialState

    url, watched = storage
    cfg = _config(tmp_path)
    workers = [start_process("sweep", cfg, "--storage", url, "--no-pack", "--json") for _ in range(3)]
    victim = workers[0]
    deadline = time.monotonic() + 300
    while True:  # until the victim trains a trial
        assert time.monotonic() < deadline and victim.poll() is None
        with contextlib.suppress(KeyError):  # the study is not created yet
            study = optuna.load_study(study_name="sweep", storage=watched)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if any(t.user_attrs.get("worker", "").endswith(f":{victim.pid}") for t in running):
                break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    outputs = []
    for worker in workers[1:]:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        outputs.append(json.loads(out))
    return outputs


def _check_study(study: Any, outputs: list[dict[str, Any]], tmp_path: Path, cli: Any, storage: str) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS
    assert len({t.params["optimizer.lr"] for t in complete}) == TRIALS  # none searched twice
    retried = [t for t in complete if t.system_attrs.get("failed_trial") is not None]
    assert retried, "the killed worker's trial was not run again"
    failed = {t.number: t for t in trials if t.state == TrialState.FAIL}
    for retry in retried:
        assert failed[retry.system_attrs["failed_trial"]].params == retry.params
    assert sum(1 for out in outputs if out["checkpoint"]) == 1  # one refit
    assert (tmp_path / "run-sweep" / "best" / "best.pt").exists()
    report = cli("sweep", tmp_path / "sweep.yaml", "--storage", storage, "--report", "-o", tmp_path / "r")
    assert report.code == 0, report
    assert _board(tmp_path / "r" / "leaderboard.csv") == _board(tmp_path / "run-sweep" / "leaderboard.csv")
    assert len(_board(tmp_path / "r" / "leaderboard.csv")) == TRIALS


def test_three_workers_share_a_journal_file_and_survive_a_killed_one(cli, tmp_path):
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "sweep.journal"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    outputs = _three_workers_one_killed(tmp_path, (str(journal), storage))
    _check_study(optuna.load_study(study_name="sweep", storage=storage), outputs, tmp_path, cli, str(journal))


def test_three_workers_share_a_postgresql_study_and_survive_a_killed_one(cli, tmp_path, postgres):
    outputs = _three_workers_one_killed(tmp_path, (postgres, postgres))
    study = optuna.load_study(study_name="sweep", storage=postgres)
    _check_study(study, outputs, tmp_path, cli, postgres)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the sweep silences it too
def test_a_worker_that_loses_the_race_to_create_the_study_joins_it_as_a_worker(tmp_path, monkeypatch):
    # Workers started together each find no study and each create it: one wins, the others
    # get DuplicatedStudyError. A loser that took itself for the creator seeded its sampler
    # with the config's seed, as the creator did, and asked the creator's very points again.
    from mse_train.config import load
    from mse_train.selection import storage, study

    cfg = load(_config(tmp_path))
    fingerprint = study.fingerprint(cfg, 0)
    where = storage.connect(str(tmp_path / "sweep.journal"), tmp_path, 10)
    _, created = study.open_study(where, "sweep", False, False, fingerprint, "sweep.yaml", [])
    assert created
    looked: list[str] = []
    load_study = optuna.load_study

    def too_early(**kwargs: Any) -> Any:  # this worker looked before the other created it
        if not looked:
            looked.append(kwargs["study_name"])
            raise KeyError(kwargs["study_name"])
        return load_study(**kwargs)

    monkeypatch.setattr(optuna, "load_study", too_early)
    joined, created = study.open_study(where, "sweep", False, False, fingerprint, "sweep.yaml", [])
    assert looked == ["sweep"] and joined.study_name == "sweep"
    assert not created  # so it seeds its sampler on its own and checks the study's config


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the sweep silences both
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_result_for_a_trial_another_worker_gave_up_is_dropped_not_a_crash(tmp_path):
    # A worker whose heartbeat came late (a busy machine) has its trial failed as stale by
    # another worker (optuna's fail_stale_trials) and queued again; when it then tells its
    # result, the storage refuses the write. The worker drops the result instead of crashing,
    # and a result written just before the trial was failed is on no leaderboard.
    from optuna.trial import TrialState

    from mse_train.selection import storage, worker
    from mse_train.selection.fit import Scored
    from mse_train.training.records import Status

    where = storage.connect(str(tmp_path / "sweep.journal"), tmp_path, 10)
    the_study = optuna.create_study(study_name="sweep", storage=where.storage)
    scored = Scored(Status.COMPLETED, 3, 1.0, {"mse": 1.0, "rmse": 1.0, "mae": 1.0, "r2": 0.5, "n": 10})
    given_up = the_study.ask()
    given_up.suggest_float("optimizer.lr", 0.001, 0.1)
    where.storage.set_trial_state_values(given_up._trial_id, TrialState.FAIL)  # as fail_stale_trials does
    assert worker._tell(the_study, given_up, scored, []) is False
    late = the_study.ask()
    late.suggest_float("optimizer.lr", 0.001, 0.1)
    late.set_user_attr(worker.RESULT, {"status": "completed", "mse": 1.0})
    where.storage.set_trial_state_values(late._trial_id, TrialState.FAIL)
    mine = the_study.ask()
    mine.suggest_float("optimizer.lr", 0.001, 0.1)
    assert worker._tell(the_study, mine, scored, []) is True
    assert [row["trial"] for row in worker.leaderboard(the_study, ["optimizer.lr"])] == [mine.number]
