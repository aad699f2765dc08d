"""Training time against torch's intra-op thread count, on an idle and on a loaded machine.

    .venv/bin/python bench/threads.py               # 3 rounds, prints a table
    .venv/bin/python bench/threads.py --rounds 5

For the model sizes mse-train ships, each trained by `recipe.run` as `mse-train run` does:
  - configs/diamonds.yaml's MLP 64-64 (Adam, 43k training rows) at batch 256 and 1024, and
    the widest the shipped sweeps try (128-128) at 1024;
  - the starter's MLP 64-64 with piecewise_linear embeddings (`mse-train init`), batch 64,
    on data/concrete.csv;
with torch.set_num_threads(1), (2) and torch's own default, measured in turn within each
round (A, B, C, A, B, C, ...) so that a change in the machine's load hits every variant.

"loaded": the bench starts one pure-Python busy loop per CPU of this process's affinity,
each pinned to its CPU with os.sched_setaffinity, as another program on the same cores
would be. The load average (/proc/loadavg) is printed with each scenario: on a shared
machine "idle" is only as idle as the neighbours allow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mse_train import config as config_module  # noqa: E402
from mse_train import recipe  # noqa: E402
from mse_train.config import yamlio  # noqa: E402

DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, read before anything sets it

SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def _diamonds(batch: int, epochs: int, out: str, hidden: tuple[int, ...] = (64, 64)) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"train": str(ROOT / "data/diamonds.csv"), "target": "price", "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": list(hidden)},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {"epochs": epochs, "batch_size": batch, "device": "cpu"},
        "output": {"dir": out, "plot": False},
    }


def _starter(epochs: int, out: str) -> dict[str, Any]:
    """What `mse-train init data/concrete.csv` writes for its MLP, with fewer epochs."""
    return {
        "seed": 0,
        "data": {
            "train": str(ROOT / "data/concrete.csv"),
            "target": "compressive_strength",
            "val_fraction": 0.2,
        },
        "model": {"type": "mlp", "hidden": [64, 64], "numeric_embedding": "piecewise_linear"},
        "optimizer": {"name": "adam", "lr": 0.001},
        "train": {"epochs": epochs, "batch_size": 64, "device": "cpu"},
        "output": {"dir": out, "plot": False},
    }


CASES: dict[str, Callable[[str], dict[str, Any]]] = {
    "diamonds MLP 64-64, batch 256, 5 epochs": lambda out: _diamonds(256, 5, out),
    "diamonds MLP 64-64, batch 1024, 5 epochs": lambda out: _diamonds(1024, 5, out),
    "diamonds MLP 128-128 (the sweeps' widest), batch 1024, 5 epochs": lambda out: _diamonds(
        1024, 5, out, (128, 128)
    ),
    "starter MLP + piecewise_linear, batch 64, concrete, 50 epochs": lambda out: _starter(50, out),
}


def train_seconds(settings: dict[str, Any], threads: int) -> float:
    """`recipe.run` with `threads` intra-op threads; the summary's train_seconds."""
    torch.set_num_threads(threads)
    cfg = config_module.from_document(yamlio.Document(settings, {}, "bench"), ROOT)
    summary = recipe.run(cfg, recipe.Options(overwrite=True), recipe.Silent())
    return float(summary["timings"]["train_seconds"])


@contextmanager
def busy_cores() -> Iterator[None]:
    """One pure-Python spin loop pinned to each CPU this process may run on."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)]) for cpu in sorted(os.sched_getaffinity(0))
    ]
    time.sleep(1.0)  # let them start spinning
    try:
        yield
    finally:
        for process in spinners:
            process.kill()
            process.wait()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(rounds: int, variants: list[int]) -> dict[str, dict[int, list[float]]]:
    times: dict[str, dict[int, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            settings = make(str(Path(tmp) / "run"))
            train_seconds(settings, 1)  # warm up: the data cache, imports, first allocations
            times[name] = {n: [] for n in variants}
            for _ in range(rounds):
                for n in variants:
                    times[name][n].append(train_seconds(settings, n))
    return times


def report(label: str, times: dict[str, dict[int, list[float]]], before: str, after: str) -> None:
    print(f"\n## {label} (load average before: {before}; after: {after})")
    variants = list(next(iter(times.values())))
    heads = " | ".join(f"{_name(n)} s (median)" for n in variants)
    ratios = " | ".join(f"{_name(n)} / 1 thread" for n in variants if n != 1)
    print(f"| case | {heads} | {ratios} |")
    print("|---" * (1 + len(variants) + len(variants) - 1) + "|")
    for name, by in times.items():
        medians = {n: statistics.median(v) for n, v in by.items()}
        cells = " | ".join(f"{medians[n]:.2f}" for n in variants)
        rel = " | ".join(f"{medians[n] / medians[1]:.2f}x" for n in variants if n != 1)
        print(f"| {name} | {cells} | {rel} |")
    for name, by in times.items():
        print(f"  {name}: " + "; ".join(f"{_name(n)}: {[round(s, 2) for s in v]}" for n, v in by.items()))


def _name(n: int) -> str:
    return f"default ({n})" if n == DEFAULT_THREADS else f"{n} thread{'s' if n > 1 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["idle", "loaded"], default=None)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    variants = sorted({1, 2, DEFAULT_THREADS})
    print(
        f"torch {torch.__version__}, {cpus} CPUs in this process's affinity, torch's default threads: "
        f"{DEFAULT_THREADS}, interop threads: {torch.get_num_interop_threads()}"
    )
    if args.only in (None, "idle"):
        before = loadavg()
        times = measure(args.rounds, variants)
        report("idle (no load from the bench)", times, before, loadavg())
    if args.only in (None, "loaded"):
        with busy_cores():
            before = loadavg()
            times = measure(args.rounds, variants)
            after = loadavg()
        report(f"loaded: one busy loop pinned to each of the {cpus} CPUs", times, before, after)


if __name__ == "__main__":
    main()
