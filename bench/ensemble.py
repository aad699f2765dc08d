"""Test R² of a sweep's ensemble (sweep.ensemble) against its best single trial and the
scikit-learn references, on real tables, side by side on the same splits.

    .venv/bin/python bench/ensemble.py                                  # concrete, diabetes; 2 splits
    .venv/bin/python bench/ensemble.py --tables concrete --splits 3 --trials 16 --ensemble 20

For each table and split (bench/quality.py's seeded 75/25 split, seeds 0, 1, ...):
  - `mse-train init --quick` on the training rows (the MLP starter and the sweep section
    init writes), with `sweep.trials`, `sweep.ensemble` set from the options;
  - `mse-train sweep` with its refit: the ensemble's checkpoint, ensemble/best.pt;
  - `mse-train run best.yaml`: the sweep's best single trial on all training rows, as the
    sweep without an ensemble refits it (the same trials: one sweep serves both);
  - the references of bench/references.py (RidgeCV, HistGradientBoosting, MLPRegressor).
Every mse-train number is `mse-train eval ... test.csv --json` on the held-out rows. The
out-of-fold MSE of the ensemble and of the best trial come from the sweep's ensemble.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import WORK, _cli, split, starter
from references import NAMES as REFERENCES
from references import references
from tables import TABLES


def _r2(ckpt: Path, test_csv: Path) -> float:
    done = _cli("eval", ckpt, test_csv, "--json")
    if done.returncode != 0:
        raise RuntimeError(f"eval {ckpt}: {done.stderr.strip()[-300:]}")
    return float(json.loads(done.stdout)["r2"])


def measure(name: str, seed: int, trials: int, steps: int) -> dict[str, Any]:
    table = TABLES[name]
    work = WORK.parent / "ensemble" / f"{name}-split{seed}"
    train_csv, test_csv = split(table, work, seed)
    config, _ = starter(table, train_csv, work)
    sets = [f"sweep.trials={trials}", f"sweep.ensemble={steps}", *table.sets]
    args: list[str | Path] = ["sweep", work / "quick.yaml", "-o", work / "sweep", "--json", "-q"]
    for item in sets:
        args += ["--set", item]
    started = time.perf_counter()
    done = _cli(*args)
    sweep_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sweep on {name}: {done.stderr.strip()[-500:]}")
    chosen = json.loads(done.stdout)["ensemble"]
    single = _cli("run", work / "sweep" / "best.yaml", "-q", "--overwrite")
    if single.returncode != 0:
        raise RuntimeError(f"run best.yaml on {name}: {single.stderr.strip()[-300:]}")
    refs = references(config, train_csv, test_csv, 10_000)
    return {
        "table": name,
        "seed": seed,
        "ensemble": _r2(work / "sweep" / "ensemble" / "best.pt", test_csv),
        "best_trial": _r2(work / "sweep" / "best" / "best.pt", test_csv),
        "refs": {k: refs[k].r2 for k in REFERENCES},
        "members": len(chosen["members"]),
        "oof_ensemble": chosen["oof_mse"],
        "oof_best": chosen["best_trial"]["oof_mse"],
        "sweep_seconds": sweep_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="concrete,diabetes")
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--ensemble", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    print(
        "| table | split | ensemble R² | best trial R² | best reference R² (which) | members | "
        "OOF MSE ensemble / best trial | sweep s |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in args.tables.split(","):
        for seed in range(args.splits):
            row = measure(name, seed, args.trials, args.ensemble)
            rows.append(row)
            refs = {k: v for k, v in row["refs"].items() if v is not None}
            best = max(refs, key=lambda k: refs[k])
            print(
                f"| {name} | {seed} | {row['ensemble']:.4f} | {row['best_trial']:.4f} | "
                f"{refs[best]:.4f} ({best}) | {row['members']} | "
                f"{row['oof_ensemble']:.4g} / {row['oof_best']:.4g} | {row['sweep_seconds']:.0f} |",
                flush=True,
            )
    gain = [r["ensemble"] - r["best_trial"] for r in rows]
    ref_gap = [r["ensemble"] - max(v for v in r["refs"].values() if v is not None) for r in rows]
    print(f"\nmean test R² gain of the ensemble over the best trial: {np.mean(gain):+.4f} (per split {gain})")
    print(f"mean test R² gap of the ensemble to the best reference: {np.mean(ref_gap):+.4f}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
