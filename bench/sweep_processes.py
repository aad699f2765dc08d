"""The sweep `init` writes, its trials that do not pack trained in processes or one at a time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep_processes.py [--table CSV --target COLUMN]
        [--repeats 2] [--trials 20]

`mse-train init TABLE --target COLUMN` once (default: bench/out/tables/salaries.csv, where
init writes TabM and its sweep searches TabM trials beside MLP and linear ones), then the
whole `mse-train sweep config.yaml --json` process, A/B interleaved in each repeat:
A `--set train.processes=auto` (one process per usable CPU for the folds of trials that do
not pack), B `--set train.processes=1` (one after another). Each sweep writes into its own
folder; `--trials` is the search's size, `sweep.refit` stays as init wrote it. Prints the
wall seconds, the best score and the leaderboard's scores compared between A and B (equal
trials should score alike: each fold trains in a child as it would in the sweep's own
process), and the load average before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "bench" / "out" / "tables" / "salaries.csv"


def _mse_train() -> list[str]:
    script = Path(sys.executable).parent / "mse-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mse_train"]


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _scores(folder: Path) -> list[tuple[str, str, str]]:
    with (folder / "leaderboard.csv").open() as handle:
        return [(r["trial"], r["score_mean"], r["status"]) for r in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--target", default="salary")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    if not args.table.exists():
        raise SystemExit(f"{args.table} is missing: make it with `.venv/bin/python bench/tables.py`")

    scratch = Path(tempfile.mkdtemp(prefix="mse-train-sweep-processes-"))
    config = scratch / "config.yaml"
    command = _mse_train()
    init = [*command, "init", str(args.table), "--target", args.target, "-o", str(config)]
    subprocess.run(init, check=True, capture_output=True)
    before = _loadavg()
    seconds: dict[str, list[float]] = {"auto": [], "1": []}
    boards: dict[str, list[tuple[str, str, str]]] = {}
    best: dict[str, float] = {}
    for i in range(args.repeats):
        for setting in ("auto", "1"):
            out = scratch / f"sweep-{setting}-{i}"
            sweep = [*command, "sweep", str(config), "-n", str(args.trials), "-o", str(out), "--json"]
            sweep += ["--set", f"train.processes={setting}"]
            start = time.perf_counter()
            done = subprocess.run(sweep, capture_output=True, text=True)
            seconds[setting].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(sweep)} failed ({done.returncode}):\n{done.stderr}")
            boards[setting] = _scores(out)
            best[setting] = json.loads(done.stdout)["best"]["score"]
            print(f"repeat {i}, train.processes={setting}: {seconds[setting][-1]:.1f} s", flush=True)
    after = _loadavg()
    a, b = statistics.median(seconds["auto"]), statistics.median(seconds["1"])
    print(f"\n{args.table.name}, {args.trials} trials, init's sweep section")
    print(f"load average {before} before, {after} after")
    print(f"train.processes=auto: median {a:.1f} s {[round(s, 1) for s in seconds['auto']]}")
    print(f"train.processes=1:    median {b:.1f} s {[round(s, 1) for s in seconds['1']]}")
    print(f"auto / 1: {a / b:.2f}x; best score {best['auto']:.6g} vs {best['1']:.6g}")
    same = boards["auto"] == boards["1"]
    print(f"leaderboards (trial, score, status) {'equal' if same else 'DIFFER'} between the two")


if __name__ == "__main__":
    main()
