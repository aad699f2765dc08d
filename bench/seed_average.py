"""Test R² of one config trained with several seeds: each seed alone, and the mean of their
predictions, on bench/quality.py's seeded 75/25 splits.

    OMP_NUM_THREADS=1 .venv/bin/python bench/seed_average.py concrete,cpus 3 5 [quick|starter] [fixed]

TABLES SPLITS SEEDS [CONFIG] [fixed]: for each table and split, `mse-train init` (and `init
--quick`) on the training rows, then `mse-train run CONFIG.yaml --set seed=S` for S in
0..SEEDS-1 and `mse-train predict` on the held-out rows. The seed also draws the validation
rows (`data.val_fraction`), so each seed trains on other rows; with `fixed`, every seed
trains on the same 80 % and stops early on the same 20 % (`data.train`, `data.val` set to a
seeded split of the training rows made once), so only the initial weights, the batch order
and dropout differ. Prints one JSON line per split: each seed's R², their
mean, the R² of the mean prediction of the first 3 and of all seeds, and the best of the
references (bench/references.py) on the same rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import WORK, _cli, split, starter
from references import references
from tables import TABLES


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _fixed(train_csv: Path, work: Path) -> list[str]:
    """`--set`s that train every seed on one seeded 80 % of `train_csv` and validate on the rest."""
    frame = pd.read_csv(train_csv)
    order = np.random.default_rng(0).permutation(len(frame))
    cut = round(len(frame) * 0.8)
    fit, val = work / "fit.csv", work / "val.csv"
    frame.iloc[np.sort(order[:cut])].to_csv(fit, index=False)
    frame.iloc[np.sort(order[cut:])].to_csv(val, index=False)
    return ["--set", f"data.train={fit}", "--set", f"data.val={val}", "--set", "data.val_fraction=0.0"]


def main(argv: list[str]) -> int:
    names, splits, seeds = argv[0].split(","), int(argv[1]), int(argv[2])
    base = argv[3] if len(argv) > 3 else "quick"
    fixed = len(argv) > 4 and argv[4] == "fixed"
    for name in names:
        table = TABLES[name]
        for seed in range(splits):
            work = WORK.parent / "seed_average" / f"{name}-split{seed}"
            train_csv, test_csv = split(table, work, seed)
            starter_config, chose = starter(table, train_csv, work)
            y = pd.read_csv(test_csv)[table.target].to_numpy(float)
            predictions = []
            sets = _fixed(train_csv, work) if fixed else []
            for s in range(seeds):
                out = work / "runs" / f"{base}-seed{s}"
                config = work / f"{base}.yaml"
                done = _cli("run", config, "-q", "-o", out, "--overwrite", "--set", f"seed={s}", *sets)
                if done.returncode != 0:
                    raise RuntimeError(f"run on {name}: {done.stderr.strip()[-300:]}")
                written = work / f"predicted-{s}.csv"
                done = _cli("predict", out / "best.pt", test_csv, "-o", written)
                if done.returncode != 0:
                    raise RuntimeError(f"predict on {name}: {done.stderr.strip()[-300:]}")
                predictions.append(pd.read_csv(written)[f"{table.target}_pred"].to_numpy(float))
            alone = [_r2(y, p) for p in predictions]
            refs = {k: r.r2 for k, r in references(starter_config, train_csv, test_csv, 10_000).items()}
            best = max((k for k in refs if refs[k] is not None), key=lambda k: refs[k] or 0.0)
            print(
                json.dumps(
                    {
                        "table": name,
                        "split": seed,
                        "config": base,
                        "validation": "fixed" if fixed else "drawn by each seed",
                        "starter": chose,
                        "seeds": [round(r, 4) for r in alone],
                        "seeds_mean": round(float(np.mean(alone)), 4),
                        "mean_of_3": round(_r2(y, np.mean(predictions[:3], axis=0)), 4),
                        "mean_of_all": round(_r2(y, np.mean(predictions, axis=0)), 4),
                        "best_reference": [best, round(refs[best] or 0.0, 4)],
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
