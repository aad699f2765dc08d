"""`mse-train eval`: score a checkpoint on a CSV, in each target's own units.

The CSV's columns are read by name, as the checkpoint names them, and preprocessed with
the statistics stored in it: new rows are treated exactly like the training rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mse_train import runtime
from mse_train.data import cache, prepare
from mse_train.data.drift import Finding, Watch
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import DataError
from mse_train.outputs import checkpoint
from mse_train.use import evaluate_stream, intervals, scoring


@dataclass
class Report:
    overall: dict[str, Any]  # mse, rmse, mae, r2, n
    targets: dict[str, dict[str, Any]]  # name -> mse, rmse, mae, r2
    notes: list[str]
    checkpoint_epoch: int
    actual: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # rows x targets, own units
    predicted: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    interval: dict[str, Any] | None = None  # intervals.coverage() when --interval was given
    drift: list[Finding] = field(default_factory=list)
    weight: str | None = None  # the column (`data.weight`) the metrics are weighted by, if any

    def as_json(self) -> dict[str, Any]:
        out = dict(self.overall)
        if self.weight is not None:
            out["weighted_by"] = self.weight
        if len(self.targets) > 1:
            out["targets"] = self.targets
        if self.interval is not None:
            out["interval"] = self.interval
        out["drift"] = [finding.as_json() for finding in self.drift]
        return out


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """MSE, RMSE, MAE and R² per target column and averaged over targets (float64).

    With `w`, each row's sample weight, they are weighted as scikit-learn's `sample_weight`
    weighs them: MSE = sum(w * err^2) / sum(w), MAE likewise, R² = 1 - sum(w * err^2) /
    sum(w * (y - weighted mean of y)^2).
    """
    err = y_pred.astype(np.float64) - y_true.astype(np.float64)
    n = len(y_true)
    weights = None if w is None else np.asarray(w, dtype=np.float64)
    per = []
    for j in range(y_true.shape[1]):
        mse = float(np.average(err[:, j] ** 2, weights=weights))
        centre = np.average(y_true[:, j], weights=weights)
        sst = float(np.sum((1.0 if weights is None else weights) * (y_true[:, j] - centre) ** 2))
        sse = float(np.sum((1.0 if weights is None else weights) * err[:, j] ** 2))
        r2 = 1.0 - sse / sst if sst > 0 else None
        mae = float(np.average(np.abs(err[:, j]), weights=weights))
        per.append({"mse": mse, "rmse": math.sqrt(mse), "mae": mae, "r2": r2})
    mse = float(np.mean([p["mse"] for p in per])) if weights is not None else float(np.mean(err**2))
    mae = float(np.mean([p["mae"] for p in per])) if weights is not None else float(np.mean(np.abs(err)))
    r2s = [p["r2"] for p in per if p["r2"] is not None]
    overall = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": mae,
        "r2": float(np.mean(r2s)) if len(r2s) == len(per) else None,
        "n": n,
    }
    return overall, per


def load(ckpt_path: Path) -> tuple[dict[str, Any], Preprocessor, torch.nn.Module, str]:
    """A checkpoint, its preprocessing, its model with weights, and the CSV delimiter it was trained with."""
    ckpt = checkpoint.load(ckpt_path)
    pre = checkpoint.preprocessor(ckpt_path, ckpt)
    model = checkpoint.model(ckpt_path, ckpt)
    delimiter = str(ckpt[checkpoint.K_CONFIG].get("data", {}).get("delimiter", ","))
    return ckpt, pre, model, delimiter


def data_cache(ckpt: dict[str, Any], notes: list[str]) -> cache.Store | None:
    """The data cache as the checkpoint's run was configured (`auto` for runs from before
    `data.cache`); a folder that cannot be written here is only a note: the setting came
    with the checkpoint, perhaps from another machine."""
    setting = ckpt[checkpoint.K_CONFIG].get("data", {}).get("cache", "auto")
    return cache.open_store(str(setting), notes, strict=False)


def drift_watch(ckpt: dict[str, Any], pre: Preprocessor) -> Watch | None:
    """A drift counter for new rows, when the checkpoint holds its training profile."""
    profile = ckpt.get(checkpoint.K_PROFILE)
    return Watch(profile, pre) if profile is not None else None


def evaluate(ckpt_path: Path, csv_path: Path, device: str = "cpu", interval: float | None = None) -> Report:
    """Metrics of a checkpoint on a CSV, in the targets' own units; with `interval`, the
    coverage and width of its prediction intervals at that level."""
    dev = runtime.resolve_device(device, "--device")
    ckpt, pre, model, delimiter = load(ckpt_path)
    half = intervals.half_widths(ckpt_path, ckpt, interval) if interval is not None else None
    watch = drift_watch(ckpt, pre)
    cache_notes: list[str] = []
    store = data_cache(ckpt, cache_notes)
    setting = str(ckpt[checkpoint.K_CONFIG].get("data", {}).get("memory_budget", "auto"))
    weight = ckpt[checkpoint.K_CONFIG].get("data", {}).get("weight")
    big = evaluate_stream.mapped_if_too_big(csv_path, pre, delimiter, setting, store)
    if big is not None:  # the table's arrays exceed data.memory_budget: scored block by block
        if weight is not None and weight in big[1]:
            raise DataError(
                f"{csv_path}: the table is larger than data.memory_budget, and mse-train does not "
                f"yet weight the metrics of a streamed table by its column `{weight}` (`data.weight`)",
                [
                    "raise `data.memory_budget` in the checkpoint's run config, or evaluate a copy of "
                    f"the file without the column `{weight}` for unweighted metrics",
                ],
            )
        if interval is not None:
            raise DataError(
                f"{csv_path}: --interval is not scored on a table larger than data.memory_budget",
                ["evaluate without --interval, or on a sample of the rows"],
            )
        model.to(dev)
        overall, per, notes, shown_y, shown_p = evaluate_stream.metrics(
            csv_path, big[0], big[1], pre, model, dev, watch
        )
        return Report(
            overall,
            dict(zip(pre.target_names, per, strict=True)),
            cache_notes + notes,
            int(ckpt[checkpoint.K_EPOCH]),
            shown_y,
            shown_p,
            None,
            watch.findings() if watch is not None else [],
        )
    data, split, notes = prepare.prepare_eval(
        csv_path, pre, delimiter, watch=watch, store=store, weight=None if weight is None else str(weight)
    )
    notes = cache_notes + notes
    model.to(dev)
    y_pred = scoring.predictions(model, split.x, dev, pre, data)
    # The targets as read, not unscale(scale(y)): scaling a far-out target in float32 overflows.
    y_true = data.frame[pre.target_names].to_numpy(dtype=np.float64)
    overall, per = regression_metrics(y_true, y_pred, split.w)
    # Finite predictions and float32 targets give finite float64 metrics; this keeps it so.
    if not all(math.isfinite(v) for v in (overall["mse"], overall["mae"])):
        raise DataError(f"{csv_path}: the metrics are not finite numbers", ["check the target cells"])
    return Report(
        overall,
        dict(zip(pre.target_names, per, strict=True)),
        notes,
        int(ckpt[checkpoint.K_EPOCH]),
        y_true,
        y_pred,
        None
        if half is None
        else intervals.coverage(y_true, y_pred, half, float(interval or 0), pre.target_names),
        watch.findings() if watch is not None else [],
        None if split.w is None else str(weight),
    )
