"""Parquet tables (pyarrow, the optional `parquet` extra): the needed columns, typed as CSV cells are.

Only the columns a run needs are read (pyarrow's `columns=`), so an unused column of any
type costs nothing. Numbers (integer, float, decimal) are numbers; null and NaN are
empty cells. Text (string, large_string, a dictionary of strings) and booleans (as the
text `True`/`False`, which is how pandas writes them to CSV) are cells of text that
follow the CSV rules exactly: stripped, the MISSING_VALUES empty, parsed as numbers in a
numeric column, categorical when listed in `data.categorical` or mostly not numbers. A
numeric column listed in `data.categorical` has its values as text (`3`, `2.5`), as a
CSV's integer codes are. Integers beyond float32's exact range (2**24) become the nearest
float32, as the same digits in a CSV do; decimals go through float64. Other types (lists,
structs, dates, timestamps, durations, binary) are an error naming the column, its type
and the fix.

Parquet has no lines: a message names the row, counted from 1 over the whole file, and
its row group, counted from 0 as pyarrow's `read_row_group(i)` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train.data.csvscan import MISSING_VALUES, shown_cell
from mse_train.errors import EXAMPLES, DataError, EnvironmentProblem, examples

INSTALL = "pip install 'mse-train[parquet]'"
_SNIFF_ROWS = 1000  # rows looked at by `init`, as for a CSV


def is_parquet(path: Path) -> bool:
    """Chosen by extension: any other name is read as CSV."""
    return path.suffix.lower() == ".parquet"


def _pyarrow() -> Any:
    """pyarrow.parquet, imported on first use so that `--help` never pays for it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EnvironmentProblem(
            "reading a .parquet file needs pyarrow, which is not installed", [f"install it: {INSTALL}"]
        ) from None
    return pq


def require() -> None:
    """Fail at once, with the install hint, when pyarrow is missing."""
    _pyarrow()


@contextmanager
def _arrow_errors(path: Path) -> Iterator[None]:
    """A file pyarrow cannot read (not Parquet, truncated, damaged) is named, not a traceback."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot be read as Parquet: {exc}",
            ["if it is a CSV file, name it .csv; otherwise write the Parquet file again"],
        ) from None


def _open(path: Path) -> Any:
    pq = _pyarrow()
    with _arrow_errors(path):
        return pq.ParquetFile(path)


def header(path: Path) -> list[str]:
    """Column names from the Parquet schema (nothing else is read)."""
    return list(_open(path).schema_arrow.names)


def row_groups(path: Path) -> tuple[int, ...]:
    """Rows in each row group, for naming where a row is."""
    meta = _open(path).metadata
    return tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))


def places(groups: Sequence[int], rows: np.ndarray) -> list[str]:
    """`12 (row group 0)`: a row counted from 1 over the file, and its row group from 0."""
    ends = np.cumsum(np.asarray(groups, dtype=np.int64))
    return [f"{int(r) + 1} (row group {int(np.searchsorted(ends, r, side='right'))})" for r in rows]


# ----------------------------------------------------------------------- types
def _kind(path: Path, name: str, kind: Any) -> str:
    """ "number" or "text"; any other Parquet type is an error naming the column and the fix."""
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(kind):
        kind = kind.value_type  # a dictionary is read as its values
    if t.is_integer(kind) or t.is_floating(kind) or t.is_decimal(kind):
        return "number"
    if t.is_string(kind) or t.is_large_string(kind) or _is_string_view(kind):
        return "text"
    if t.is_boolean(kind) or t.is_null(kind):
        return "text"
    if t.is_duration(kind):
        how = f"convert `{name}` to a number before writing the file (e.g. seconds)"
    elif t.is_temporal(kind):
        how = (
            f"convert `{name}` to a number before writing the file (e.g. seconds since 1970, or "
            "days since the first date) or to a string to use it as a category"
        )
    else:
        how = f"cast `{name}` to a number or a string before writing the file"
    raise DataError(
        f"{path}, column `{name}`: Parquet type `{kind}` cannot be used as a feature or target",
        [
            "only numbers, strings (also dictionary-encoded) and booleans are read",
            f"{how}, or leave it out (`data.features` lists the columns to use)",
        ],
    )


def _is_string_view(kind: Any) -> bool:
    import pyarrow as pa

    check = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return bool(check is not None and check(kind))


def _text(array: Any) -> pd.Series:
    """Every value as a text cell (None where null), stripped, the MISSING_VALUES as NaN."""
    import pyarrow as pa

    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)
        kind = kind.value_type
    if _is_string_view(kind):
        array = array.cast(pa.string())
        kind = pa.string()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = array.to_numpy(zero_copy_only=False)
    else:  # numbers listed as categorical, booleans: as Python (and pandas' to_csv) writes them
        values = np.array([None if v is None else str(v) for v in array.to_pylist()], dtype=object)
    cells = pd.Series(values, dtype=object).str.strip()
    return cells.where(~cells.isin(MISSING_VALUES))


def _numbers(array: Any) -> np.ndarray:
    """float32, NaN where null; beyond float32 becomes inf, which the caller's check names.

    Integers go straight to float32, as the CSV reader's int64/uint64 cells do (one
    rounding: 2**60 and 2**64 - 1 are read as the nearest float32, like the same cells
    of a CSV); pyarrow's own cast would refuse integers beyond 2**53 as not exact.
    """
    import pyarrow as pa

    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if pa.types.is_integer(array.type):
        exact = array.fill_null(0).to_numpy(zero_copy_only=False)
        values = np.asarray(exact).astype(np.float32)
        if array.null_count:
            values[np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
        return values
    wide = array.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
        return np.asarray(wide, dtype=np.float64).astype(np.float32)


def typed(
    path: Path,
    data: Any,
    columns: Sequence[str],
    categorical: Sequence[str],
    infer_from: Sequence[str],
    groups: Sequence[int],
    offset: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """The `columns` of a pyarrow table as the CSV reader types them, and the categorical ones.

    `offset` is the file row of the table's first row (for batches), so messages name
    the row in the file.
    """
    out: dict[str, Any] = {}
    text_cols: list[str] = []
    bad_numbers: list[str] = []
    for name in columns:
        array = data.column(name)
        kind = _kind(path, name, array.type)
        if kind == "number" and name not in categorical:
            out[name] = _numbers(array)
            continue
        cells = _text(array)
        if name in categorical:
            out[name] = cells
            text_cols.append(name)
            continue
        parsed = pd.to_numeric(cells, errors="coerce")
        present = cells.notna().to_numpy()
        bad = np.flatnonzero(present & parsed.isna().to_numpy())
        if len(bad) == 0:
            out[name] = parsed.to_numpy(dtype=np.float64).astype(np.float32)
        elif name in infer_from and len(bad) * 2 >= int(present.sum()):
            out[name] = cells  # mostly text: categorical, as in a CSV
            text_cols.append(name)
        else:
            shown = [
                f"row {where}: {shown_cell(str(cells.iloc[r]))}"
                for where, r in zip(places(groups, bad[:EXAMPLES] + offset), bad[:EXAMPLES], strict=True)
            ]
            bad_numbers.append(f"column `{name}`: not a number at {examples(shown, len(bad))}")
    if bad_numbers:
        raise DataError(
            f"{path}: non-numeric values in numeric columns",
            [
                *bad_numbers,
                "fix those cells, or list the column in `data.categorical` to treat its values as categories",
            ],
        )
    frame = pd.DataFrame(out, index=pd.RangeIndex(offset, offset + data.num_rows))
    return frame, text_cols


# --------------------------------------------------------------------- reading
def read(
    path: Path, columns: Sequence[str], categorical: Sequence[str], infer_from: Sequence[str]
) -> tuple[pd.DataFrame, list[str], tuple[int, ...]]:
    """The needed columns of the whole file: the frame, its categorical columns, the row groups."""
    pf = _open(path)
    groups = row_groups(path)
    for name in columns:  # every type is checked before any row is read
        _kind(path, name, pf.schema_arrow.field(name).type)
    with _arrow_errors(path):
        data = pf.read(columns=list(columns))
    frame, text_cols = typed(path, data, columns, categorical, infer_from, groups)
    return frame, text_cols, groups


def sniff(path: Path, columns: Sequence[str]) -> tuple[set[str], set[str], int | None, dict[str, str]]:
    """For `init`: columns whose first rows hold text, or empty cells; rows looked at; and the
    columns of types that cannot be read, with their type (left out of the starter config)."""
    pf = _open(path)
    unusable: dict[str, str] = {}
    usable = []
    for name in columns:
        kind = pf.schema_arrow.field(name).type
        try:
            _kind(path, name, kind)
            usable.append(name)
        except DataError:
            unusable[name] = str(kind)
    with _arrow_errors(path):
        batch = next(pf.iter_batches(batch_size=_SNIFF_ROWS, columns=usable), None)
    if batch is None:
        return set(), set(), 0, unusable
    text, empty = set(), set()
    for name in usable:
        array = batch.column(name)
        if _kind(path, name, array.type) == "number":
            values = _numbers(array)
            if np.isnan(values).any():
                empty.add(name)
            continue
        cells = _text(array)
        if cells.isna().any():
            empty.add(name)
        if pd.to_numeric(cells[cells.notna()], errors="coerce").isna().any():
            text.add(name)
    return text, empty, batch.num_rows, unusable


def read_batches(
    path: Path, columns: Sequence[str], categorical: Sequence[str], batch_rows: int
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, tuple[int, ...]]]:
    """For `predict`: batch by batch, the `columns` typed and every column of the file as text.

    Every column is read because predict writes each input row back in full; a column of
    a type that cannot be typed is written as Python's str() of its values.
    """
    pf = _open(path)
    groups = row_groups(path)
    names = list(pf.schema_arrow.names)
    for name in columns:
        _kind(path, name, pf.schema_arrow.field(name).type)
    offset = 0
    with _arrow_errors(path):
        batches = pf.iter_batches(batch_size=batch_rows)
        for batch in batches:
            frame, _ = typed(path, batch, columns, categorical, (), groups, offset)
            cells = pd.DataFrame(
                {name: _echo(batch.column(i)) for i, name in enumerate(names)},
                index=frame.index,
            )
            yield frame, cells, groups
            offset += batch.num_rows


def _echo(array: Any) -> list[str]:
    """Values as predict writes them back: text as is, numbers as Python writes them, null empty."""
    return ["" if v is None else str(v) for v in array.to_pylist()]
