"""The sweep folder's own study file: a journal (sweep.journal) for a new sweep, and the
SQLite sweep.db of a folder an older mse-train made, still continued and reported."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import HANG_GUARD, leaderboard, run_process, start_process, sweep_config, sweep_study

ONE_LR = {"method": "random", "trials": 1, "refit": False, "params": {"optimizer.lr": [0.01, 0.02, 0.03]}}


def test_a_plain_sweep_keeps_its_study_in_a_journal_and_imports_no_sqlalchemy(table, tmp_path):
    cfg = sweep_config(tmp_path, table, {**ONE_LR, "trials": 2})
    code = (
        "import sys\n"
        "from mse_train.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted(m for m in ('sqlalchemy', 'alembic') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "sweep", str(cfg), "-q"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    folder = tmp_path / "run-sweep"
    assert (folder / "sweep.journal").is_file() and not (folder / "sweep.db").exists()
    assert len(sweep_study(folder).get_trials()) == 2 == len(leaderboard(folder))


def _old_folder(cli, table, tmp_path: Path) -> tuple[Path, Path]:
    """A sweep folder as an older mse-train left it: its study in sweep.db (SQLite, Optuna's
    RDB storage, as the default was), one trial finished."""
    cfg = sweep_config(tmp_path, table, ONE_LR)
    folder = tmp_path / "run-sweep"
    made = cli("sweep", cfg, "-q", "--storage", f"sqlite:///{folder / 'sweep.db'}")
    assert made.code == 0, made
    assert not (folder / "sweep.journal").exists()
    return cfg, folder


def test_an_older_folders_sweep_db_is_continued_by_resume_and_read_by_report(cli, table, tmp_path):
    import optuna

    cfg, folder = _old_folder(cli, table, tmp_path)
    again = cli("sweep", cfg, "-q")  # a new sweep there would leave the old one behind
    assert again.code == 2, again
    assert "already holds a sweep (sweep.db)" in again.stderr and "--resume" in again.stderr
    resumed = cli("sweep", cfg, "-q", "--resume", "--trials", "2")
    assert resumed.code == 0, resumed
    assert not (folder / "sweep.journal").exists()  # it went on in sweep.db
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'sweep.db'}")
    assert len(study.get_trials()) == 2 == len(leaderboard(folder))
    report = cli("sweep", cfg, "--report", "--json")
    assert report.code == 0, report
    assert json.loads(report.stdout)["trials"] == 2
    assert not (folder / "sweep.journal").exists()


def test_an_older_folders_sweep_db_locked_or_not_a_database_is_told_cleanly(cli, table, tmp_path):
    cfg, folder = _old_folder(cli, table, tmp_path)
    db = folder / "sweep.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds it
    try:
        locked = cli("sweep", cfg, "-q", "--resume", "--trials", "2")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert locked.code == 2, locked
    assert f"{db}: the sweep's database is locked" in locked.stderr and "Traceback" not in locked.stderr
    assert cli("sweep", cfg, "-q", "--resume", "--trials", "2").code == 0  # nothing was lost
    db.write_bytes(b"not a database at all")
    garbage = cli("sweep", cfg, "-q", "--resume")
    assert garbage.code == 2, garbage
    assert f"{db}: not an SQLite database" in garbage.stderr
    db.unlink()
    db.mkdir()
    folder_there = cli("sweep", cfg, "-q", "--report")
    assert folder_there.code == 2, folder_there
    assert f"{db}: is a folder" in folder_there.stderr


def test_a_lock_a_killed_worker_left_on_the_journal_is_released_and_the_sweep_goes_on(table, tmp_path):
    cfg = sweep_config(tmp_path, table, ONE_LR)
    first = run_process("sweep", cfg, "-q")
    assert first.returncode == 0, first.stderr
    journal = tmp_path / "run-sweep" / "sweep.journal"
    # What a worker killed while it appended leaves: Optuna's lock, a link to the journal.
    Path(f"{journal}.lock").symlink_to(journal)
    resumed = run_process("sweep", cfg, "-q", "--resume", "--trials", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "sweep.journal.lock" in resumed.stderr  # Optuna says whose lock it waits for, then takes it
    assert len(leaderboard(tmp_path / "run-sweep")) == 2
    assert not Path(f"{journal}.lock").exists()


def test_a_second_worker_joins_a_running_sweep_in_its_default_folder(table, tmp_path):
    sweep = {**ONE_LR, "trials": 8, "params": {"optimizer.lr": {"low": 0.001, "high": 0.1, "log": True}}}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 100, "batch_size": 8})  # ~1 s a trial
    first = start_process("sweep", cfg, "-q", "--no-pack")
    journal = tmp_path / "run-sweep" / "sweep.journal"
    try:
        while first.poll() is None and not (journal.exists() and b'"op_code":4' in journal.read_bytes()):
            time.sleep(0.05)  # until the first worker trains its first trial
        joined = run_process("sweep", cfg, "-q", "--no-pack", "--resume")
        _, err = first.communicate(timeout=HANG_GUARD)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert joined.returncode == 0, joined.stderr
    trials = sweep_study(tmp_path / "run-sweep").get_trials()
    assert len(trials) == 8 and len({t.params["optimizer.lr"] for t in trials}) == 8
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2, workers  # both trained trials of the one study
