"""Test R² of mse-train's starter config against scikit-learn, on real tables.

    .venv/bin/python bench/quality.py                        # every table, every variant
    .venv/bin/python bench/quality.py --write bench/quality_results.md
    .venv/bin/python bench/quality.py --quick                # 3 small tables, fewer variants
    .venv/bin/python bench/quality.py --tables concrete,housing --variants linear_l2
    .venv/bin/python bench/quality.py --splits 5             # means over 5 random splits
    .venv/bin/python bench/quality.py --variants none        # the starter, its candidates, references

For each table (bench/tables.py; sources and licences in data/README.md) a fixed, seeded
75/25 split of the rows is written to bench/out/quality/TABLE/{train,test}.csv (the test
row numbers to split.json). Then, on the same split:
  - starter: `mse-train init train.csv` (which races a linear model and an MLP by CV on
    the training rows and writes the winner) then `mse-train run` with nothing changed,
    through the installed CLI as a user runs it; test R² from `mse-train eval best.pt
    test.csv --json`;
  - linear / mlp / tabm: each candidate as init would write it, trained and scored
    the same way (the one init chose is the starter's own run; the networks with init's
    5 bags on tables of up to 10,000 training rows; the MLP is the `init --quick` config;
    the linear one that config with init's linear model section, every row trained on
    (data.val_fraction 0, its epochs and patience) and ridge's penalty; TabM that config
    with init's TabM model section, on tables where it races). "better of" is the highest
    of the candidates' test R²s: what a perfect choice between them would score;
  - each variant in VARIANTS: the `mse-train init --quick` config (the MLP, unchecked) with
    its `--set` overrides. A variant whose key or choice the installed mse-train does not
    know is reported as n/a, not an error;
  - references from scikit-learn, with the preprocessing mse-train does (numeric columns
    filled with training means and standardised, the starter's categorical columns one-hot
    encoded with empty cells as their own category): RidgeCV, HistGradientBoostingRegressor,
    LightGBM and XGBoost (defaults; categories as native categorical features) and
    MLPRegressor((64, 64)) with early stopping, its target standardised as mse-train's is;
and what init's race found on the training rows: each candidate's 5-fold CV R² (read from
the comments init writes; the "init chose" column).
The wall seconds of mse-train are those of the `mse-train run` process (start-up included);
those of scikit-learn are fit + predict in this process. scikit-learn, LightGBM and XGBoost are
needed only here: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import TABLES, Table, TablesError, path

try:
    from references import NAMES as REFERENCES
    from references import Result, references
except ImportError as exc:  # scikit-learn missing: main() says so
    MISSING: ImportError | None = exc
else:
    MISSING = None

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "quality"
SEED = 0
TEST_SHARE = 0.25
LOSS_MARGIN = 0.01  # the bar: within 0.01 R² of the best reference
CHOICE_MARGIN = 0.005  # and never below the better of the linear and MLP starters by more
CANDIDATES = ("linear", "mlp", "tabm")  # init's candidates, trained as init writes them
# TabM as init writes it (mse_train/config/starter.py), on quick.yaml's MLP; it races only on
# tables of at most choose.TABM_MOST_ROWS rows
TABM_SETS = (
    "model={type: tabm, k: 16, sharing: tabm, width: 128, blocks: 2, activation: relu, "
    "dropout: 0.1, numeric_embedding: piecewise_linear}",
)


@dataclass(frozen=True)
class Variant:
    """A named change to the starter config: `--set` overrides, as a user would type them."""

    name: str
    sets: tuple[str, ...]
    quick: bool = False  # also run under --quick
    only: tuple[str, ...] = ()  # tags of the tables it runs on (empty: every table)
    base: str = "quick"  # the config it changes: quick.yaml (the MLP), or starter.yaml (init's choice)


# Add a line here to measure a new option. A variant the installed mse-train rejects for an
# unknown key or choice shows as "n/a", so lines for options still on other branches can stay.
# Each applies to the `init --quick` config: the MLP with piecewise-linear embeddings (the
# "mlp" column, always measured).
LINEAR_L2 = ("model={type: linear}", "regularization.l2=0.001")
VARIANTS: list[Variant] = [
    # the starter before issue 13: the same MLP, numeric inputs as they are
    Variant("mlp_plain", ("model.numeric_embedding=none",), quick=True),
    # a linear model as the old starter trained it (Adam, batches of 64): on small tables it
    # stops at 200 epochs still improving, so it understates what a linear model can do
    Variant("linear_l2", (*LINEAR_L2, "model.numeric_embedding=none"), only=("small",)),
    # the same solved to convergence: L-BFGS on the whole table at once, ridge's equivalent
    Variant(
        "linear_lbfgs",
        (*LINEAR_L2, "optimizer={name: lbfgs}", "train.batch_size=null"),
        quick=True,
    ),
    Variant("mlp_l2", ("regularization.l2=0.01",), only=("small",)),
    Variant("mlp_wide", ("model.hidden=[256, 256]",), only=("threshold",)),
    Variant("periodic", ("model.numeric_embedding=periodic",)),
    Variant("resnet", ("model={type: resnet, numeric_embedding: piecewise_linear}",)),
    Variant("tabm", ("model={type: tabm, numeric_embedding: piecewise_linear}",)),
    # the MLP starter 5 times in one network (no weight shared), each from its own weights
    Variant(
        "tabm_packed",
        (
            "model={type: tabm, sharing: packed, k: 5, width: 64, blocks: 2, dropout: 0.0, "
            "numeric_embedding: piecewise_linear}",
        ),
    ),
    # init's own config with 5 bags, each on its own validation rows, best.pt their mean
    # (a network starter; a linear starter, trained on every row, does not bag)
    Variant("starter_bags5", ("train.bags=5",), base="starter"),
    # each network candidate as init writes it on a small table, with its 5 bags: the MLP
    # (whose bags train side by side) and TabM (one after another)
    Variant("mlp_bags5", ("train.bags=5",), only=("small",)),
    Variant("tabm_bags5", (*TABM_SETS, "train.bags=5"), only=("small",)),
]
QUICK_TABLES = ("concrete", "housing", "diabetes")


# ------------------------------------------------------------------------ the split
def split(table: Table, work: Path, seed: int = SEED) -> tuple[Path, Path]:
    """Write TABLE's 75/25 split (seeded; rows kept in file order) and return its two CSVs."""
    frame = pd.read_csv(path(table))
    frame = frame.drop(columns=list(table.drop))
    frame = frame[frame[table.target].notna()].reset_index(drop=True)
    n = len(frame)
    test_rows = np.sort(np.random.default_rng(seed).permutation(n)[: round(n * TEST_SHARE)])
    is_test = np.zeros(n, dtype=bool)
    is_test[test_rows] = True
    work.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = work / "train.csv", work / "test.csv"
    frame[~is_test].to_csv(train_csv, index=False)
    frame[is_test].to_csv(test_csv, index=False)
    (work / "split.json").write_text(json.dumps({"seed": seed, "rows": n, "test": test_rows.tolist()}))
    return train_csv, test_csv


# ------------------------------------------------------------------------ mse-train
def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mse-train")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def starter(table: Table, train_csv: Path, work: Path) -> tuple[dict[str, Any], str]:
    """`mse-train init` on the training rows (starter.yaml), and `init --quick` (quick.yaml,
    what the variants change); returns the starter config as data and what init chose."""
    for name, extra in (("starter", ()), ("quick", ("--quick",))):
        config = work / f"{name}.yaml"
        done = _cli("init", train_csv, "--target", table.target, "--output", config, "--force", *extra)
        if done.returncode != 0:
            raise RuntimeError(f"mse-train init failed on {train_csv}: {done.stderr.strip()}")
    text = (work / "starter.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    raced = re.findall(r"^#   (linear|MLP|TabM)[^:]*: +(\S+)", text, flags=re.MULTILINE)
    scores = " / ".join(f"{name.lower()} {score}" for name, score in raced)
    chose = f"{loaded['model']['type']} ({scores})" if scores else loaded["model"]["type"]
    return loaded, chose


def linear_sets(work: Path) -> tuple[str, ...]:
    """The `--set`s that turn quick.yaml (the MLP) into the linear model init would write:
    its model and optimizer sections, every row trained on, its epochs and stopping, and
    ridge's penalty from the rows init races on."""
    from mse_train.config import loading
    from mse_train.config.starter import LBFGS_EPOCHS, LBFGS_PATIENCE
    from mse_train.data import prepare
    from mse_train.selection import choose, race

    cfg = loading.load(work / "quick.yaml")
    loaded = prepare.load_training(cfg.data, cfg.targets)
    l2 = choose.ridge_l2(race.sample(loaded, race.MAX_ROWS, cfg.seed), cfg, loaded.table.n_rows)
    return (
        "model={type: linear}",
        "optimizer={name: lbfgs, lr: 1.0}",
        "train.batch_size=null",
        "data.val_fraction=0.0",
        f"train.epochs={LBFGS_EPOCHS}",
        f"train.early_stopping={{patience: {LBFGS_PATIENCE}, min_delta: 0.0}}",
        f"regularization.l2={l2!r}",
    )


def train(work: Path, name: str, sets: Sequence[str], test_csv: Path, base: str = "quick") -> Result:
    """`mse-train run BASE.yaml --set ...` then `eval best.pt test.csv --json`."""
    out = work / "runs" / name
    args: list[str | Path] = ["run", work / f"{base}.yaml", "-q", "--json", "-o", out, "--overwrite"]
    for item in sets:
        args += ["--set", item]
    started = time.perf_counter()
    done = _cli(*args)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        said = done.stderr.strip()
        if done.returncode == 2 and ("unknown key" in said or "is not one of" in said):
            return Result(None, None, "n/a (unknown key)")
        last = said.splitlines()[-1] if said else ""
        return Result(None, seconds, f"failed (exit {done.returncode}: {last[:80]})")
    scored = _cli("eval", out / "best.pt", test_csv, "--json")
    if scored.returncode != 0:
        return Result(None, seconds, f"eval failed (exit {scored.returncode})")
    epochs = json.loads(done.stdout).get("best", {}).get("epoch")
    return Result(float(json.loads(scored.stdout)["r2"]), seconds, f"best epoch {epochs}")


# ------------------------------------------------------------------------ the table
def measure(
    table: Table, variants: Sequence[Variant], mlp_rows: int, rejected: set[str], seed: int = SEED
) -> tuple[dict[str, Result], str]:
    """Every method's result on `table`, and what init chose (with its check's gain).

    `rejected` collects variants the installed mse-train refused for an unknown key: they
    are not tried again on the next tables.
    """
    work = WORK / (table.name if seed == SEED else f"{table.name}-split{seed}")
    train_csv, test_csv = split(table, work, seed)
    config, chose = starter(table, train_csv, work)
    results = {"starter": train(work, "starter", table.sets, test_csv, base="starter")}
    from mse_train.config import starter as written
    from mse_train.selection import choose

    rows = len(pd.read_csv(train_csv))
    raced = [k for k in CANDIDATES if k != "tabm" or rows <= choose.TABM_MOST_ROWS]
    bags = written.BAGS if rows <= written.BAG_MOST_ROWS else 1
    for kind in CANDIDATES:  # the one init chose is the starter itself (the same config and seed)
        if kind not in raced:
            results[kind] = Result(None, None, "-")
        elif config["model"]["type"] == kind:
            results[kind] = results["starter"]
        else:
            sets = {"linear": linear_sets(work), "mlp": (), "tabm": TABM_SETS}[kind]
            if kind != "linear":  # a network as init writes it: with its bags on smaller tables
                sets = (*sets, f"train.bags={bags}")
            results[kind] = train(work, kind, (*table.sets, *sets), test_csv)
    scores = [results[k].r2 for k in raced]
    better = max(scores) if None not in scores else None  # type: ignore[type-var]
    results["better"] = Result(better, None, "" if better is not None else "a candidate failed")
    for variant in variants:
        if variant.name in rejected:
            results[variant.name] = Result(None, None, "n/a (unknown key)")
        elif variant.only and not set(variant.only) & set(table.tags):
            results[variant.name] = Result(None, None, "-")
        elif variant.base == "starter" and config["model"]["type"] == "linear":
            # a linear starter trains on every row and does not bag: the starter as it is
            results[variant.name] = results["starter"]
        else:
            sets = (*table.sets, *variant.sets)
            results[variant.name] = train(work, variant.name, sets, test_csv, base=variant.base)
            if results[variant.name].note == "n/a (unknown key)":
                rejected.add(variant.name)
    results.update(references(config, train_csv, test_csv, mlp_rows))
    return results, chose


def combine(runs: list[tuple[dict[str, Result], str]]) -> tuple[dict[str, Result], str, float | None]:
    """One table's splits as one row: mean R² and seconds per method, what init chose on
    each split, and the spread over splits of the starter's gap to the best reference."""
    if len(runs) == 1:
        return runs[0][0], runs[0][1], None
    combined: dict[str, Result] = {}
    for method in runs[0][0]:
        found = [r[method] for r, _ in runs]
        failed = sum(f.r2 is None for f in found)
        if failed:  # a mean over some splits would not compare with the others' means
            note = found[0].note if failed == len(found) else f"failed on {failed} of {len(found)} splits"
            combined[method] = Result(None, None, note)
            continue
        r2 = float(np.mean([f.r2 for f in found]))
        timed = [f.seconds for f in found if f.seconds is not None]
        combined[method] = Result(r2, float(np.mean(timed)) if timed else None)
    refs = {k: combined[k].r2 for k in REFERENCES if combined[k].r2 is not None}
    best = max(refs, key=lambda k: refs[k] or 0.0)
    if combined["starter"].r2 is None:
        return combined, "-", None
    gaps = [(r["starter"].r2 or 0.0) - (r[best].r2 or 0.0) for r, _ in runs]
    kinds = [chose.split()[0] for _, chose in runs]
    chose = ", ".join(f"{kind} {kinds.count(kind)}/{len(kinds)}" for kind in sorted(set(kinds)))
    return combined, chose, float(np.std(gaps, ddof=1))


def markdown(
    rows: dict[str, dict[str, Result]],
    sizes: dict[str, int],
    checks: dict[str, str],
    methods: Sequence[str],
    spreads: dict[str, float] | None = None,
) -> str:
    """One table: a row per data table, a column per method; then where the starter trails
    the best reference or the better of its two candidates, and what init's race found."""
    head = ["table", "rows", *methods, "best reference", "starter - best", "starter - better", "init chose"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    losses: list[str] = []
    misses: list[str] = []
    for name, results in rows.items():
        refs = {k: results[k].r2 for k in REFERENCES if results[k].r2 is not None}
        best = max(refs, key=lambda k: refs[k] or 0.0)
        mine, theirs = results["starter"].r2, refs[best]
        gap = mine - theirs if mine is not None and theirs is not None else None
        cells = [name, f"{sizes[name]:,}", *(results[m].cell() for m in methods)]
        shown = "-" if gap is None else f"{gap:+.3f}"
        if gap is not None and spreads and name in spreads:
            shown += f" ± {spreads[name]:.3f}"
        better = results["better"].r2
        choice_gap = mine - better if mine is not None and better is not None else None
        cells += [f"{best} {refs[best]:.3f}", shown, "-" if choice_gap is None else f"{choice_gap:+.3f}"]
        cells.append(checks[name])
        lines.append("| " + " | ".join(cells) + " |")
        if gap is None or gap < -LOSS_MARGIN:
            losses.append(f"- {name}: starter {results['starter'].cell()} vs {best} {refs[best]:.3f}")
        if choice_gap is None or choice_gap < -CHOICE_MARGIN:
            mine_cell, better_cell = results["starter"].cell(), results["better"].cell()
            misses.append(f"- {name}: starter {mine_cell} vs the better candidate {better_cell}")
    notes = [
        f"- {name} {m}: {results[m].note}"
        for name, results in rows.items()
        for m in REFERENCES
        if results[m].note
    ]
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    text += f"\nWhere the starter trails the best reference by more than {LOSS_MARGIN} R²:\n"
    text += ("\n".join(losses) if losses else "- nowhere") + "\n"
    text += f"\nWhere the starter trails the better of its two candidates by more than {CHOICE_MARGIN} R²:\n"
    text += ("\n".join(misses) if misses else "- nowhere") + "\n"
    text += (
        "\nbetter: per split the higher test R² of the linear and MLP candidates, then the mean. "
        "init chose: the starter's model, and each candidate's 5-fold CV R² in init's race on the "
        "training rows (mse_train/selection/race.py).\n"
    )
    return text


def header(argv: Sequence[str], splits: int = 1) -> str:
    """Title, machine and the command that measured it."""
    from run import machine  # bench/run.py; imports torch, so only when writing

    command = " ".join([".venv/bin/python bench/quality.py", *argv])
    return (
        "# mse-train's starter against scikit-learn, LightGBM and XGBoost on real tables (issues 13, 23)\n\n"
        f"Machine: {machine()}.\n\nCommand: `{command}` ({time.strftime('%Y-%m-%d')}). "
        + (
            "Cells: test R² (wall seconds)"
            if splits == 1
            else f"Cells: mean test R² (wall seconds) over {splits} random 75/25 splits "
            f"(seeds 0-{splits - 1}); "
            "starter - best: mean ± standard deviation over the splits of the starter's R² minus that "
            "reference's; init chose: its choice on each split's training rows"
        )
        + ". Tables and licences: data/README.md.\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", help=f"comma-separated, from: {', '.join(TABLES)}")
    parser.add_argument(
        "--variants", help=f"comma-separated, from: {', '.join(v.name for v in VARIANTS)}; or none"
    )
    parser.add_argument("--quick", action="store_true", help="3 small tables and the quick variants")
    parser.add_argument("--write", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--mlp-rows", type=int, default=20_000, help="training rows for MLPRegressor at most")
    parser.add_argument(
        "--splits", type=int, default=1, help="75/25 splits per table (seeds 0, 1, ...); cells: their means"
    )
    args = parser.parse_args(argv)
    if MISSING is not None:
        print(
            f"error: bench/quality.py needs scikit-learn ({MISSING}): pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    names = args.tables.split(",") if args.tables else list(QUICK_TABLES if args.quick else TABLES)
    chosen = [v for v in args.variants.split(",") if v != "none"] if args.variants else None
    unknown = [n for n in names if n not in TABLES]
    unknown += [v for v in chosen or () if v not in {v.name for v in VARIANTS}]
    if unknown:
        print(f"error: unknown table or variant: {', '.join(unknown)}", file=sys.stderr)
        return 2
    variants = [
        v for v in VARIANTS if (v.name in chosen if chosen is not None else (v.quick or not args.quick))
    ]
    methods = ["starter", *CANDIDATES, "better", *(v.name for v in variants), *REFERENCES]
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # scikit-learn's convergence chatter
    rows: dict[str, dict[str, Result]] = {}
    sizes: dict[str, int] = {}
    checks: dict[str, str] = {}
    rejected: set[str] = set()
    started = time.perf_counter()
    spreads: dict[str, float] = {}
    for name in names:
        runs = []
        for seed in range(SEED, SEED + args.splits):
            try:
                runs.append(measure(TABLES[name], variants, args.mlp_rows, rejected, seed))
            except TablesError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        rows[name], checks[name], spread = combine(runs)
        if spread is not None:
            spreads[name] = spread
        sizes[name] = json.loads((WORK / name / "split.json").read_text())["rows"]
        cells = ", ".join(f"{m} {rows[name][m].cell()}" for m in methods)
        print(f"{name}: {cells}, init chose {checks[name]}", file=sys.stderr)
    text = header(argv if argv is not None else sys.argv[1:], args.splits)
    text += markdown(rows, sizes, checks, methods, spreads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text += f"\nWhole run: {time.perf_counter() - started:.0f} s; load average at the end {load}.\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
