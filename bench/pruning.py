"""What `sweep.pruner` buys: the same sweep unpruned, with `median` and with `halving`.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pruning.py           # 20 trials of 40 epochs
    OMP_NUM_THREADS=1 .venv/bin/python bench/pruning.py --quick   # 12 trials of 25 epochs

On two real tables (data/diabetes.csv, data/concrete.csv) one TPE sweep (seed 0, trials
scored on 20% validation rows, no refit, `--no-pack`: one trial at a time, as pruning
judges trial by trial) runs through the real CLI once per pruner, the variants alternating
(with --rounds 2, round 2 runs them in reverse order). For each: the wall time of the
command, the search's own time (first trial's start to last trial's end: without the
start-up of Python, torch and the table, the same for all), the epochs trained in all
(from the leaderboard: machine-independent work), the trials pruned, the best score, and
the time (from the first trial's start) at which the sweep first had a finished trial at
least as good as the unpruned sweep's best, read from the study's `trial.datetime_start`
and `trial.datetime_complete`; "never" when it did not reach it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "mse-train"
TABLES = {"diabetes": ("diabetes.csv", "progression"), "concrete": ("concrete.csv", "compressive_strength")}
PRUNERS = ("none", "median", "halving")


def write_config(folder: Path, table: str, trials: int, epochs: int) -> Path:
    file, target = TABLES[table]
    config = {
        "seed": 0,
        "data": {"train": str(ROOT / "data" / file), "target": target, "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": [32]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": epochs, "batch_size": 32},
        "output": {"dir": str(folder / "run"), "plot": False},
        "sweep": {
            "method": "tpe",
            "trials": trials,
            "folds": 0,
            "refit": False,
            "params": {
                "model.hidden": [[16], [64, 64]],
                "optimizer.lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True},
                "regularization.l2": [0.0, 1.0e-3, 1.0e-2],
            },
        },
    }
    path = folder / f"{table}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sweep(config: Path, pruner: str, out: Path) -> dict[str, Any]:
    """One sweep through the CLI; its trials' finish times (s after the start) and scores."""
    import optuna

    start = time.time()
    command = [str(CLI), "sweep", str(config), "--no-pack", "-q", "--json", "-o", str(out),
               "--set", f"sweep.pruner={pruner}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from optuna.storages.journal import JournalFileBackend

        journal = optuna.storages.JournalStorage(JournalFileBackend(str(out / "sweep.journal")))
        study = optuna.load_study(study_name="sweep", storage=journal)
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    first = min(t.datetime_start.timestamp() for t in trials if t.datetime_start is not None)
    finished = [
        (t.datetime_complete.timestamp() - first, float(t.value))
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and t.datetime_complete
    ]
    with open(out / "leaderboard.csv", newline="") as f:
        board = list(csv.DictReader(f))
    return {
        "wall": wall,
        "search": max(t.datetime_complete.timestamp() for t in trials if t.datetime_complete) - first,
        "finished": sorted(finished),
        "best": json.loads(done.stdout)["best"]["score"],
        "epochs": sum(int(r["epochs"]) for r in board),
        "pruned": sum(r["status"] == "pruned" for r in board),
        "trials": len(board),
    }


def reached(result: dict[str, Any], target: float) -> float | None:
    """Seconds until the first finished trial scoring `target` or better."""
    return next((at for at, score in result["finished"] if score <= target * (1 + 1e-9)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 trials of 25 epochs")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every variant (default 1)")
    parser.add_argument("--pruners", default=",".join(PRUNERS), help="comma-separated; none is always run")
    args = parser.parse_args()
    trials, epochs = (12, 25) if args.quick else (20, 40)
    rounds = args.rounds
    pruners = ["none", *[p for p in args.pruners.split(",") if p != "none"]]
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"TPE, seed 0, {trials} trials, up to {epochs} epochs, --no-pack, {rounds} round(s)\n")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(rounds):
            order = pruners if r % 2 == 0 else [pruners[0], *reversed(pruners[1:])]
            for table in TABLES:
                config = write_config(root, table, trials, epochs)
                for pruner in order:
                    out = root / f"{table}-{pruner}-{r}"
                    results.setdefault((table, pruner), []).append(sweep(config, pruner, out))
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}\n")
    print("| table | pruner | wall s | search s | to unpruned best s | epochs | pruned/trials | best |")
    print("|---|---|---|---|---|---|---|---|")
    for table in TABLES:
        target = results[(table, "none")][0]["best"]
        for pruner in pruners:
            runs = results[(table, pruner)]
            walls = " / ".join(f"{run['wall']:.1f}" for run in runs)
            searches = " / ".join(f"{run['search']:.1f}" for run in runs)
            hits = [reached(run, target) for run in runs]
            to = " / ".join("never" if h is None else f"{h:.1f}" for h in hits)
            last = runs[-1]
            done = f"{last['epochs']} | {last['pruned']}/{last['trials']} | {last['best']:.6g}"
            print(f"| {table} | {pruner} | {walls} | {searches} | {to} | {done} |")
    print("\n(times: one number per round; epochs, pruned and best: the last round's, the same")
    print(" every round on CPU; target: the unpruned sweep's best score; times from the first trial's start)")


if __name__ == "__main__":
    main()
