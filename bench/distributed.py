"""One process against two under torchrun (CPU, gloo), on the same config and global batch.

    .venv/bin/python bench/distributed.py            # prints a markdown table
    .venv/bin/python bench/distributed.py --rows 20000 --epochs 2

Measures rows/s of `mse-train run` (the epochs' own seconds from metrics.csv, so process
start and data loading are left out) in 1 and 2 processes, and the per-step cost of the
stop-flag all-reduce that every distributed batch pays (a 1-element MAX over gloo), timed
in a torchrun worker of this same script (`--flag-worker`).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

BIN = Path(sys.executable).parent
RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    # One thread per process in both cases (torchrun sets this for its workers), so the
    # comparison is of processes, not of thread pools fighting over the same cores.
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    return {"OMP_NUM_THREADS": "1", **env}


def _table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 16)).astype(np.float32)
    y = x @ rng.normal(size=16) + 0.1 * rng.normal(size=rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"x{i}" for i in range(16)] + ["y"])
        writer.writerows(np.column_stack([x, y]).round(5).tolist())


def _train(folder: Path, table: Path, processes: int, batch: int, epochs: int) -> float:
    """rows/s over the epochs of one run in `processes` processes."""
    out = folder / f"run{processes}-{batch}"
    cfg = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.0},
        "model": {"type": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "adam", "lr": 0.001},
        "train": {"epochs": epochs, "batch_size": batch, "device": "cpu"},
        "output": {"dir": str(out), "plot": False},
    }
    path = folder / f"cfg{processes}-{batch}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = [str(BIN / "mse-train"), "run", str(path), "-q"]
    if processes > 1:
        run = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(processes), "--no-python", *run]
    subprocess.run(run, check=True, capture_output=True, env=_env())
    with open(out / "metrics.csv", newline="") as f:
        seconds = sum(float(r["seconds"]) for r in csv.DictReader(f))
    rows = table.read_text().count("\n") - 1
    return rows * epochs / seconds


def _flag_worker(steps: int) -> None:
    """Under torchrun: time `distributed.any_rank` (the per-batch stop flag)."""
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mse_train.training import distributed

    dist.init_process_group("gloo")
    device = torch.device("cpu")
    for _ in range(100):  # warm up the connections
        distributed.any_rank(False, device)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        distributed.any_rank(False, device)
    per_step = (time.perf_counter() - started) / steps
    if dist.get_rank() == 0:
        print(f"{per_step * 1e6:.1f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--flag-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flag_worker:
        _flag_worker(2000)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = folder / "table.csv"
        _table(table, args.rows)
        print(f"{args.rows:,} rows x 16 -> 64 -> 64 -> 1 MLP, Adam, {args.epochs} epochs, CPU\n")
        print("| global batch | 1 process rows/s | 2 processes rows/s | 2 / 1 |")
        print("|---:|---:|---:|---:|")
        for batch in (256, 4096):
            one = _train(folder, table, 1, batch, args.epochs)
            two = _train(folder, table, 2, batch, args.epochs)
            print(f"| {batch} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    flag = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", __file__, "--flag-worker"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    )
    print(f"\nstop-flag all-reduce (1 float, MAX, gloo, 2 processes): {flag.stdout.strip()} us per step")


if __name__ == "__main__":
    main()
