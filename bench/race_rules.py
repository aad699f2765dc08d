"""What each rule for choosing among init's race candidates would have scored, from one
`bench/quality.py` run: per split, the race's CV R² as init wrote it in starter.yaml, and
each candidate's test R² (its checkpoint from that run on the split's test rows).

    .venv/bin/python bench/quality.py --tables clothing --splits 5 --variants none
    .venv/bin/python bench/race_rules.py --tables clothing

Rules: "highest of three" (the best CV R² among linear, MLP and TabM), "stand-in" (init's:
TabM, when it finished, stands for the networks; the MLP only when TabM did not finish),
"linear vs MLP" (the race before TabM). Cells: mean test R² over the splits found.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import SEED, WORK
from tables import TABLES

NAMES = {"linear": "linear", "MLP": "mlp", "TabM": "tabm"}
RULES = {
    "highest of three": ("linear", "mlp", "tabm"),
    "stand-in": ("linear", "tabm"),  # with the MLP when TabM has no score
    "linear vs MLP": ("linear", "mlp"),
}


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def split_rows(name: str, splits: int) -> list[dict[str, object]]:
    from mse_train import api

    rows = []
    for seed in range(splits):
        work = WORK / (name if seed == SEED else f"{name}-split{seed}")
        if not (work / "runs" / "starter" / "best.pt").exists():
            continue
        text = (work / "starter.yaml").read_text()
        found = re.findall(r"^#   (linear|MLP|TabM)[^:]*: +(-?[0-9.]+) \(", text, flags=re.MULTILINE)
        cv = {NAMES[n]: float(v) for n, v in found}
        chosen = re.search(r"^model:\n  type: (\w+)", text, flags=re.MULTILINE)
        test = pd.read_csv(work / "test.csv")
        target = TABLES[name].target
        y = test[target].to_numpy(float)
        scores = {}
        for kind in NAMES.values():
            run = work / "runs" / ("starter" if chosen and chosen.group(1) == kind else kind) / "best.pt"
            if run.exists():
                predicted = api.load(run).predict(test)[f"{target}_pred"].to_numpy(float)
                scores[kind] = _r2(y, predicted)
        row: dict[str, object] = {
            "table": name,
            "split": seed,
            **{f"cv {k}": v for k, v in cv.items()},
            **scores,
        }
        for rule, kinds in RULES.items():
            among = [k for k in kinds if k in cv and k in scores]
            if rule == "stand-in" and "tabm" not in cv:
                among = [k for k in ("linear", "mlp") if k in cv and k in scores]
            row[rule] = scores[max(among, key=lambda k: cv[k])] if among else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", required=True, help="comma-separated names from bench/tables.py")
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args(argv)
    frame = pd.DataFrame([r for t in args.tables.split(",") for r in split_rows(t, args.splits)])
    pd.set_option("display.width", 250)
    print(frame.round(4).to_string(index=False))
    columns = [c for c in (*NAMES.values(), *RULES) if c in frame]
    means = frame.groupby("table", sort=False)[columns].mean().round(4)
    means.insert(0, "splits", frame.groupby("table", sort=False).size())
    print()
    print("| table | " + " | ".join(means.columns) + " |")
    print("|---" * (len(means.columns) + 1) + "|")
    for name, row in means.iterrows():
        print(f"| {name} | " + " | ".join(f"{v:g}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
