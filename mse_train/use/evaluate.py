"""`mse-train eval`: score a checkpoint on a CSV, in each target's own units.

The CSV's columns are read by name, as the checkpoint names them, and preprocessed with
the statistics stored in it: new rows are treated exactly like the training rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mse_train import runtime
from mse_train.data import cache, prepare, stream_fit
from mse_train.data.drift import Finding, Watch
from mse_train.data.fitting import Moments
from mse_train.data.preprocess import Preprocessor
from mse_train.data.table import Table
from mse_train.errors import DataError
from mse_train.outputs import checkpoint
from mse_train.use import intervals, scoring

# A block to score: inputs, targets as read (float64), sample weights or None, its rows.
Block = tuple[np.ndarray, np.ndarray, np.ndarray | None, Table]
PLOT_ROWS = 100_000  # rows kept for `eval --plot` of a streamed table (the first ones)


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


class Sums:
    """Running float64 sums of a table's errors, a block of rows at a time, for MSE, RMSE,
    MAE and R² per target and averaged over targets; one block gives numpy's numbers for
    the whole table exactly. The first `keep` rows' actual and predicted values are kept
    (None: all of them), for `--plot` and `--interval`.

    With `w`, each row's sample weight, the metrics are weighted as scikit-learn's
    `sample_weight` weighs them: MSE = sum(w * err^2) / sum(w), MAE likewise, R² = 1 -
    sum(w * err^2) / sum(w * (y - weighted mean of y)^2).
    """

    def __init__(self, targets: int, keep: int | None = None) -> None:
        self.sse, self.sae = np.zeros(targets), np.zeros(targets)
        self.all_sse, self.all_sae = 0.0, 0.0  # over every cell, unweighted
        self.truth = [Moments() for _ in range(targets)]
        self.n, self.weighted, self.keep = 0, False, keep
        self.actual: list[np.ndarray] = []
        self.predicted: list[np.ndarray] = []

    def add(self, actual: np.ndarray, predicted: np.ndarray, w: np.ndarray | None = None) -> None:
        err = predicted.astype(np.float64) - actual.astype(np.float64)
        weights = None if w is None else np.asarray(w, dtype=np.float64)
        self.weighted = weights is not None
        for j in range(err.shape[1]):
            square, absolute = err[:, j] ** 2, np.abs(err[:, j])
            self.sse[j] += float(np.sum(square if weights is None else weights * square))
            self.sae[j] += float(np.sum(absolute if weights is None else weights * absolute))
            self.truth[j].add(actual[:, j].astype(np.float64), weights)
        self.all_sse += float(np.sum(err**2))
        self.all_sae += float(np.sum(np.abs(err)))
        room = len(err) if self.keep is None else max(0, self.keep - self.n)
        if room:
            self.actual.append(actual[:room])
            self.predicted.append(predicted[:room])
        self.n += len(err)

    def metrics(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Overall and per-target metrics."""
        per = []
        for j, truth in enumerate(self.truth):
            mse = float(self.sse[j] / truth.n)
            r2 = 1.0 - float(self.sse[j]) / truth.m2 if truth.m2 > 0 else None
            per.append({"mse": mse, "rmse": math.sqrt(mse), "mae": float(self.sae[j] / truth.n), "r2": r2})
        cells = self.n * len(per)
        mse = float(np.mean([p["mse"] for p in per])) if self.weighted else self.all_sse / cells
        mae = float(np.mean([p["mae"] for p in per])) if self.weighted else self.all_sae / cells
        r2s = [p["r2"] for p in per if p["r2"] is not None]
        overall = {
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": mae,
            "r2": float(np.mean(r2s)) if len(r2s) == len(per) else None,
            "n": self.n,
        }
        return overall, per

    def shown(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows' actual and predicted values (float64, the targets' own units)."""
        k = len(self.truth)
        if not self.actual:
            return np.empty((0, k)), np.empty((0, k))
        return np.concatenate(self.actual), np.concatenate(self.predicted)


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`Sums.metrics` of rows held in memory (one block)."""
    sums = Sums(y_true.shape[1], keep=0)
    sums.add(y_true, y_pred, w)
    return sums.metrics()


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


def evaluate(
    ckpt_path: Path,
    csv_path: Path,
    device: str = "cpu",
    interval: float | None = None,
    delimiter: str | None = None,
) -> Report:
    """Metrics of a checkpoint on a CSV, in the targets' own units; with `interval`, the
    coverage and width of its prediction intervals at that level. `delimiter`: the CSV's
    field separator (None: the one the model was trained with).

    A table whose arrays fit the run's `data.memory_budget` is scored as one block; a larger
    one a block at a time from the data cache (memory-mapped), keeping the first PLOT_ROWS
    rows for `--plot`. Either way each block's targets are the cells as read, not
    unscale(scale(y)): scaling a far-out target in float32 overflows.
    """
    dev = runtime.resolve_device(device, "--device")
    ckpt, pre, model, trained_with = load(ckpt_path)
    delimiter = delimiter or trained_with
    half = intervals.half_widths(ckpt_path, ckpt, interval) if interval is not None else None
    watch = drift_watch(ckpt, pre)
    notes: list[str] = []
    store = data_cache(ckpt, notes)
    data_cfg = ckpt[checkpoint.K_CONFIG].get("data", {})
    weight = None if data_cfg.get("weight") is None else str(data_cfg["weight"])
    setting = str(data_cfg.get("memory_budget", "auto"))
    model.to(dev)
    big = stream_fit.mapped_if_too_big(csv_path, pre, delimiter, setting, store)
    if big is None:
        data, split, read_notes = prepare.prepare_eval(
            csv_path, pre, delimiter, watch=watch, store=store, weight=weight
        )
        notes += read_notes
        y_true = data.frame[pre.target_names].to_numpy(dtype=np.float64)
        blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None, Table]] = [
            (split.x, y_true, split.w, data)
        ]
        sums = Sums(len(pre.targets))
    else:
        entry, header = big
        if weight is not None and weight in header:
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
        blocks = stream_fit.eval_blocks(csv_path, entry, header, pre, watch, notes, delimiter)
        sums = Sums(len(pre.targets), keep=PLOT_ROWS)
    for x, y_true, w, rows in blocks:
        sums.add(y_true, scoring.predictions(model, x, dev, pre, rows), w)
    overall, per = sums.metrics()
    # Finite predictions and float32 targets give finite float64 metrics; this keeps it so.
    if not all(math.isfinite(v) for v in (overall["mse"], overall["mae"])):
        raise DataError(f"{csv_path}: the metrics are not finite numbers", ["check the target cells"])
    y_true, y_pred = sums.shown()
    return Report(
        overall,
        dict(zip(pre.target_names, per, strict=True)),
        notes,
        int(ckpt[checkpoint.K_EPOCH]),
        y_true,
        y_pred,
        None
        if half is None
        else intervals.coverage(
            y_true, y_pred, half, float(interval or 0), pre.target_names, intervals.residuals_from(ckpt)
        ),
        watch.findings() if watch is not None else [],
        weight if sums.weighted else None,
    )
