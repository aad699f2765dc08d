"""Can torch itself step a stack of small models as fast as training/stack/ does by hand?

    .venv/bin/python bench/stack_torch.py                 # K = 16, batch 64 and 256
    .venv/bin/python bench/stack_torch.py --k 16 --batches 64 --rounds 5 --embedding piecewise_linear

Issue 26 asks whether the stack's forward, backward and optimizer can be expressed through
torch (so that a model is defined once, in models/, and the stack derives its batched form
from it), and to adopt that if it keeps >= 0.9x of today's packed speed at batch 64. The
same K models (one config, K seeds, as a packed sweep or cv trains them), the same rows and
batches, one epoch each, median of interleaved rounds, 1 thread:

  by hand    training/stack/ as `cv`/`sweep` run it: batched matmuls, the backward pass
             written out, the optimizer's update written out (StackedOptimizer)
  autograd   the same Stack with its written-out backward switched off: its batched forward,
             torch's autograd engine for the gradients, the same written-out update
  torch.func the models as nn.Modules, `torch.func.stack_module_state` +
             `vmap(functional_call)` for the forward, autograd for the backward, and
             `torch.optim.Adam(foreach=True)` over the stacked parameters for the update
             (one learning rate for all K: torch.optim has no per-model [K, 1] column)
  modules    the K modules one after another, each with its own torch optimizer
             (what `--no-pack` does)

Prints seconds per epoch and each path's speed relative to "by hand".
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import write_csv  # noqa: E402

from mse_train import config as config_module  # noqa: E402
from mse_train import recipe  # noqa: E402
from mse_train.data import folds, prepare  # noqa: E402
from mse_train.training.records import Built  # noqa: E402
from mse_train.training.stack import Stack  # noqa: E402


def _config(work: Path, embedding: str) -> Path:
    path = work / "c.yaml"
    path.write_text(
        "data: {train: t.csv, target: y, val_fraction: 0.2}\n"
        f"model: {{type: mlp, hidden: [64, 64], numeric_embedding: {embedding}}}\n"
        "optimizer: {name: adam, lr: 0.001}\n"
        "train: {epochs: 1, batch_size: 64}\n"
        "output: {plot: false}\n"
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--embedding", default="none")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}; K = {args.k}, {args.rows} rows, MLP 64-64, Adam, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_csv(work / "t.csv", args.rows)
        cfg = config_module.load(_config(work, args.embedding))
        loaded = prepare.load_training(cfg.data, cfg.targets)
        train_rows, test_rows = folds.kfold(loaded.table.n_rows, 5, cfg.seed)[0]
        prepared, _ = prepare.fit_split(loaded, cfg.data, train_rows, test_rows, "fold 1", cfg.seed)
        x = torch.from_numpy(prepared.train.x)
        y = torch.from_numpy(prepared.train.y)
        device = torch.device("cpu")

        def builts() -> list[Built]:
            seeded = [cfg.model_copy(update={"seed": seed}) for seed in range(args.k)]
            return [recipe.build_one(c, prepared, device) for c in seeded]

        for batch in (int(b) for b in args.batches.split(",")):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
            slices = [order[i : i + batch] for i in range(0, len(x), batch)]
            paths: dict[str, Callable[[list[torch.Tensor]], Callable[[], None]]] = {
                "by hand": lambda s: _stack_epoch(Stack(builts(), device), x, y, s, by_hand=True),
                "autograd": lambda s: _stack_epoch(Stack(builts(), device), x, y, s, by_hand=False),
                "torch.func": lambda s: _func_epoch(builts(), x, y, s),
                "modules": lambda s: _modules_epoch(builts(), x, y, s),
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            for round_ in range(args.rounds + 1):  # round 0 warms up, and is not counted
                for name, setup in paths.items():
                    epoch = setup(slices)  # models built outside the clock: only the steps count
                    started = time.perf_counter()
                    epoch()
                    if round_:
                        times[name].append(time.perf_counter() - started)
            base = statistics.median(times["by hand"])
            medians = {name: statistics.median(t) for name, t in times.items()}
            row = ", ".join(f"{name} {m:.3f} s ({base / m:.2f}x)" for name, m in medians.items())
            print(f"batch {batch}, {len(slices)} steps: {row}")


def _stack_epoch(
    stack: Stack, x: torch.Tensor, y: torch.Tensor, slices: list[torch.Tensor], by_hand: bool
) -> Callable[[], None]:
    if not by_hand:
        stack.derivative = None

    def epoch() -> None:
        for rows in slices:
            xb, yb = x[rows], y[rows]
            stack.step(xb.expand(stack.k, *xb.shape), yb.expand(stack.k, *yb.shape))

    return epoch


def _func_epoch(
    built: list[Built], x: torch.Tensor, y: torch.Tensor, slices: list[torch.Tensor]
) -> Callable[[], None]:
    models = [b.model for b in built]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.func.functional_call(base, (p, b), (xb,))
        return out

    forward = torch.vmap(one, in_dims=(0, 0, None))
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-3, foreach=True)

    def epoch() -> None:
        for rows in slices:
            xb, yb = x[rows], y[rows]
            optimizer.zero_grad(set_to_none=True)
            out = forward(params, buffers, xb)
            loss = ((out - yb) ** 2).mean((1, 2)).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

    return epoch


def _modules_epoch(
    built: list[Built], x: torch.Tensor, y: torch.Tensor, slices: list[torch.Tensor]
) -> Callable[[], None]:
    def epoch() -> None:
        for b in built:
            for rows in slices:
                xb, yb = x[rows], y[rows]
                b.optimizer.zero_grad(set_to_none=True)
                loss = ((b.model(xb) - yb) ** 2).mean()
                loss.backward()
                b.optimizer.step()

    return epoch


if __name__ == "__main__":
    main()
