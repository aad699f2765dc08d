"""Test R² of a sweep's refit ensemble (sweep.ensemble, sweep.refit_seeds) against its best
single trial and the references, on real tables, side by side on the same splits.

    .venv/bin/python bench/ensemble.py                                  # concrete, diabetes; 2 splits
    .venv/bin/python bench/ensemble.py --tables concrete --splits 3 --trials 16 --ensemble 20
    .venv/bin/python bench/ensemble.py --config starter --trials 0 --ensemble 0 --seeds 5 --members
    .venv/bin/python bench/ensemble.py --config starter --trials 0 --ensemble 0 --seeds 1  # as init writes it

For each table and split (bench/quality.py's seeded 75/25 split, seeds 0, 1, ...):
  - `mse-train init` on the training rows: `--config quick` sweeps `init --quick`'s config
    (the MLP starter and the sweep section init writes), `--config starter` the config init
    writes (the race's winner, its sweep section and its budget, `sweep.time_limit`);
    `sweep.ensemble` and `sweep.refit_seeds` set from the options, and `sweep.trials` with
    --trials;
  - `mse-train sweep` with its refit: the ensemble's checkpoint, ensemble/best.pt (the chosen
    trials, or the winner alone with --ensemble 0, each trained --seeds times);
  - `mse-train run best.yaml`: the sweep's best single trial on all training rows, as the
    sweep without an ensemble refits it (the same trials: one sweep serves both);
  - the references of bench/references.py (RidgeCV, HistGradientBoosting, LightGBM, XGBoost,
    MLPRegressor).
  - with --members, each model the refit trained (ensemble.json's `trained`), run alone.
  - with --ensemble 0 --seeds 1 (the sweep init writes) there is no ensemble: the refit is
    `run` of best.yaml (the winner's bags, when its config bags), scored beside `run` of the
    config the sweep started from (the starter, as `init` + `run` give it).
Every mse-train number is `mse-train eval ... test.csv --json` on the held-out rows. The
out-of-fold MSE of the ensemble and of the best trial come from the sweep's ensemble.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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


def _members(work: Path, test_csv: Path) -> list[float]:
    """Test R² of each model the refit trained (ensemble.json's `trained`), run alone."""
    r2 = []
    trained = json.loads((work / "sweep" / "ensemble" / "ensemble.json").read_text())["trained"]
    for i, member in enumerate(trained):
        cfg = member["config"]
        cfg["output"].update(dir=str(work / "members" / str(i)), plot=False)
        path = work / "members" / f"{i}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        done = _cli("run", path, "-q", "--overwrite")
        if done.returncode != 0:
            raise RuntimeError(f"run {path}: {done.stderr.strip()[-300:]}")
        r2.append(_r2(work / "members" / str(i) / "best.pt", test_csv))
    return r2


def measure(
    name: str, seed: int, trials: int | None, steps: int, seeds: int, base: str, members: bool
) -> dict[str, Any]:
    table = TABLES[name]
    work = WORK.parent / "ensemble" / f"{name}-split{seed}"
    train_csv, test_csv = split(table, work, seed)
    config, chose = starter(table, train_csv, work)
    sets = [f"sweep.ensemble={steps}", f"sweep.refit_seeds={seeds}", *table.sets]
    sets += [f"sweep.trials={trials}"] if trials is not None else []
    args: list[str | Path] = ["sweep", work / f"{base}.yaml", "-o", work / "sweep", "--json", "-q"]
    for item in sets:
        args += ["--set", item]
    shutil.rmtree(work / "sweep", ignore_errors=True)  # a sweep of an earlier run is not resumed
    started = time.perf_counter()
    done = _cli(*args)
    sweep_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sweep on {name}: {done.stderr.strip()[-500:]}")
    found = json.loads(done.stdout)
    chosen = found.get("ensemble")
    if chosen is None:  # the winner alone, refit by `run` of best.yaml
        refit = _r2(Path(found["checkpoint"]), test_csv)
        ran = _cli("run", work / f"{base}.yaml", "-q", "--overwrite", "-o", work / "start")
        if ran.returncode != 0:
            raise RuntimeError(f"run {base}.yaml on {name}: {ran.stderr.strip()[-300:]}")
        refs = references(config, train_csv, test_csv, 10_000)
        return {
            "table": name,
            "seed": seed,
            "ensemble": refit,
            "best_trial": _r2(work / "start" / "best.pt", test_csv),  # here: the config it started from
            "refs": {k: refs[k].r2 for k in REFERENCES},
            "members": 1,
            "trials": found["trials"],
            "starter": chose,
            "oof_ensemble": float("nan"),
            "oof_best": float("nan"),
            "sweep_seconds": sweep_seconds,
            "alone": [],
        }
    single = _cli("run", work / "sweep" / "best.yaml", "-q", "--overwrite")
    if single.returncode != 0:
        raise RuntimeError(f"run best.yaml on {name}: {single.stderr.strip()[-300:]}")
    refs = references(config, train_csv, test_csv, 10_000)
    alone = _members(work, test_csv) if members else []
    return {
        "table": name,
        "seed": seed,
        "ensemble": _r2(work / "sweep" / "ensemble" / "best.pt", test_csv),
        "best_trial": _r2(work / "sweep" / "best" / "best.pt", test_csv),
        "refs": {k: refs[k].r2 for k in REFERENCES},
        "members": len(chosen["members"]),
        "trials": found["trials"],  # on the leaderboard (cut ones too)
        "starter": chose,
        "oof_ensemble": chosen["oof_mse"],
        "oof_best": chosen["best_trial"]["oof_mse"],
        "sweep_seconds": sweep_seconds,
        "alone": alone,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="concrete,diabetes")
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16, help="sweep.trials; 0 = the config's own")
    parser.add_argument("--ensemble", type=int, default=20, help="sweep.ensemble (0: the winner alone)")
    parser.add_argument("--seeds", type=int, default=1, help="sweep.refit_seeds")
    parser.add_argument("--config", choices=("quick", "starter"), default="quick")
    parser.add_argument("--members", action="store_true", help="also each refit model's R² alone")
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    print(
        "| table | split | ensemble R² | best trial R² | best reference R² (which) | members | "
        "OOF MSE ensemble / best trial | trials | sweep s |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in args.tables.split(","):
        for seed in range(args.splits):
            trials = args.trials or None
            row = measure(name, seed, trials, args.ensemble, args.seeds, args.config, args.members)
            rows.append(row)
            refs = {k: v for k, v in row["refs"].items() if v is not None}
            best = max(refs, key=lambda k: refs[k])
            print(
                f"| {name} | {seed} | {row['ensemble']:.4f} | {row['best_trial']:.4f} | "
                f"{refs[best]:.4f} ({best}) | {row['members']} | "
                f"{row['oof_ensemble']:.4g} / {row['oof_best']:.4g} | {row['trials']} | "
                f"{row['sweep_seconds']:.0f} |",
                flush=True,
            )
            if row["alone"]:
                shown = ", ".join(f"{r:.4f}" for r in row["alone"])
                print(f"|  | members alone: {shown}; their mean {np.mean(row['alone']):.4f} |", flush=True)
    if args.ensemble == 0 and args.seeds == 1:
        print(
            "\n(no ensemble: 'ensemble R²' is the refit of the winner, "
            "'best trial R²' the starting config's run)"
        )
    gain = [r["ensemble"] - r["best_trial"] for r in rows]
    ref_gap = [r["ensemble"] - max(v for v in r["refs"].values() if v is not None) for r in rows]
    print(f"\nmean test R² gain of the ensemble over the best trial: {np.mean(gain):+.4f} (per split {gain})")
    print(f"mean test R² gap of the ensemble to the best reference: {np.mean(ref_gap):+.4f}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
