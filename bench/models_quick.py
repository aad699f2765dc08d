"""A quick look at the new models: test R² and wall time of each on two shipped tables.

python bench/models_quick.py [--rows 4000] [--epochs 40] [--tables diamonds] [--models mlp,resnet]
                             [--encodings onehot,embedding]

Each table (diamonds subsampled to --rows, diabetes whole) is split 75/25 once (seed 0);
every config trains on the 75 % through the real CLI (holding out 20 % of it for early
stopping) and is scored by `mse-train eval --json` on the 25 %, once per
`data.categorical_encoding` in --encodings (diabetes has no categorical column). A smoke comparison, not the
benchmark: bench/quality.py is the one with references and six tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
TABLES = {"diamonds": "price", "diabetes": "progression"}
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"type": "mlp", "hidden": [64, 64]},
    "mlp+periodic": {"type": "mlp", "hidden": [64, 64], "numeric_embedding": "periodic"},
    "mlp+piecewise_linear": {"type": "mlp", "hidden": [64, 64], "numeric_embedding": "piecewise_linear"},
    "resnet": {"type": "resnet", "width": 64},
    "tabm (width 128)": {"type": "tabm", "width": 128},
    "tabm+piecewise (width 128)": {"type": "tabm", "width": 128, "numeric_embedding": "piecewise_linear"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--encodings", default="onehot", help="comma-separated: onehot, embedding")
    args = parser.parse_args()
    print("| table | model | categories | test R² | epochs | seconds |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for table in args.tables.split(","):
            target = TABLES[table]
            frame = pd.read_csv(REPO / "data" / f"{table}.csv")
            if len(frame) > args.rows:
                frame = frame.sample(args.rows, random_state=0)
            order = np.random.default_rng(0).permutation(len(frame))
            cut = int(0.75 * len(frame))
            train, test = Path(tmp, f"{table}_train.csv"), Path(tmp, f"{table}_test.csv")
            frame.iloc[order[:cut]].to_csv(train, index=False)
            frame.iloc[order[cut:]].to_csv(test, index=False)
            for name in args.models.split(","):
                for encoding in args.encodings.split(","):
                    r2, epochs, seconds = _one(
                        Path(tmp), train, test, target, MODELS[name], args.epochs, encoding
                    )
                    print(
                        f"| {table} | {name} | {encoding} | {r2:.4f} | {epochs} | {seconds:.1f} |", flush=True
                    )


def _one(
    tmp: Path, train: Path, test: Path, target: str, model: dict[str, Any], epochs: int, encoding: str
) -> tuple[float, int, float]:
    data = {"train": str(train), "target": target, "val_fraction": 0.2, "categorical_encoding": encoding}
    cfg = {
        "seed": 0,
        "data": data,
        "model": model,
        "optimizer": {"name": "adamw", "lr": 0.002},
        "train": {"epochs": epochs, "batch_size": 64, "early_stopping": {"patience": 8}},
        "output": {"plot": False, "dir": str(tmp / "run")},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.perf_counter()
    cli = [sys.executable, "-m", "mse_train"]
    subprocess.run([*cli, "run", str(path), "-q", "--overwrite"], check=True)
    seconds = time.perf_counter() - started
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    scored = subprocess.run(
        [*cli, "eval", str(tmp / "run" / "best.pt"), str(test), "--json"], check=True, capture_output=True
    )
    return json.loads(scored.stdout)["r2"], summary["epochs_run"], seconds


if __name__ == "__main__":
    main()
