"""Time to quality: `mse-train init` + `run` against a LightGBM-defaults script, whole processes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/time_to_quality.py [--repeats 3] [--write]

On a seeded 80/20 split of data/diamonds.csv (43,152 training rows, 10,788 test rows; the
categorical columns as categories on both sides), interleaved (A, B, A, B, ...) so that a
change in the machine's load falls on both alike:

- A: `mse-train init train.csv --target price` then `mse-train run` of the config it wrote,
  with nothing changed, each a fresh process, as a new user types them;
- B: `python bench/lightgbm_script.py train.csv test.csv price`: pandas.read_csv, the text
  columns as pandas categories, `lightgbm.LGBMRegressor()` with its defaults, fit, predict.

Each repeat starts with an empty data cache (MSE_TRAIN_CACHE_DIR), so A reads the CSV as a
first run does. Test R² of A comes from `mse-train eval best.pt test.csv --json` (not timed),
that of B from the script. Also prints where A's time goes: init, and the run's own
`summary.json` timings (reading the table, the training loop; the rest is start-up, the
checkpoints and loss.png). Issue 23's target: A within 3x of B at the same or better R².
LightGBM is needed only here: `.venv/bin/pip install lightgbm`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "data" / "diamonds.csv"
TARGET = "price"
SEED = 0
TRAIN_SHARE = 0.8


def _mse_train() -> list[str]:
    script = Path(sys.executable).parent / "mse-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mse_train"]


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def split(folder: Path) -> tuple[Path, Path]:
    frame = pd.read_csv(TABLE)
    order = np.random.default_rng(SEED).permutation(len(frame))
    cut = int(len(frame) * TRAIN_SHARE)
    train, test = folder / "train.csv", folder / "test.csv"
    frame.iloc[order[:cut]].to_csv(train, index=False)
    frame.iloc[order[cut:]].to_csv(test, index=False)
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="also write bench/time_to_quality_results.md")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="mse-train-ttq-"))
    lightgbm = [sys.executable, str(REPO / "bench" / "lightgbm_script.py")]
    ours: dict[str, list[float]] = {"init": [], "run": [], "ingest": [], "train": [], "epochs": []}
    theirs: list[float] = []
    r2: dict[str, float] = {}
    try:
        train, test = split(scratch)
        load_before = _loadavg()
        for i in range(args.repeats):
            env = {**os.environ, "MSE_TRAIN_CACHE_DIR": str(scratch / f"cache{i}")}
            config, out = scratch / f"config{i}.yaml", scratch / f"run{i}"
            init = [*_mse_train(), "init", str(train), "--target", TARGET, "-o", str(config)]
            init_s, _ = _timed(init, env)
            run_s, _ = _timed([*_mse_train(), "run", str(config), "-o", str(out)], env)
            summary = json.loads((out / "summary.json").read_text())
            ours["init"].append(init_s)
            ours["run"].append(run_s)
            ours["ingest"].append(summary["timings"]["ingest_seconds"])
            ours["train"].append(summary["timings"]["train_seconds"])
            ours["epochs"].append(summary["epochs_run"])
            _, scored = _timed([*_mse_train(), "eval", str(out / "best.pt"), str(test), "--json"], env)
            r2["mse-train"] = float(json.loads(scored)["r2"])
            model = next(line for line in config.read_text().splitlines() if line.startswith("  type:"))
            model = model.split("#")[0]
            seconds, printed = _timed([*lightgbm, str(train), str(test), TARGET], env)
            theirs.append(seconds)
            r2["LightGBM"] = float(printed.split()[-1])
        load_after = _loadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in ours.items()}
    total = [a + b for a, b in zip(ours["init"], ours["run"], strict=True)]
    ours_s, theirs_s = statistics.median(total), statistics.median(theirs)
    lines = [
        f"data/diamonds.csv, seeded 80/20 split ({TARGET}); whole processes, median of {args.repeats},"
        f" interleaved; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')};"
        f" load average {load_before} before, {load_after} after.",
        "",
        "| program | median s | min s | max s | test R² |",
        "|---|---:|---:|---:|---:|",
        f"| `mse-train init` + `mse-train run` ({model.split(':', 1)[1].strip()} starter)"
        f" | {ours_s:.2f} | {min(total):.2f} | {max(total):.2f} | {r2['mse-train']:.4f} |",
        f"| `bench/lightgbm_script.py` (LGBMRegressor defaults) | {theirs_s:.2f} | {min(theirs):.2f}"
        f" | {max(theirs):.2f} | {r2['LightGBM']:.4f} |",
        "",
        f"mse-train / LightGBM: **{ours_s / theirs_s:.2f}x** (target 3x); each interleaved pair:"
        f" {', '.join(f'{a / b:.2f}x' for a, b in zip(total, theirs, strict=True))}."
        " Of mse-train's time (medians):"
        f" init {med['init']:.2f} s; run {med['run']:.2f} s, of which reading the table"
        f" {med['ingest']:.2f} s and the training loop {med['train']:.2f} s ({med['epochs']:.0f} epochs),"
        f" the rest start-up, checkpoints and loss.png.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = REPO / "bench" / "time_to_quality_results.md"
        path.write_text(f"# Time to quality (bench/time_to_quality.py)\n\n{text}\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
