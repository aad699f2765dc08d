"""A sweep's study storages side by side, and workers: what sharing a study costs and buys.

    .venv/bin/python bench/sweep_storage.py           # prints the tables (markdown)
    .venv/bin/python bench/sweep_storage.py --quick   # fewer trials

1. Storage work per trial, as a worker does it (mse_train.selection.worker): ask, record
   the worker and a heartbeat, tell the score with its attrs, then the reads of its loop
   (stale trials, the budget, the leaderboard), in ms, for SQLite (a file), a journal file
   and PostgreSQL (a server of the distribution's packages started here, on a unix socket;
   skipped when there is none). Median over rounds, on a study that grows to N trials.
2. One worker against two on one study (a journal file), the same 16 trials, `--no-pack`:
   trials per minute, and CPU seconds per wall second of the workers (so the ratio can be
   read against the cores: this machine has 2).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mse_train.selection import space, storage, worker  # noqa: E402
from mse_train.selection.fit import Scored  # noqa: E402
from mse_train.training.records import Status  # noqa: E402


def postgres(root: Path) -> tuple[str, Callable[[], None]] | None:
    """A throwaway PostgreSQL server (as tests/test_sweep_workers.py starts one), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        return None
    bin_dir = found[-1].parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p 54330 -k {root} -c listen_addresses=''"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
                    str(root / "log"), "start"], check=True, capture_output=True)  # fmt: skip

    def stop() -> None:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip

    return f"postgresql+psycopg2://postgres@/postgres?host={root}&port=54330", stop


def per_trial_ms(spec: str, folder: Path, trials: int) -> tuple[float, float]:
    """Median and 90th percentile ms of one trial's storage work, over `trials` trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = storage.connect(spec, folder, heartbeat=10)
    study = optuna.create_study(study_name="bench", storage=where.storage, direction="minimize")
    the_space = space.Space({"optimizer.lr": _lr_range(), "model.hidden": [[16], [32]]}, "random")
    keys = the_space.keys()
    times = []
    for i in range(trials):
        started = time.perf_counter()
        trial = study.ask()
        the_space.suggest(trial)
        trial.set_user_attr("worker", worker.WORKER)
        where.storage.record_heartbeat(trial._trial_id)
        overall = {"mse": 1.0 / (i + 1), "rmse": 1.0, "mae": 1.0, "r2": 0.5, "score_std": None, "n": 100}
        worker._tell(study, trial, Scored(Status.COMPLETED, 10, 0.1, overall, best_epochs=[9]), [])
        optuna.storages.fail_stale_trials(study)
        worker.finished(study.get_trials(deepcopy=False))
        worker.leaderboard(study, keys)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), sorted(times)[int(0.9 * len(times))]


def _lr_range() -> Any:
    from mse_train.config.schema import SweepRange

    return SweepRange(low=1e-4, high=1e-1, log=True)


def workers(n: int, folder: Path, trials: int, kind: str) -> tuple[float, float]:
    """Trials per minute and CPU seconds per wall second of `n` workers on one study."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 8))
    y = x @ rng.normal(size=8) + 0.1 * rng.normal(size=4000)
    table = folder / "table.csv"
    header = ",".join([*(f"x{i}" for i in range(8)), "y"])
    np.savetxt(table, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6f")
    config = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 5, "batch_size": 64},
        "output": {"dir": str(folder / "out"), "plot": False},
        "sweep": {"method": "random", "trials": trials, "refit": False,
                  "params": {"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}}},
    }  # fmt: skip
    cfg = folder / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    spec = str(folder / "j.journal") if kind == "journal" else f"sqlite:///{folder / 's.db'}"
    command = [sys.executable, "-m", "mse_train", "sweep", str(cfg), "--storage", spec, "--no-pack", "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env) for _ in range(n)]
    for p in procs:
        assert p.wait() == 0
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return trials / wall * 60, cpu / wall


def main() -> None:
    warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings, as the sweep silences them
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trials = 20 if args.quick else 100
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"\n## Storage work per trial ({trials} trials, ms)\n")
    print("| storage | median ms | 90th percentile ms |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [("SQLite file", f"sqlite:///{root / 'sweep.db'}"), ("journal file", str(root / "j"))]
        for name, spec in rows:
            median, p90 = per_trial_ms(spec, root, trials)
            print(f"| {name} | {median:.1f} | {p90:.1f} |")
        pg_root = Path(tempfile.mkdtemp(prefix="mse-bench-pg-"))
        server = postgres(pg_root)
        if server is None:
            print("| PostgreSQL | (not installed) | |")
        else:
            url, stop = server
            try:
                median, p90 = per_trial_ms(url, root, trials)
                print(f"| PostgreSQL 15, unix socket | {median:.1f} | {p90:.1f} |")
            finally:
                stop()
                shutil.rmtree(pg_root, ignore_errors=True)
    n = 8 if args.quick else 16
    print(f"\n## One worker against two ({n} trials, --no-pack; wall time includes each process's start)\n")
    print("| storage | workers | trials/min | CPU s per wall s |\n|---|---:|---:|---:|")
    for kind in ("journal", "sqlite"):
        results = {}
        for count in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                results[count] = workers(count, Path(tmp), n, kind)
                print(f"| {kind} | {count} | {results[count][0]:.1f} | {results[count][1]:.2f} |")
        print(f"| {kind} | 2 / 1 | {results[2][0] / results[1][0]:.2f}x | |")
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
