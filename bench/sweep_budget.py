"""Does the sweep `mse-train init` writes finish within its stated `sweep.time_limit`?

    .venv/bin/python bench/sweep_budget.py                    # diamonds (53,940 rows), concrete
    .venv/bin/python bench/sweep_budget.py diamonds penguins  # these tables of bench/tables.py

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
import shutil
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


def one(name: str, work: Path) -> dict[str, object]:
    table = TABLES[name]
    folder = work / name
    folder.mkdir()
    csv_path = folder / f"{name}.csv"
    shutil.copy(path(table), csv_path)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    init = [*MSE_TRAIN, "init", csv_path.name, "--target", table.target, "-o", "config.yaml"]
    subprocess.run(init, cwd=folder, check=True, capture_output=True, env=env)
    text = (folder / "config.yaml").read_text()
    limits = [line.split()[1] for line in text.splitlines() if line.strip().startswith("time_limit:")]
    budget = float(limits[0])
    sets = [arg for s in table.sets for arg in ("--set", s)]
    before = load()
    started = time.perf_counter()
    sweep = [*MSE_TRAIN, "sweep", "config.yaml", "--json", *sets]
    done = subprocess.run(sweep, cwd=folder, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"table": name, "error": done.stderr[-2000:]}
    out = json.loads(done.stdout)
    with open(folder / "runs" / "config-sweep" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    searched = _search_seconds(done.stderr)
    return {
        "table": name,
        "budget_s": budget,
        "sweep_s": round(seconds, 1),
        "search_s": searched,
        "finished": sum(1 for r in rows if r["status"] not in ("cut", "diverged")),
        "cut": sum(1 for r in rows if r["status"] == "cut"),
        "best": out["best"]["params"],
        "score": out["best"]["score"],
        "load_before": before,
        "load_after": load(),
    }


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables:
            print(json.dumps(one(name, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
