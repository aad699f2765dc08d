"""A table's way to the model's arrays, in memory and streamed, against another checkout.

    .venv/bin/python bench/prepare.py                          # this checkout only
    .venv/bin/python bench/prepare.py --other /path/to/checkout --rows 500000

Times `stream_fit.prepare_run` (read through the data cache, empty cells, the holdout,
the fitted preprocessing and drift profile, the encoded arrays; a streamed table's setup
and one pass of encoding every block) on a generated table: 16 numeric columns with empty
cells, two categorical ones (5 and 200 values), `data.missing: mean`, one-hot. The cache
is built first, so every timed run reads it. With `--other`, the same measurement runs
in that checkout (its `mse_train` first on PYTHONPATH), interleaved, median of `--rounds`,
and the ratio this / other is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def write_table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 16)).round(4), columns=[f"x{i}" for i in range(16)])
    frame.loc[rng.choice(rows, rows // 100, replace=False), "x0"] = np.nan
    frame["small"] = rng.choice([f"k{i}" for i in range(5)], rows)
    frame["large"] = rng.choice([f"v{i}" for i in range(200)], rows)
    frame["y"] = frame["x1"] * 2 + (frame["small"] == "k1") + 0.1 * rng.normal(size=rows)
    frame.to_csv(path, index=False)


def measure(csv: Path, budget: str) -> float:
    """Seconds for one prepare_run (streamed: and one pass over every encoded block)."""
    from mse_train import config
    from mse_train.data import stream_fit

    path = csv.with_suffix(f".{budget}.yaml")
    settings = {
        "train": str(csv),
        "target": "y",
        "missing": "mean",
        "memory_budget": budget,
        "max_categories": 500,
    }
    path.write_text(json.dumps({"data": settings, "model": {"type": "mlp", "hidden": [8]}}))
    cfg = config.load(path)
    started = time.perf_counter()
    data = stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 1024)
    if isinstance(data, stream_fit.Streamed):
        for _ in data.train.blocks():
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other", type=Path, help="another checkout to compare with")
    parser.add_argument("--measure", nargs=2, metavar=("CSV", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child: one timing, printed
        print(measure(Path(args.measure[0]), args.measure[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "table.csv"
        write_table(csv, args.rows)
        env = {**os.environ, "MSE_TRAIN_CACHE_DIR": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        sides = {"this": ROOT} | ({"other": args.other.resolve()} if args.other else {})

        def once(side: str, budget: str) -> float:
            child = {**env, "PYTHONPATH": str(sides[side])}
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(csv), budget],
                env=child,
                check=True,
                capture_output=True,
                text=True,
            )
            return float(out.stdout.split()[-1])

        for name, budget in (("memory", "64GiB"), ("streamed", "1KiB")):
            once("this", budget)  # builds the cache entry (mapped or not) outside the timing
            times: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side in sides:
                    times[side].append(once(side, budget))
            medians = {side: statistics.median(t) for side, t in times.items()}
            shown = ", ".join(f"{side} {m:.2f} s" for side, m in medians.items())
            ratio = f"; this / other {medians['this'] / medians['other']:.2f}" if "other" in medians else ""
            print(f"{name} ({args.rows} rows): {shown}{ratio}", flush=True)
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
