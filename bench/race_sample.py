"""How many rows `mse-train init`'s race needs: its choice and CV scores on samples of each size.

    OMP_NUM_THREADS=1 .venv/bin/python bench/race_sample.py --tables workinghours,computers,diamonds \
        --sizes 4000,2000 --splits 5

For each table and split (bench/quality.py's seeded 75/25 splits; training rows only), runs
init's choice (selection/choose.py, budget 10 minutes so that load cannot cut it) with the
race on a seeded sample of at most SIZE rows, and prints each candidate's 5-fold CV R², the
winner and the race's seconds. A smaller sample is safe where it picks what the larger one
picks, by a margin larger than the two candidates' difference in CV R² moves between sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import WORK, split
from tables import TABLES


def _render(csv: Path, target: str, out: Path) -> Callable[[Any], str]:
    """What `mse-train init` renders for a choice on `csv` (the table sketched and surveyed once)."""
    from mse_train.config import starter
    from mse_train.data import prepare

    sketch = prepare.sketch(csv, [target], ",")
    survey = prepare.survey(csv, sketch.features, [target], ",")

    def render(choice: starter.Choice) -> str:
        return starter.render(
            csv,
            sketch.features,
            [target],
            sketch.text_columns,
            sketch.empty_columns,
            out,
            rows=sketch.rows,
            choice=choice,
            survey=survey,
        )

    return render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="workinghours,computers,diamonds")
    parser.add_argument("--sizes", default="4000,2000")
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args()

    from mse_train.selection import choose, race

    print("| table | split | rows | sample | linear CV R² | MLP CV R² | chose | race s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tables.split(","):
        table = TABLES[name]
        for seed in range(args.splits):
            work = WORK / f"race-{name}-{seed}"
            train_csv, _ = split(table, work, seed)
            config = work / "starter.yaml"
            render = _render(train_csv, table.target, config)
            rows = sum(1 for _ in train_csv.open()) - 1
            for size in (int(s) for s in args.sizes.split(",")):
                race.MAX_ROWS = size
                started = time.perf_counter()
                choice, _ = choose.starter_model(render, train_csv, config, [table.target], 600.0)
                seconds = time.perf_counter() - started
                linear, mlp = (line.split(":")[-1].split("(")[0].strip() for line in choice.why[1:3])
                chose = "linear" if choice.linear else "mlp"
                cells = [
                    name,
                    str(seed),
                    f"{rows:,}",
                    f"{min(size, rows):,}",
                    linear,
                    mlp,
                    chose,
                    f"{seconds:.1f}",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
