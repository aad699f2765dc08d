"""Does the sweep `mse-train init` writes finish within its stated `sweep.time_limit`?

    .venv/bin/python bench/sweep_budget.py                    # diamonds (53,940 rows), concrete
    .venv/bin/python bench/sweep_budget.py diamonds penguins  # these tables of bench/tables.py
    .venv/bin/python bench/sweep_budget.py --rows 50000        # larger tables: a 50,000-row sample

For each table: `mse-train init TABLE --target T` (with the table's --set's), then
`mse-train sweep config.yaml --json`, each as its own process, as a user runs them. Prints
the search's budget, the sweep's whole-process seconds, the trials finished and cut, the
best score, and the load average before and after (the machine is shared: say it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from tables import TABLES, path  # noqa: E402

MSE_TRAIN = [sys.executable, "-m", "mse_train"]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one(name: str, work: Path, rows: int | None) -> dict[str, object]:
    table = TABLES[name]
    folder = work / name
    folder.mkdir()
    csv_path = folder / f"{name}.csv"
    n = _copy(path(table), csv_path, rows)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    init = [*MSE_TRAIN, "init", csv_path.name, "--target", table.target, "-o", "config.yaml"]
    subprocess.run(init, cwd=folder, check=True, capture_output=True, env=env)
    text = (folder / "config.yaml").read_text()
    limits = [line.split()[1] for line in text.splitlines() if line.strip().startswith("time_limit:")]
    budget = float(limits[0])
    sets = [arg for s in table.sets for arg in ("--set", s)]
    before = load()
    sweep = [*MSE_TRAIN, "sweep", "config.yaml", "--json", *sets]
    started = time.perf_counter()
    process = subprocess.Popen(
        sweep, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stderr is not None and process.stdout is not None
    lines = []  # (seconds since the start, line): when the search ended, as it happened
    for line in process.stderr:
        lines.append((time.perf_counter() - started, line.rstrip("\n")))
    stdout = process.stdout.read()
    process.wait()
    seconds = time.perf_counter() - started
    stderr = "\n".join(line for _, line in lines)
    log = ROOT / "bench" / "out" / f"sweep_budget-{name}.log"  # bench/out/ is git-ignored
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"{at:8.1f} {line}\n" for at, line in lines))
    if process.returncode != 0:
        return {"table": name, "error": stderr[-2000:]}
    out = json.loads(stdout)
    ended = next((at for at, line in lines if line.startswith("search ended")), None)
    reserved = next((line for _, line in lines if "left for the refit" in line), None)
    with open(folder / "runs" / "config-sweep" / "leaderboard.csv", newline="") as f:
        board = list(csv.DictReader(f))
    searched = _search_seconds(stderr)
    return {
        "table": name,
        "rows": n,
        "budget_s": budget,
        "sweep_s": round(seconds, 1),
        "search_s": searched,
        "after_search_s": None if ended is None else round(seconds - ended, 1),  # the refit and writes
        "reserved": reserved and reserved.split("; ")[-1],  # what the search left for the refit
        "finished": sum(1 for r in board if r["status"] not in ("cut", "diverged")),
        "cut": sum(1 for r in board if r["status"] == "cut"),
        "best": out["best"]["params"],
        "score": out["best"]["score"],
        "load_before": before,
        "load_after": load(),
    }


def _copy(source: Path, target: Path, rows: int | None) -> int:
    """The table, or a random sample of `rows` of its rows (seed 0) when it has more; its rows."""
    with open(source, newline="", encoding="utf-8") as f:
        header, *body = list(csv.reader(f))
    if rows is not None and len(body) > rows:
        keep = sorted(random.Random(0).sample(range(len(body)), rows))
        body = [body[i] for i in keep]
    with open(target, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *body])
    return len(body)


def _search_seconds(stderr: str) -> float | None:
    """The search's own seconds, from the sweep's last progress line (`... in N s`)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("search ended"):
            return float(line.split(" in ")[1].split()[0])
    return None


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("tables", nargs="*", default=["diamonds", "concrete"])
    parser.add_argument("--rows", type=int, default=None, help="sample larger tables to this many rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables:
            print(json.dumps(one(name, Path(tmp), args.rows)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
