"""Does `init` -> `run` -> `eval` on held-out rows work on every real table, unedited?

    OMP_NUM_THREADS=1 .venv/bin/python bench/robustness.py              # every table
    OMP_NUM_THREADS=1 .venv/bin/python bench/robustness.py --epochs 10 mpg cpus

For each table of bench/tables.py, the raw table (nothing dropped: IDs, names and columns
that nearly restate the target stay, and no table's `--set`s apply, so `init` meets them as
a new user's table) is split 75/25 with a fixed seed (rows kept in file order). Then
`mse-train init train.csv --target T`, `mse-train run` of that config with only
`train.epochs` capped (to keep the whole check to minutes; the R² is therefore not the
starter's quality: bench/quality.py measures that), and `mse-train eval best.pt test.csv`.
It prints each step's exit code, the test R², what init chose for the data, and the
seconds; the exit status is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import TABLES, TablesError, path

SEED = 0
TEST_SHARE = 0.25
WORK = Path(__file__).resolve().parent / "out" / "robustness"  # bench/out/ is git-ignored


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mse-train")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def split(source: Path, work: Path) -> tuple[Path, Path]:
    """The raw table's seeded 75/25 split, as two CSVs; every cell kept as written."""
    return split_frame(pd.read_csv(source, dtype=str, keep_default_na=False), work)


def split_frame(frame: pd.DataFrame, work: Path) -> tuple[Path, Path]:
    """A table read as written (strings) split 75/25 by SEED into work/train.csv and
    work/test.csv, rows in file order."""
    n = len(frame)
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(SEED).permutation(n)[: round(n * TEST_SHARE)]] = True
    work.mkdir(parents=True, exist_ok=True)
    train, test = work / "train.csv", work / "test.csv"
    frame[~is_test].to_csv(train, index=False)
    frame[is_test].to_csv(test, index=False)
    return train, test


def check(name: str, epochs: int, quick: bool) -> dict[str, object]:
    """One table's row of the report."""
    table = TABLES[name]
    work = WORK / name
    train, test = split(path(table), work)
    config = work / "starter.yaml"
    started = time.perf_counter()
    row: dict[str, object] = {"table": name, "init": None, "run": None, "eval": None, "r2": None}
    made = _cli(
        "init", train, "--target", table.target, "-o", config, "--force", *(["--quick"] if quick else [])
    )
    row["init"] = made.returncode
    said = made.stderr.strip()
    if made.returncode == 0:
        data = yaml.safe_load(config.read_text())
        row["model"] = data["model"]["type"]
        left = [c for c in pd.read_csv(train, nrows=0).columns if c not in data["data"]["features"]]
        row["left_out"] = [c for c in left if c != table.target]
        settings = data["data"]
        row["max_cat"] = (
            f"{settings.get('categorical_encoding', 'onehot')}/{settings.get('max_categories', 100)}"
        )
        out = work / "run"
        ran = _cli("run", config, "-q", "-o", out, "--overwrite", "--set", f"train.epochs={epochs}")
        row["run"] = ran.returncode
        said = ran.stderr.strip()
        if ran.returncode == 0:
            scored = _cli("eval", out / "best.pt", test, "--json")
            row["eval"] = scored.returncode
            said = scored.stderr.strip()
            if scored.returncode == 0:
                row["r2"] = float(json.loads(scored.stdout)["r2"])
                said = ""
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["said"] = said.splitlines()[0][:100] if said else ""
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", help="table names (default: all)")
    parser.add_argument("--epochs", type=int, default=10, help="cap on train.epochs (default 10)")
    parser.add_argument("--quick", action="store_true", help="init --quick (skip the model check)")
    args = parser.parse_args(argv)
    names = args.tables or list(TABLES)
    print(
        f"init{' --quick' if args.quick else ''} -> run --set train.epochs={args.epochs} -> eval, seed {SEED}"
    )
    print(
        f"{'table':<13}{'init':>5}{'run':>5}{'eval':>5}{'test R²':>9}{'s':>7}  model   encoding/max  left out"
    )
    failed = 0
    started = time.perf_counter()
    for name in names:
        try:
            row = check(name, args.epochs, args.quick)
        except TablesError as exc:
            print(f"{name:<13} cannot be made: {exc}")
            failed += 1
            continue
        ok = row["init"] == row["run"] == row["eval"] == 0
        failed += not ok
        r2 = f"{row['r2']:.3f}" if isinstance(row["r2"], float) else "-"
        codes = "".join(f"{'-' if row[k] is None else row[k]:>5}" for k in ("init", "run", "eval"))
        print(
            f"{name:<13}{codes}{r2:>9}{row['seconds']:>7}  {row.get('model', '-'):<7} "
            f"{row.get('max_cat', '-'):<13} {', '.join(row.get('left_out', [])) or '-'}"  # type: ignore[arg-type]
            + (f"\n{'':13}{row['said']}" if row["said"] else "")
        )
    print(
        f"{len(names) - failed} of {len(names)} tables passed, {time.perf_counter() - started:.0f} s in all"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
