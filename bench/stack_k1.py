"""One model in the one loop, as a stack of one (what `run` does) against as a torch module
(what `run --no-pack` does, and every config the stack cannot hold).

    .venv/bin/python bench/stack_k1.py

Issue 9 asks for one loop whose model axis has size K >= 1, with `run` as K = 1. Both
sides here are that loop (training/loop.py); only the model axis differs: training/stack/
(flat parameters, batched matmuls, the backward pass and the update written out) or
training/module.py (the nn.Module, autograd, torch's optimizer). The same config, rows and
scoring, through `selection.fit` (as cv trains a fold), at batch 64, 256, 1024 and full
batch (200 epochs there). Generated
data as bench/run.py makes it (20,000 rows x 16 features; a fold of 16,000 rows, 20% of
them for validation), an MLP 16 -> 64 -> 64 -> 1, Adam, 10 epochs; median of 3
interleaved rounds. Prints the seconds, their ratio and both held-out MSEs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import write_csv  # noqa: E402

from mse_train import config as config_module  # noqa: E402
from mse_train.data import folds, prepare  # noqa: E402
from mse_train.selection import fit  # noqa: E402

ROUNDS = 3


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_csv(work / "t.csv", 20_000)
        for batch in (64, 256, 1024, None):
            (work / "c.yaml").write_text(
                "data: {train: t.csv, target: y, val_fraction: 0.2}\n"
                "model: {type: mlp, hidden: [64, 64]}\n"
                "optimizer: {name: adam, lr: 0.001}\n"
                f"train: {{epochs: {10 if batch else 200}, batch_size: {batch or 'null'}, "
                "early_stopping: {patience: 1000}}\n"
                "output: {plot: false}\n"
            )
            cfg = config_module.load(work / "c.yaml")
            loaded = prepare.load_training(cfg.data, cfg.targets)
            train_rows, test_rows = folds.kfold(loaded.table.n_rows, 5, cfg.seed)[0]
            prepared, held = prepare.fit_split(loaded, cfg.data, train_rows, test_rows, "fold 1", cfg.seed)
            device = torch.device("cpu")
            alone, stacked = [], []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                solo = fit.train_and_score(cfg, prepared, held, device, stack=False)
                alone.append(time.perf_counter() - started)
                started = time.perf_counter()
                one = fit.train_and_score(cfg, prepared, held, device)
                stacked.append(time.perf_counter() - started)
            a, s = statistics.median(alone), statistics.median(stacked)
            assert solo.overall is not None and one.overall is not None
            print(
                f"batch {batch or 'full'}: module {a:.3f} s, stack of one {s:.3f} s, "
                f"stack {a / s:.2f}x as fast; "
                f"held-out MSE {solo.overall['mse']:.6f} vs {one.overall['mse']:.6f}"
            )


if __name__ == "__main__":
    main()
