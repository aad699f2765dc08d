"""`eval` on a table whose arrays do not fit `data.memory_budget`: scored a block at a time.

The table is read through the data cache, memory-mapped (data/stream.py), its empty cells
handled as `data.missing` says (as in memory), and each block of rows is encoded, predicted
and added to running sums in float64: squared and absolute errors, and the targets' mean
and squared deviations (Chan's merge) for R². The drift watch sees each block as read.
Only the first PLOT_ROWS rows are kept for `--plot`; `--interval` is not scored streamed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mse_train.data import cache, ingest, parquet, stream_fit, table
from mse_train.data.drift import Watch
from mse_train.data.preprocess import Preprocessor
from mse_train.data.stream import Encoder, Rows
from mse_train.data.stream_stats import Moments
from mse_train.errors import DataError
from mse_train.models import inference

PLOT_ROWS = 100_000  # rows kept for `eval --plot` of a streamed table (the first ones)


def mapped_if_too_big(
    path: Path, pre: Preprocessor, delimiter: str, setting: str, store: cache.Store | None
) -> tuple[cache.Entry, list[str]] | None:
    """The table's mapped cache entry and header when its arrays exceed the budget, else None."""
    if store is None:
        return None
    limit = stream_fit.budget_of(setting)
    targets = pre.target_names
    if not parquet.is_parquet(path):
        header = table.read_header(path, delimiter)
        most_rows = path.stat().st_size // max(1, len(header))
        if stream_fit.in_memory_bytes(most_rows, len(header), len(header), len(targets)) <= limit:
            return None
    header = table.read_header(path, delimiter)
    table.check_columns(path, header, pre.features, "feature the model was trained on")
    table.check_columns(path, header, targets, "target")
    found = ingest.mapped(
        path,
        [*pre.features, *targets],
        pre.categorical_names,
        infer_from=(),
        delimiter=delimiter,
        store=store,
        non_numeric=pre.non_numeric,
    )
    if found is None:
        return None
    entry = found[0]
    inputs = len(pre.numeric) + sum(len(c.categories) for c in pre.categorical)
    need = stream_fit.in_memory_bytes(entry.rows, len(entry.columns), inputs, len(targets))
    return (entry, header) if need > limit else None


def metrics(
    path: Path,
    entry: cache.Entry,
    header: list[str],
    pre: Preprocessor,
    model: torch.nn.Module,
    dev: torch.device,
    watch: Watch | None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str], np.ndarray, np.ndarray]:
    """Overall and per-target metrics (as evaluate.regression_metrics), notes, and the first
    PLOT_ROWS rows' actual and predicted values."""
    notes = [f"{path.name}: scored a block at a time from the data cache (larger than data.memory_budget)"]
    source = stream_fit.Source(path, entry, header)
    if watch is not None:
        for frame in _raw_blocks(entry, pre):
            watch.observe(frame)
    keep = stream_fit.keep(source, pre.features, pre.target_names, pre.missing, notes)
    rows = Rows(Encoder(pre, entry, path), keep)
    k = len(pre.target_names)
    sse, sae = np.zeros(k), np.zeros(k)
    truth = [Moments() for _ in range(k)]
    shown_y: list[np.ndarray] = []
    shown_p: list[np.ndarray] = []
    kept = 0
    for x, y in rows.blocks():
        out = inference.predict(model, torch.from_numpy(x).to(dev)).cpu().numpy()
        predicted = pre.unscale_targets(out).astype(np.float64)
        actual = pre.unscale_targets(y).astype(np.float64)
        bad = ~np.isfinite(predicted).all(axis=1)
        if bad.any():
            raise DataError(
                f"{path}: the model's prediction is not a finite number for {int(bad.sum())} row(s) "
                f"of a block of rows from {kept + 1} on (counting kept rows)",
                ["check those rows for values far outside the training range"],
            )
        err = predicted - actual
        sse += np.square(err).sum(0)
        sae += np.abs(err).sum(0)
        for j in range(k):
            truth[j].add(actual[:, j])
        if kept < PLOT_ROWS:
            shown_y.append(actual[: PLOT_ROWS - kept])
            shown_p.append(predicted[: PLOT_ROWS - kept])
        kept += len(y)
    n = len(rows)
    per = []
    for j in range(k):
        mse = float(sse[j] / n)
        sst = truth[j].m2
        r2 = 1.0 - float(sse[j]) / sst if sst > 0 else None
        per.append({"mse": mse, "rmse": math.sqrt(mse), "mae": float(sae[j] / n), "r2": r2})
    mse = float(sse.sum() / (n * k))
    r2s = [p["r2"] for p in per if p["r2"] is not None]
    overall = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(sae.sum() / (n * k)),
        "r2": float(np.mean(r2s)) if len(r2s) == len(per) else None,
        "n": n,
    }
    return overall, per, notes, np.concatenate(shown_y), np.concatenate(shown_p)


def _raw_blocks(entry: cache.Entry, pre: Preprocessor) -> Any:
    """The feature columns as read, a block at a time, as frames (categories decoded)."""
    step = 1 << 16
    for start in range(0, entry.rows, step):
        cells: dict[str, Any] = {}
        for name in pre.features:
            part = entry.columns[name][start : start + step]
            if name in entry.vocabularies:
                cells[name] = pd.Categorical.from_codes(
                    np.asarray(part, dtype=np.int64), categories=pd.Index(entry.vocabularies[name])
                )
            else:
                cells[name] = np.asarray(part)
        yield pd.DataFrame(cells)
