"""What each rule for choosing among init's race candidates would have scored, from one
`bench/quality.py` run: per split, the race's CV R² as init wrote it in starter.yaml, and
each candidate's test R² (its checkpoint from that run on the split's test rows).

    .venv/bin/python bench/quality.py --tables clothing --splits 5 --variants none
    .venv/bin/python bench/race_rules.py --tables clothing

Rules: "highest of three" (the best CV R² among linear, MLP and TabM), "stand-in" (init's
before 2026-12-07: TabM, when it finished, stands for the networks; the MLP only when TabM
did not finish), "linear vs MLP" (the race before TabM); "linear by M" (the stand-in's
network unless the linear model's CV R² is ahead by more than M); "linear by S of the
error" (the linear model only when its CV error, 1 - R², is below the network's by more
than the share S of it); "networks" (the stand-in's network whatever the linear model
scored); "linear by the others' bias" (M measured on the other tables: the mean over their
splits of how much more the network gained over the linear model on the test rows than
in CV, a leave-one-table-out check of a margin read from these runs); "linear by the
others' share" (S from GRID, the best on the other tables: the same check for S). Cells: mean test R²
over the splits found; "better" is the higher of the linear model's and the MLP's means
(the issue's "better of the linear and MLP starters").
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
MARGINS = (0.005, 0.01, 0.02)  # "linear by M"
SHARES = (0.02, 0.05, 0.1)  # "linear by S of the error"
GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # the shares "linear by the others' share" chooses from


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
        net = "tabm" if "tabm" in cv else "mlp"
        if net in cv and "linear" in cv and net in scores and "linear" in scores:
            row["net"] = net
            lead = cv["linear"] - cv[net]  # the linear model's CV lead over the network
            row["lead"], row["gain"] = lead, scores[net] - scores["linear"]  # and the network's test lead
            for margin in MARGINS:
                row[f"linear by {margin:g}"] = scores["linear" if lead > margin else net]
            for share in sorted({*SHARES, *GRID}):  # the linear CV error below the network's by this share
                ahead = 1 - cv["linear"] < (1 - cv[net]) * (1 - share)
                row[f"linear by {share:g} of the error"] = scores["linear" if ahead else net]
            row["networks"] = scores[net]
        rows.append(row)
    return rows


def by_others_bias(frame: pd.DataFrame) -> pd.Series:
    """Per split, the rule "linear by M" with M the bias measured on the other tables: the
    mean over their splits of gain + lead (the network's test lead minus its CV lead)."""
    bias = frame["gain"] + frame["lead"]
    out = []
    for _, row in frame.iterrows():
        margin = bias[frame["table"] != row["table"]].mean()
        out.append(row["linear" if row["lead"] > margin else row["net"]])
    return pd.Series(out, index=frame.index)


def by_others_share(frame: pd.DataFrame) -> tuple[pd.Series, dict[str, float]]:
    """Per split, the rule "linear by S of the error" with S from GRID the one whose mean test
    R² over the other tables is highest (the smaller of equals): a leave-one-table-out check
    of choosing S from these runs. Returns the scores and each table's S."""
    columns = {share: f"linear by {share:g} of the error" for share in GRID}
    chosen = {}
    for table in frame["table"].unique():
        others = frame[frame["table"] != table].groupby("table")[list(columns.values())].mean().mean()
        chosen[table] = max(GRID, key=lambda share: (round(others[columns[share]], 6), -share))
    out = [row[columns[chosen[row["table"]]]] for _, row in frame.iterrows()]
    return pd.Series(out, index=frame.index), chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", required=True, help="comma-separated names from bench/tables.py")
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args(argv)
    frame = pd.DataFrame([r for t in args.tables.split(",") for r in split_rows(t, args.splits)])
    pd.set_option("display.width", 250)
    if "lead" in frame:
        frame["linear by the others' bias"] = by_others_bias(frame)
        frame["linear by the others' share"], shares = by_others_share(frame)
        print("the others' share, per table left out:", shares)
        bias = frame["gain"] + frame["lead"]
        print(f"bias (gain + lead) over all splits: mean {bias.mean():.4f}, std {bias.std():.4f}")
    print(frame.round(4).to_string(index=False))
    rules = [
        *RULES,
        *(f"linear by {m:g}" for m in MARGINS),
        *(f"linear by {s:g} of the error" for s in SHARES),
        "networks",
        "linear by the others' bias",
        "linear by the others' share",
    ]
    columns = [c for c in (*NAMES.values(), *rules) if c in frame]
    means = frame.groupby("table", sort=False)[columns].mean()
    if "linear" in means and "mlp" in means:
        better = means[["linear", "mlp"]].max(axis=1)
        print("\nper rule: mean over tables; rule - better per table, the worst and those below 0.005")
        for rule in [r for r in rules if r in means]:
            short = means[rule] - better
            missed = short[short < -0.005]
            named = ", ".join(f"{t} {v:+.3f}" for t, v in missed.items())
            worst = f"worst {short.min():+.4f}"
            print(f"  {rule:<32} {means[rule].mean():.4f}  {worst}  missed {len(missed)}: {named}")
    means = means.round(4)
    means.insert(0, "splits", frame.groupby("table", sort=False).size())
    print()
    print("| table | " + " | ".join(means.columns) + " |")
    print("|---" * (len(means.columns) + 1) + "|")
    for name, row in means.iterrows():
        print(f"| {name} | " + " | ".join(f"{v:g}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
