"""`mse-train explain`: which columns matter, by permutation importance.

For each original column (a categorical one counts once: all its one-hot inputs are
shuffled together), the rows' values are shuffled and the increase in MSE (in the
targets' own units, averaged over targets as `eval` reports it) measured, `repeats`
times with a seeded generator. Each repeat scores every column in one batched pass.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mse_train import runtime
from mse_train.data import prepare
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import DataError, UserError
from mse_train.models import inference
from mse_train.use import evaluate, scoring


@dataclass
class Importance:
    baseline_mse: float
    importance: dict[str, dict[str, float]]  # column -> mean, std of the MSE increase; largest first
    repeats: int
    rows: int

    def as_json(self) -> dict[str, Any]:
        return {"importance": self.importance, "baseline_mse": self.baseline_mse, "repeats": self.repeats,
                "n": self.rows}  # fmt: skip


def column_inputs(pre: Preprocessor) -> dict[str, list[int]]:
    """Each original column's model inputs: one for a number, its one-hot block for a category
    (or its one code column, under `categorical_encoding: embedding`)."""
    inputs = {c.name: [i] for i, c in enumerate(pre.numeric)}
    offset = len(pre.numeric)
    for col in pre.categorical:
        width = 1 if pre.embedded else len(col.categories)
        inputs[col.name] = list(range(offset, offset + width))
        offset += width
    return {name: inputs[name] for name in pre.features if inputs.get(name)}


def explain(
    ckpt_path: Path, csv_path: Path, repeats: int = 5, seed: int = 0, device: str = "cpu"
) -> Importance:
    if repeats < 1:
        raise UserError(f"--repeats is {repeats}; it must be at least 1", ["use 5 (the default) or more"])
    dev = runtime.resolve_device(device, "--device")
    _, pre, model, delimiter = evaluate.load(ckpt_path)
    data, split, _ = prepare.prepare_eval(csv_path, pre, delimiter)
    n = len(split.x)
    if n < 2:
        raise DataError(f"{csv_path}: {n} row(s); shuffling a column needs at least 2", ["give more rows"])
    model.to(dev)
    y_true = data.frame[pre.target_names].to_numpy(dtype=np.float64)
    baseline = _mse(scoring.predictions(model, split.x, dev, pre, data), y_true)
    columns = column_inputs(pre)
    generator = np.random.default_rng(seed)
    increases: dict[str, list[float]] = {name: [] for name in columns}
    for _ in range(repeats):
        shuffled = []
        for inputs in columns.values():
            x = split.x.copy()
            x[:, inputs] = split.x[generator.permutation(n)][:, inputs]
            shuffled.append(x)
        stacked = torch.from_numpy(np.concatenate(shuffled)).to(dev)  # every column, one pass
        out = pre.unscale_targets(inference.predict(model, stacked).cpu().numpy()).astype(np.float64)
        if not np.isfinite(out).all():
            raise DataError(
                f"{csv_path}: predictions on shuffled rows are not finite numbers",
                ["check the feature cells for values far outside the training range"],
            )
        for k, name in enumerate(columns):
            increases[name].append(_mse(out[k * n : (k + 1) * n], y_true) - baseline)
    table = {
        name: {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
        for name, values in increases.items()
    }
    ranked = dict(sorted(table.items(), key=lambda item: -item[1]["mean"]))
    return Importance(baseline, ranked, repeats, n)


def _mse(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    return float(np.mean((y_pred - y_true) ** 2))
