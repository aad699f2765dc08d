"""Streamed vs in-memory training speed: rows/s at batch 1024 on the same CSV, side by side.

    .venv/bin/python bench/stream.py                      # 1M rows x 24 columns
    .venv/bin/python bench/stream.py --csv BIG.csv --epochs 1 --only streamed

Each run is a whole `mse-train run` process (an MLP with one hidden layer of 64, Adam);
rows/s is training rows x epochs / summary.json's `train_seconds`. The first run builds the
data cache, so both timed runs read it from the page cache. `streamed` forces streaming with
`data.memory_budget: 1KiB`; `memory` sets a budget of 64GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=23)
    with open(path, "w") as f:
        f.write(",".join([f"x{i}" for i in range(23)] + ["y"]) + "\n")
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            x = rng.normal(size=(n, 23)).astype(np.float32)
            y = x @ weights + 0.1 * rng.normal(size=n)
            np.savetxt(f, np.column_stack([x, y]), fmt="%.4f", delimiter=",")


def run(csv: Path, work: Path, name: str, budget: str, epochs: int) -> dict[str, float]:
    cfg = work / f"{name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "data": {"train": str(csv), "target": "y", "val_fraction": 0.1, "memory_budget": budget},
                "model": {"type": "mlp", "hidden": [64]},
                "optimizer": {"name": "adam", "lr": 0.001},
                "train": {"epochs": epochs, "batch_size": 1024},
                "output": {"plot": False, "dir": str(work / name)},
            }
        )
    )
    subprocess.run([sys.executable, "-m", "mse_train", "run", str(cfg), "-q", "--overwrite"], check=True)
    summary = json.loads((work / name / "summary.json").read_text())
    rows = summary["rows"]["train"] * epochs
    seconds = summary["timings"]["train_seconds"]
    return {"rows_per_s": rows / seconds, "train_seconds": seconds, "best": summary["best"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", choices=["memory", "streamed"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("MSE_TRAIN_CACHE_DIR", str(work / "cache"))
        csv = args.csv or work / "table.csv"
        if args.csv is None:
            write_table(csv, args.rows)
        found = {}
        for name, budget in (("memory", "64GiB"), ("streamed", "1KiB")):
            if args.only in (None, name):
                found[name] = run(csv, work, name, budget, args.epochs)
                print(name, json.dumps(found[name]), flush=True)
        if len(found) == 2:
            ratio = found["streamed"]["rows_per_s"] / found["memory"]["rows_per_s"]
            print(f"streamed / in-memory rows/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
