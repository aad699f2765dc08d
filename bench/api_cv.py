"""cross_val_score(Regressor(config), X, y) against `mse-train cv` on the same folds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/api_cv.py [--config configs/diamonds.yaml] [--folds 5]
        [--rows N] [--write]

Runs, one after the other, `mse-train cv CONFIG -k K --json` (a subprocess: its folds
packed, as by default), the same with `--no-pack` (one fold at a time) and scikit-learn's `cross_val_score` of
`mse_train.Regressor(config=CONFIG)` on the folds cv uses (`data.folds.kfold(n, K, seed)`),
both on the CPU; prints each fold's R² from both, the largest difference, both wall times
and the load average before and after. `--rows N` takes the table's first N rows (a
smaller check); `--write` appends the output to bench/api_results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "diamonds.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    from sklearn.model_selection import cross_val_score

    from mse_train import Regressor, config
    from mse_train.data.folds import kfold

    lines = [f"load average before: {_loadavg()}"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(args.config)
        frame = pd.read_csv(cfg.data.train)
        if args.rows is not None:
            frame = frame.head(args.rows)
        table = Path(tmp) / "table.csv"
        frame.to_csv(table, index=False)
        data = yaml.safe_load(args.config.read_text())
        data["data"]["train"] = str(table)
        data["train"]["device"] = "cpu"
        data["output"] = {"dir": str(Path(tmp) / "run"), "plot": False}
        path = Path(tmp) / "cfg.yaml"
        path.write_text(yaml.safe_dump(data))

        started = time.perf_counter()
        command = [sys.executable, "-m", "mse_train", "cv", str(path), "-k", str(args.folds), "--json", "-q"]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        cli_seconds = time.perf_counter() - started
        want = [fold["r2"] for fold in json.loads(done.stdout)["per_fold"]]
        started = time.perf_counter()
        done = subprocess.run([*command, "--no-pack"], capture_output=True, text=True, check=True)
        alone_seconds = time.perf_counter() - started
        alone = [fold["r2"] for fold in json.loads(done.stdout)["per_fold"]]

        targets = cfg.targets
        x, y = frame.drop(columns=targets), frame[targets[0] if len(targets) == 1 else targets]
        started = time.perf_counter()
        folds = kfold(len(frame), args.folds, cfg.seed)
        got = cross_val_score(Regressor(config=path), x, y, cv=folds)
        api_seconds = time.perf_counter() - started

    lines.append(f"{args.config.name}, {len(frame)} rows, {args.folds} folds, CPU, OMP threads as set")
    lines.append("fold  cv R² (packed)  cv --no-pack R²  cross_val_score R²  api-packed  api-no-pack")
    for i, (a, c, b) in enumerate(zip(want, alone, got, strict=True), start=1):
        lines.append(f"{i:>4}  {a:.12f}  {c:.12f}  {b:.12f}  {b - a:+.2e}  {b - c:+.2e}")
    for name, ref in (("packed", want), ("--no-pack", alone)):
        worst = max(abs(b - a) for a, b in zip(ref, got, strict=True))
        lines.append(f"largest |cross_val_score - cv {name}|: {worst:.2e}")
    lines.append(
        f"mse-train cv (folds packed): {cli_seconds:.1f} s; --no-pack: {alone_seconds:.1f} s; "
        f"cross_val_score (one at a time): {api_seconds:.1f} s"
    )
    lines.append(f"load average after: {_loadavg()}")
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(ROOT / "bench" / "api_results.md", "a", encoding="utf-8") as f:
            f.write(f"\n```\n$ {' '.join(sys.argv)}\n{text}\n```\n")


if __name__ == "__main__":
    main()
