"""`mse-train predict`: the CSV's rows as written, with a `<target>_pred` column per target.

The input may be a CSV, a .csv.gz or a Parquet file (read in batches); the output is
always CSV text, so an output name ending in .parquet or .gz is refused rather than
written as a file its name misdescribes.

Large files stream in chunks through the same table reader as `run` and `eval`
(data/table.py `read_chunks`), so every command reads names and cells by one set of rules.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch

from mse_train import runtime
from mse_train.data import files, frames, table
from mse_train.data.drift import Finding, Watch
from mse_train.data.missing import handle_missing
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import EXAMPLES, DataError, SaveError, UserError
from mse_train.outputs import fsio
from mse_train.use import intervals, scoring
from mse_train.use.evaluate import drift_watch, load

CHUNK_ROWS = 100_000
SPOOL_CHARS = 64 << 20  # stdout output is held in memory up to this size, then in a temporary file


@dataclass
class Predicted:
    rows: int
    drift: list[Finding]


def predict(
    ckpt_path: Path,
    csv_path: Path,
    out_path: Path | None,
    device: str = "cpu",
    interval: float | None = None,
    delimiter: str | None = None,
) -> Predicted:
    """Write the rows of `csv_path` with a `<target>_pred` column per target (and, with
    `interval`, `<target>_lo` and `<target>_hi`); returns the rows and any drift found.
    `delimiter`: the CSV's field separator, also the output's (None: the training CSV's)."""
    if out_path is not None and out_path.suffix.lower() in (".parquet", ".gz"):
        raise UserError(
            f"{out_path}: predict writes CSV text, which a name ending in {out_path.suffix} misdescribes",
            ["name the output .csv (then convert it if you need Parquet or gzip)"],
        )
    dev = runtime.resolve_device(device, "--device")
    ckpt, pre, model, trained_with = load(ckpt_path)
    delimiter = delimiter or trained_with
    half = intervals.half_widths(ckpt_path, ckpt, interval) if interval is not None else None
    header = table.read_header(csv_path, delimiter)
    table.check_columns(csv_path, header, pre.features, "feature the model was trained on")
    suffixes = ("_pred", "_lo", "_hi") if half is not None else ("_pred",)
    names = [f"{t}{suffix}" for t in pre.target_names for suffix in suffixes]
    clash = [name for name in names if name in header]
    if clash:
        raise DataError(
            f"{csv_path}: already has column(s) {', '.join(clash)}",
            ["rename them; predict adds these columns"],
        )
    model.to(dev)
    watch = drift_watch(ckpt, pre)

    def write(sink: IO[str]) -> int:
        return _predict_to(sink, csv_path, header, pre, model, dev, names, delimiter, half, watch)

    if out_path is not None and files.irregular_kind(out_path) is None:
        rows = _into_file(out_path, write)  # its temporary file holds the rows until all succeed
        return Predicted(rows, watch.findings() if watch is not None else [])
    # stdout, a pipe or a device: all or nothing too, so that a bad cell late in the file
    # leaves no partial output. The rows wait in memory, then in a temporary file.
    with tempfile.SpooledTemporaryFile(SPOOL_CHARS, "w+", encoding="utf-8", newline="") as spool:
        try:
            rows = write(spool)
        except OSError as exc:
            raise SaveError(
                f"the predictions could not be held in a temporary file in {tempfile.gettempdir()}: "
                f"{exc.strerror or exc}",
                ["free space there, point TMPDIR at a folder with room, or write to a file with -o"],
            ) from None
        spool.seek(0)
        if out_path is None:
            shutil.copyfileobj(spool, sys.stdout)
            sys.stdout.flush()
        else:
            _into_file(out_path, lambda sink: _copy(spool, sink, rows))
    return Predicted(rows, watch.findings() if watch is not None else [])


def predict_frame(
    ckpt_path: Path, rows: pd.DataFrame, interval: float | None = None, device: str = "cpu"
) -> tuple[pd.DataFrame, list[Finding]]:
    """`predict` on a DataFrame (the Python API, the MLflow model): the `<target>_pred`
    (and `_lo`, `_hi`) columns, indexed like `rows`, and the drift findings.

    The rows go through `predict` itself as a table file (data/frames.py), so a frame and
    the same rows in a CSV give the same numbers; messages name the frame.
    """
    with tempfile.TemporaryDirectory(prefix="mse-train-predict-") as tmp:
        source, out = Path(tmp) / "rows.csv", Path(tmp) / "predicted.csv"
        with frames.named(source):
            frames.write(rows, source)
            done = predict(ckpt_path, source, out, device, interval)
        added = [c for c in pd.read_csv(out, nrows=0).columns if c not in rows.columns]
        values = pd.read_csv(out, usecols=added, dtype=np.float64)
    values.index = rows.index
    return values, done.drift


def _into_file(path: Path, write: Callable[[IO[str]], int]) -> int:
    """`write` the text into `path` through fsio (atomic for a regular file); returns its rows."""
    try:
        with fsio.atomic_open(path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            rows = write(text)
            text.flush()
            text.detach()
    except OSError as exc:
        raise fsio.save_error(path, exc) from None
    return rows


def _copy(source: IO[str], sink: IO[str], rows: int) -> int:
    shutil.copyfileobj(source, sink)
    return rows


def float32_text(value: float) -> str:
    """The shortest text that reads back as the same float32: the model computes in float32,
    so the digits a float64 repr adds beyond it (17 in all) are noise. Written as Python
    writes a float (3.0, 0.1, 1e+30: exponent below -4 or from 16 on), so any reader
    parses it; float32(text) gives the value predict computed, rounded once to float32."""
    number = np.float32(value)
    if not np.isfinite(number) or number == 0 or 1e-4 <= abs(number) < 1e16:
        return np.format_float_positional(number, unique=True, trim="0")
    return np.format_float_scientific(number, unique=True, trim="-")


def _watch_words(
    watch: Watch, frame: pd.DataFrame, cells: pd.DataFrame, numeric: list[str], before: int
) -> None:
    """Tell `watch` of the cells of numeric features that held words (read as empty under
    `data.non_numeric: missing`): empty as numbers, not as read. `before`: rows in earlier
    chunks, so that a cell is named by its data row."""
    for name in numeric:
        raw = cells[name]
        words = frame[name].isna().to_numpy() & raw.notna().to_numpy()
        if words.any():
            at = np.flatnonzero(words)
            shown = [(f"row {before + i + 1}", str(raw.iloc[i]).strip()) for i in at[:EXAMPLES]]
            watch.observe_words(name, len(at), shown)


def _predict_to(
    sink: IO[str],
    csv_path: Path,
    header: list[str],
    pre: Preprocessor,
    model: torch.nn.Module,
    dev: torch.device,
    names: list[str],
    delimiter: str,
    half: np.ndarray | None,
    watch: Watch | None,
) -> int:
    writer = csv.writer(sink, delimiter=delimiter, lineterminator="\n")
    writer.writerow([*header, *names])
    rows = 0
    for view, cells in table.read_chunks(
        csv_path, pre.features, pre.categorical_names, delimiter, CHUNK_ROWS, pre.non_numeric
    ):
        if watch is not None:
            watch.observe(view.frame)
            if pre.non_numeric == "missing":
                _watch_words(watch, view.frame, cells, [c.name for c in pre.numeric], rows)
        empty = np.asarray(view.frame[pre.features].isna().to_numpy().any(axis=1), dtype=bool)
        if empty.any() and pre.missing == "error":
            handle_missing(view, pre.features, [], "error")
        x = pre.features_array(view)
        # Under `drop` a row with an empty feature gets an empty prediction (documented);
        # any other prediction that is not a finite number stops the command.
        dropped = empty if pre.missing == "drop" else None
        out = scoring.predictions(model, x, dev, pre, view, skip=dropped)
        if half is not None:  # per target: prediction, low end, high end
            out = np.stack([out, out - half, out + half], axis=2).reshape(len(out), len(names))
        predicted = [[float32_text(v) for v in row] for row in out]
        if dropped is not None:
            for index in np.flatnonzero(dropped):
                predicted[index] = [""] * len(names)
        writer.writerows(r + p for r, p in zip(cells.to_numpy(dtype=object).tolist(), predicted, strict=True))
        rows += len(view.frame)
    return rows
