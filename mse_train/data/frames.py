"""A DataFrame (or array) -> the table file that `run`, `cv` and `predict` read.

The Python API has no reader of its own: a frame is written as CSV text into a private
temporary folder and read back by data/table.py, the reader every command uses, so a
frame and the same rows in a file are parsed, checked and preprocessed by one set of
rules (and a frame read from a CSV trains exactly as that CSV does). Numbers are written
as their shortest round-trip text, so nothing is lost on the way; columns of a category,
string, object or boolean dtype are named as `data.categorical`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train.errors import DataError, MseTrainError

SOURCE = "the DataFrame"  # how messages name a frame's table


def frame_of(x: Any, prefix: str = "x", names: Sequence[str] | None = None) -> pd.DataFrame:
    """`x` as a DataFrame with string column names: a DataFrame keeps its names (as text);
    an array's columns are named `names`, else x0, x1, ..."""
    if isinstance(x, pd.DataFrame):
        frame = x.copy(deep=False)
        frame.columns = [str(c) for c in frame.columns]
    elif isinstance(x, pd.Series):
        frame = x.to_frame(name=str(x.name) if x.name is not None else prefix)
    else:
        values = np.asarray(x)
        if values.ndim == 1:
            values = values.reshape(-1, 1)
        if values.ndim != 2:
            raise DataError(
                f"{SOURCE}: expected a table of rows and columns, got an array of {values.ndim} dimensions",
                ["pass a 2-D array or a DataFrame"],
            )
        columns = list(names) if names is not None else [f"{prefix}{i}" for i in range(values.shape[1])]
        if len(columns) != values.shape[1]:
            raise DataError(
                f"{SOURCE}: {values.shape[1]} column(s), but the model was trained on {len(columns)}",
                [f"pass the columns {', '.join(columns)}"],
            )
        frame = pd.DataFrame(values, columns=columns)
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise DataError(f"{SOURCE}: duplicate column names", [*duplicated, "give every column its own name"])
    return frame


def categorical_columns(frame: pd.DataFrame) -> list[str]:
    """Columns whose dtype says they hold categories: category, string, object and bool."""
    types = pd.api.types
    return [
        str(name)
        for name, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.CategoricalDtype)
        or types.is_bool_dtype(dtype)
        or types.is_object_dtype(dtype)
        or types.is_string_dtype(dtype)
    ]


def write(frame: pd.DataFrame, path: Path) -> Path:
    """`frame` as CSV text at `path` (comma-separated, no index): what `run` then reads."""
    frame.to_csv(path, index=False, lineterminator="\n", na_rep="")
    return path


def target_frame(y: Any, features: Sequence[str]) -> pd.DataFrame:
    """`y` as a frame of target columns: a Series keeps its name, a DataFrame its columns,
    an array's columns are y (one) or y0, y1, ... (several); never a feature's name."""
    if isinstance(y, pd.DataFrame | pd.Series):
        frame = frame_of(y, "y")
    else:
        values = np.asarray(y)
        names = ["y"] if values.ndim == 1 or values.shape[1] == 1 else None
        frame = frame_of(values, "y", names)
    clash = [c for c in frame.columns if c in set(features)]
    if clash:
        frame.columns = [f"{c}_target" if c in clash else c for c in frame.columns]
    return frame


@contextlib.contextmanager
def named(path: Path) -> Iterator[None]:
    """Errors about the table file written for a frame name the frame, not the file: its
    line N is the frame's row N - 2 (counted from 0; line 1 is the header)."""
    try:
        yield
    except MseTrainError as exc:
        said = f"{SOURCE} (line 2 is its first row)"
        exc.summary = exc.summary.replace(str(path), said)
        exc.problems = [p.replace(str(path), said) for p in exc.problems]
        exc.args = (exc.render(),)
        raise
