"""The data cache: ingest of a first and a second `mse-train run` on the same CSV, side by side.

    .venv/bin/python bench/cache.py                 # 1M rows x 17 columns (~170 MB)
    .venv/bin/python bench/cache.py --rows 200000

Each run is a whole process (1 epoch of a linear model; training is not what is timed)
and `ingest_seconds` comes from its summary.json. With a fresh cache folder:

  off       data.cache: off, the parse as without a cache
  first     data.cache: auto, empty: parse into the cache, read it back
  second    the same config again: read from the cache
  rehash    the same again after deleting the cache's hash records (files/): what the
            second run costs when the file's sha256 must be computed again

The CSV is written first and then left alone for RACY seconds: a file modified moments
before it is hashed is hashed again on every read until it is older (see data/cache.py),
and a real table is rarely that fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

FEATURES = 16
RACY = 2.5  # seconds; data/cache.py trusts a stat signature only once the file is 2 s old


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """The table bench/run.py uses: 16 standard-normal features, y = tanh(x w) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    w = rng.standard_normal(FEATURES).astype(np.float32)
    y = np.tanh(x @ w) + 0.1 * rng.standard_normal(rows).astype(np.float32)
    header = ",".join([f"x{i}" for i in range(FEATURES)] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.7g")


def run(folder: Path, name: str, csv: Path, setting: str, env: dict[str, str]) -> float:
    """One `mse-train run`; its ingest_seconds."""
    config = {
        "data": {"train": str(csv), "target": "y", "cache": setting},
        "train": {"epochs": 1, "batch_size": 4096, "device": "cpu"},
        "output": {"dir": str(folder / name), "plot": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-m", "mse_train", "run", str(path), "-q"], check=True, env=env, capture_output=True
    )
    summary = json.loads((folder / name / "summary.json").read_text())
    return float(summary["timings"]["ingest_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mse-train-cache-bench-") as tmp:
        folder = Path(tmp)
        csv = folder / "table.csv"
        write_csv(csv, args.rows)
        time.sleep(RACY)
        env = {**os.environ, "MSE_TRAIN_CACHE_DIR": str(folder / "cache")}
        seconds = {"off": run(folder, "off", csv, "off", env)}
        seconds["first"] = run(folder, "first", csv, "auto", env)
        seconds["second"] = run(folder, "second", csv, "auto", env)
        shutil.rmtree(folder / "cache" / "files")
        seconds["rehash"] = run(folder, "rehash", csv, "auto", env)
        size = csv.stat().st_size / 1e6
    print(f"ingest of a {args.rows}-row x {FEATURES + 1}-column CSV ({size:.0f} MB), mse-train run, seconds:")
    for name, value in seconds.items():
        print(f"  {name:7s} {value:8.3f}")
    print(f"first / second: {seconds['first'] / seconds['second']:.1f}x")
    print(f"off / second:   {seconds['off'] / seconds['second']:.1f}x")
    print(f"first / rehash: {seconds['first'] / seconds['rehash']:.1f}x (no recorded hash: sha256 each time)")


if __name__ == "__main__":
    main()
