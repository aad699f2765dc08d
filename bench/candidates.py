"""Each starter candidate with its bags, per split, and what a race rule would have chosen.

Reads the work folders `bench/quality.py` leaves (bench/out/quality/TABLE[-splitK]/): the
race's CV R² from the comments of the starter.yaml init wrote there, and the test R² of
the runs `--variants mlp_bags5,tabm_bags5` trained (each best.pt scored again on the
split's test.csv with `mse-train eval --json`). Then, per table, the mean test R² of

- linear, mlp_bags5, tabm_bags5: each candidate as init writes it (networks with 5 bags);
- starter: what init chose (the race with TabM standing for the networks);
- no_tabm: the race of the linear model against the MLP alone (the higher CV R²), the MLP
  with its bags: what init would write without TabM in the race;
- bagged_race: the race of the linear model against the MLP with its 5 bags, scored by
  `mse-train cv` of quick.yaml with `train.bags=5` on the split's training rows (5 folds, as
  the race; cached in the work folder as race_mlp_bags5.json), the higher CV R² written;
- three: the highest CV R² of the linear model, the MLP with its bags and TabM (one per
  fold, as init raced it), that candidate written with its bags;
- better: the better of linear and mlp_bags5 on the table's mean (the issue's "better of
  the linear and MLP starters").

Usage: python bench/candidates.py TABLE[,TABLE...] [--splits 5]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from statistics import mean

from tables import TABLES

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "quality"
RACE = re.compile(r"^#\s+(linear|MLP|TabM)\b[^:]*:\s+(-?[0-9.]+) \(")
RUNS = ("linear", "mlp_bags5", "tabm_bags5", "starter")


def race(starter: Path) -> dict[str, float]:
    """The race's CV R² per candidate, from the comments init wrote."""
    scores = {}
    for line in starter.read_text().splitlines():
        if (found := RACE.match(line)) is not None:
            scores[found.group(1).lower()] = float(found.group(2))
    return scores


def test_r2(work: Path, run: str) -> float | None:
    best = work / "runs" / run / "best.pt"
    if not best.exists():
        return None
    done = subprocess.run(
        [sys.executable, "-m", "mse_train", "eval", str(best), str(work / "test.csv"), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return float(json.loads(done.stdout)["r2"]) if done.returncode == 0 else None


def bagged_cv(work: Path, sets: tuple[str, ...]) -> float:
    """The 5-fold CV R² of the MLP with 5 bags on the split's training rows (cached)."""
    cached = work / "race_mlp_bags5.json"
    if not cached.exists():
        done = subprocess.run(
            [sys.executable, "-m", "mse_train", "cv", str(work / "quick.yaml"), "-k", "5", "--json",
             "-o", str(work / "runs" / "cv_mlp_bags5"), "--set", "train.bags=5",
             *(a for item in sets for a in ("--set", item))],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        cached.write_text(json.dumps({"r2": json.loads(done.stdout)["r2"]["mean"]}))
    return float(json.loads(cached.read_text())["r2"])


def split(root: Path, table: str, k: int) -> dict[str, float | None] | None:
    work = root / (table if k == 0 else f"{table}-split{k}")
    if not (work / "starter.yaml").exists():
        return None
    cv = race(work / "starter.yaml")
    out: dict[str, float | None] = {run: test_r2(work, run) for run in RUNS}
    if out["linear"] is None:  # init chose the linear model: the starter is it
        out["linear"] = out["starter"]
    if "linear" in cv and "mlp" in cv:
        out["no_tabm"] = out["linear"] if cv["linear"] >= cv["mlp"] else out["mlp_bags5"]
        cv["mlp_bags5"] = bagged_cv(work, TABLES[table].sets)
        out["bagged_race"] = out["linear"] if cv["linear"] >= cv["mlp_bags5"] else out["mlp_bags5"]
        if "tabm" in cv:  # TabM (its CV one TabM per fold) beside them: the highest of the three
            three = {"linear": cv["linear"], "mlp_bags5": cv["mlp_bags5"], "tabm_bags5": cv["tabm"]}
            out["three"] = out[max(three, key=lambda name: three[name])]
    print(f"{table} split {k}: race {cv}, test {out}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--work", type=Path, default=WORK, help="bench/quality.py's work folder")
    args = parser.parse_args()
    columns = ("linear", "mlp_bags5", "tabm_bags5", "starter", "no_tabm", "bagged_race", "three")
    compared = ("starter", "no_tabm", "bagged_race", "three")
    print(
        "| table | splits | "
        + " | ".join(columns)
        + " | better | "
        + " | ".join(f"{c} - better" for c in compared)
        + " |"
    )
    print("|---|---:|" + "---:|" * (len(columns) + 1 + len(compared)))
    gaps: dict[str, list[float]] = {c: [] for c in compared}
    means: dict[str, float | None]
    for table in args.tables.split(","):
        rows = [r for k in range(args.splits) if (r := split(args.work, table, k)) is not None]
        means = {}
        for column in columns:
            values = [v for r in rows if (v := r.get(column)) is not None]
            means[column] = mean(values) if len(values) == len(rows) and rows else None
        both = [means["linear"], means["mlp_bags5"]]
        better = max(both) if None not in both else None  # type: ignore[type-var]
        cells = [f"{means[c]:.4f}" if means[c] is not None else "-" for c in columns]
        diffs = []
        for column in compared:
            if better is None or means[column] is None:
                diffs.append("-")
                continue
            gap = means[column] - better  # type: ignore[operator]
            gaps[column].append(gap)
            diffs.append(f"{gap:+.4f}")
        shown = f"{better:.4f}" if better is not None else "-"
        print(f"| {table} | {len(rows)} | " + " | ".join(cells) + f" | {shown} | " + " | ".join(diffs) + " |")
    for column, values in gaps.items():
        if values:
            worst, n = min(values), len(values)
            print(f"\n{column} - better: mean {mean(values):+.4f}, worst {worst:+.4f} over {n} tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
