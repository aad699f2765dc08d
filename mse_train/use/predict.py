"""`mse-train predict`: the CSV's rows as written, with a `<target>_pred` column per target.

Large files stream in chunks through the same table reader as `run` and `eval`
(data/table.py `read_chunks`), so every command reads names and cells by one set of rules.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import IO

import numpy as np
import torch

from mse_train import runtime
from mse_train.data import table
from mse_train.data.missing import handle_missing
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import DataError
from mse_train.models import inference
from mse_train.outputs import fsio
from mse_train.use.evaluate import load

CHUNK_ROWS = 100_000


def predict(ckpt_path: Path, csv_path: Path, out_path: Path | None, device: str = "cpu") -> int:
    """Write the rows of `csv_path` with a `<target>_pred` column per target; returns rows."""
    dev = runtime.resolve_device(device, "--device")
    _, pre, model, delimiter = load(ckpt_path)
    header = table.read_header(csv_path, delimiter)
    table.check_columns(csv_path, header, pre.features, "feature the model was trained on")
    clash = [f"{t}_pred" for t in pre.target_names if f"{t}_pred" in header]
    if clash:
        raise DataError(
            f"{csv_path}: already has column(s) {', '.join(clash)}",
            ["rename them; predict adds these columns"],
        )
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
    rows = 0
    for view, cells in table.read_chunks(
        csv_path, pre.features, pre.categorical_names, delimiter, CHUNK_ROWS
    ):
        empty = view.frame[pre.features].isna().to_numpy().any(axis=1)
        if empty.any() and pre.missing == "error":
            handle_missing(view, pre.features, [], "error")
        x = pre.features_array(view)
        out = pre.unscale_targets(inference.predict(model, torch.from_numpy(x).to(dev)).cpu().numpy())
        if pre.missing == "drop":
            out[empty] = np.nan  # rows the model cannot score get empty predictions
        predicted = [[("" if math.isnan(v) else repr(float(v))) for v in row] for row in out]
        writer.writerows(r + p for r, p in zip(cells.to_numpy(dtype=object).tolist(), predicted, strict=True))
        rows += len(view.frame)
    return rows
