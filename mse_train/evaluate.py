"""Score a checkpoint on a CSV (`eval`) and write predictions next to rows (`predict`).

Both read the columns the checkpoint names, by name, and apply the stored
preprocessing; metrics and predictions are in each target's own units.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch

from mse_train import checkpoint, csvscan, data, fsio, preprocess, table, train
from mse_train.errors import DataError
from mse_train.preprocess import Preprocessor

PREDICT_CHUNK_ROWS = 100_000


@dataclass
class Report:
    overall: dict[str, Any]  # mse, rmse, mae, r2, n
    targets: dict[str, dict[str, Any]]  # name -> mse, rmse, mae, r2
    notes: list[str]
    checkpoint_epoch: int

    def as_json(self) -> dict[str, Any]:
        out = dict(self.overall)
        if len(self.targets) > 1:
            out["targets"] = self.targets
        return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """MSE, RMSE, MAE and R² per target column and averaged over targets (float64)."""
    err = y_pred.astype(np.float64) - y_true.astype(np.float64)
    n = len(y_true)
    per = []
    for j in range(y_true.shape[1]):
        mse = float(np.mean(err[:, j] ** 2))
        sst = float(np.sum((y_true[:, j] - y_true[:, j].mean()) ** 2))
        r2 = 1.0 - float(np.sum(err[:, j] ** 2)) / sst if sst > 0 else None
        per.append({"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(err[:, j]))), "r2": r2})
    mse = float(np.mean(err**2))
    r2s = [p["r2"] for p in per if p["r2"] is not None]
    overall = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(np.mean(r2s)) if len(r2s) == len(per) else None,
        "n": n,
    }
    return overall, per


def _load(ckpt_path: Path) -> tuple[dict[str, Any], Preprocessor, torch.nn.Module, str]:
    ckpt = checkpoint.load(ckpt_path)
    pre = checkpoint.preprocessor(ckpt_path, ckpt)
    model = checkpoint.model(ckpt_path, ckpt)
    delimiter = str(ckpt[checkpoint.K_CONFIG].get("data", {}).get("delimiter", ","))
    return ckpt, pre, model, delimiter


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(ckpt_path: Path, csv_path: Path, device: str = "cpu") -> Report:
    """Metrics of a checkpoint on a CSV, in the targets' own units."""
    ckpt, pre, model, delimiter = _load(ckpt_path)
    _, split, notes = data.prepare_eval(csv_path, pre, delimiter)
    dev = _device(device)
    model.to(dev)
    out = train.predict(model, torch.from_numpy(split.x).to(dev)).cpu().numpy()
    y_pred = pre.unscale_targets(out)
    y_true = pre.unscale_targets(split.y)
    overall, per = regression_metrics(y_true, y_pred)
    return Report(
        overall, dict(zip(pre.target_names, per, strict=True)), notes, int(ckpt[checkpoint.K_EPOCH])
    )


def predict(ckpt_path: Path, csv_path: Path, out_path: Path | None, device: str = "cpu") -> int:
    """Write the rows of `csv_path` with a `<target>_pred` column per target; returns rows."""
    _, pre, model, delimiter = _load(ckpt_path)
    header = table.read_header(csv_path, delimiter)
    table.check_columns(csv_path, header, pre.features, "feature the model was trained on")
    clash = [f"{t}_pred" for t in pre.target_names if f"{t}_pred" in header]
    if clash:
        raise DataError(
            f"{csv_path}: already has column(s) {', '.join(clash)}",
            ["rename them; predict adds these columns"],
        )
    dev = _device(device)
    model.to(dev)
    names = [f"{t}_pred" for t in pre.target_names]
    if out_path is None:
        return _predict_to(sys.stdout, csv_path, header, pre, model, dev, names, delimiter)
    try:
        with fsio.atomic_open(out_path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            rows = _predict_to(text, csv_path, header, pre, model, dev, names, delimiter)
            text.flush()
            text.detach()
    except OSError as exc:
        raise fsio.save_error(out_path, exc) from None
    return rows


def _predict_to(
    sink: IO[str],
    csv_path: Path,
    header: list[str],
    pre: Preprocessor,
    model: torch.nn.Module,
    dev: torch.device,
    names: list[str],
    delimiter: str,
) -> int:
    writer = csv.writer(sink, delimiter=delimiter, lineterminator="\n")
    writer.writerow([*header, *names])
    numeric = [c.name for c in pre.numeric]
    rows = 0
    for chunk in table.iter_text_chunks(csv_path, delimiter, PREDICT_CHUNK_ROWS):
        frame = _typed(chunk, csv_path, header, numeric, pre.categorical_names, rows, delimiter)
        frame.index = pd.RangeIndex(rows, rows + len(frame))
        view = table.Table(csv_path, header, frame, pre.categorical_names, delimiter=delimiter)
        empty = frame[pre.features].isna().to_numpy().any(axis=1)
        if empty.any() and pre.missing == "error":
            preprocess.handle_missing(view, pre.features, [], "error")
        x = pre.features_array(view)
        out = pre.unscale_targets(train.predict(model, torch.from_numpy(x).to(dev)).cpu().numpy())
        if pre.missing == "drop":
            out[empty] = np.nan  # rows the model cannot score get empty predictions
        cells = [[("" if math.isnan(v) else repr(float(v))) for v in row] for row in out]
        writer.writerows(r + c for r, c in zip(chunk.to_numpy(dtype=object).tolist(), cells, strict=True))
        rows += len(frame)
    return rows


def _typed(
    chunk: pd.DataFrame,
    path: Path,
    header: list[str],
    numeric: list[str],
    categorical: list[str],
    offset: int,
    delimiter: str,
) -> pd.DataFrame:
    """Text cells -> float32 for numeric columns, strings for categories, NaN when empty."""
    out: dict[str, Any] = {}
    for name in numeric:
        text = chunk[name]
        empty = text.isin(csvscan.MISSING_VALUES).to_numpy()
        values = pd.to_numeric(text.where(~empty), errors="coerce").to_numpy(dtype=np.float32)
        bad = np.flatnonzero(np.isnan(values) & ~empty)
        if len(bad) == 0:
            bad = np.flatnonzero(np.isinf(values))
        if len(bad):
            lines = table.Table(path, header, chunk, [], delimiter=delimiter).line_of(bad[:5] + offset)
            shown = ", ".join(f"line {ln}: {text.iloc[i]!r}" for ln, i in zip(lines, bad[:5], strict=True))
            raise DataError(f"{path}, column `{name}`: not a finite number at {shown}", ["fix those cells"])
        out[name] = values
    for name in categorical:
        text = chunk[name]
        out[name] = text.where(~text.isin(csvscan.MISSING_VALUES))
    return pd.DataFrame(out)
