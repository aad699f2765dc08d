"""Read a table file into columns, fast when it is clean and precise when it is not.

A path ending in .parquet is read by parquet.py; every other path is a CSV, gzip-compressed
when it ends in .gz.

The fast path is pandas' C parser straight into float32. It never checks that every
row has as many fields as the header, and it fills short rows with NaN, so whenever a
file has a missing cell, a parse error or a non-number, a slower pass with the csv
module finds the exact line, column and value to report. Clean files never pay for it.
"""

from __future__ import annotations

import csv
import difflib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train.data import csvscan, files, parquet
from mse_train.data.csvscan import MISSING, MISSING_VALUES, Scan
from mse_train.data.digest import Digest
from mse_train.errors import EXAMPLES, DataError, examples

_SNIFF_ROWS = 1000  # rows read as text to guess which columns hold categories
# Every cell as the text written in the file (sniffing categories, and predict's output).
_AS_TEXT: dict[str, Any] = {
    "dtype": str,
    "keep_default_na": False,
    "index_col": False,
    "skipinitialspace": True,
    "encoding": "utf-8",
}


@dataclass
class Table:
    """The columns of one CSV file that a run needs.

    `frame` holds numeric columns as float32 (NaN where missing) and categorical ones as
    Python strings (NaN where missing), in the order asked for.
    """

    path: Path
    header: list[str]
    frame: pd.DataFrame
    categorical: list[str]
    _digest: Digest | None = field(default=None, repr=False)
    _lines: np.ndarray | None = field(default=None, repr=False)
    delimiter: str = ","
    row_groups: tuple[int, ...] | None = None  # rows per row group of a Parquet file; None: a CSV

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    @property
    def hasher(self) -> Digest:
        """The file's sha256, being computed in the background since the parse ended."""
        if self._digest is None:
            self._digest = Digest(self.path, self.delimiter)
        return self._digest

    def with_frame(self, frame: pd.DataFrame) -> Table:
        """The same file with some rows left out (line numbers stay those of the file)."""
        return Table(
            self.path,
            self.header,
            frame,
            self.categorical,
            self._digest,
            self._lines,
            self.delimiter,
            self.row_groups,
        )

    @property
    def unit(self) -> str:
        """What a place in the file is called in messages: a CSV has lines, Parquet rows."""
        return "line" if self.row_groups is None else "row"

    def line_of(self, rows: np.ndarray) -> list[str]:
        """Where data rows are, for messages, after the word `unit`: a CSV's line numbers
        (1-based, counted as the parser counts them), or a Parquet row (1-based) and its
        row group (0-based)."""
        if self.row_groups is not None:
            return parquet.places(self.row_groups, np.asarray(rows))
        if self._lines is None:
            self._lines = csvscan.scan(self.path, self.header, self.delimiter, {}).lines
        return [str(int(self._lines[r])) for r in rows]


def not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """The one message for a data file that is not UTF-8 text."""
    return DataError(
        f"{path}: not UTF-8 text (bad byte at offset {exc.start})", ["save the file as UTF-8 CSV"]
    )


# ---------------------------------------------------------------------- the header
def read_header(path: Path, delimiter: str = ",") -> list[str]:
    """Column names of a CSV or Parquet file, with errors for a missing, empty or odd file."""
    if parquet.is_parquet(path):
        parquet.require()  # before anything else: the fix is to install it
    if not path.exists():
        raise DataError(
            f"{path}: file not found",
            ["check the path; a config's `data.train` and `data.val` are taken from the config's folder"],
        )
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a CSV file")
    kind = files.irregular_kind(path)
    if kind is not None:  # opening a FIFO would wait for a writer; its size says nothing
        raise DataError(
            files.not_regular_message(path, kind), ["save the table to a file and pass that path"]
        )
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{path}: the file is empty (0 bytes)", ["write a header line and data rows"])
        if parquet.is_parquet(path):
            return _unique(path, parquet.header(path), "")
        with csvscan.open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
            header: list[str] | None = None
            start = 1  # the line the header row starts on (blank lines come first)
            for row in reader:
                if row:
                    header = row
                    break
                start = reader.line_num + 1
            if header is not None and reader.line_num > start:  # a quoted name spans lines
                csvscan.check_quote_closed(path, start, delimiter)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except csv.Error as exc:
        raise DataError(f"{path}: cannot parse the header: {exc}") from None
    except csvscan.GZIP_ERRORS as exc:
        raise csvscan.not_gzip(path, exc) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    if header is None:
        raise DataError(f"{path}: the file holds only blank lines", ["write a header line and data rows"])
    return _unique(path, [name.strip() for name in header], ", line 1")


def _unique(path: Path, header: list[str], where: str) -> list[str]:
    """The header, or an error naming every name that appears twice."""
    seen: dict[str, int] = {}
    dupes = []
    for index, name in enumerate(header, start=1):
        if name in seen and name:
            dupes.append(f"`{name}` is column {seen[name]} and column {index}")
        seen.setdefault(name, index)
    if dupes:
        raise DataError(f"{path}{where}: duplicate column names", [*dupes, "give every column its own name"])
    return header


def check_columns(path: Path, header: Sequence[str], wanted: Sequence[str], role: str) -> None:
    """Error naming every column in `wanted` that the header lacks, with the closest name."""
    problems = []
    for name in wanted:
        if name not in header:
            close = difflib.get_close_matches(name, [h for h in header if h], n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            problems.append(f"`{name}` ({role}) is not a column{hint}")
    if problems:
        shown = ", ".join(header) if len(header) <= 30 else ", ".join(header[:30]) + ", ..."
        found = [*problems, f"columns in the file: {shown}"]
        separator = _other_separator(header)
        if separator is not None:
            typed = "\\t" if separator == "\t" else separator
            found.append(
                f"the header looks {'tab' if separator == chr(9) else repr(separator)}-separated: pass "
                f"--delimiter '{typed}' (init, eval, predict), or set data.delimiter in the config"
            )
        raise DataError(f"{path}: missing column{'s' if len(problems) > 1 else ''}", found)


def _other_separator(header: Sequence[str]) -> str | None:
    """The separator a header read as one or two columns seems to use instead (`;`, a tab, `|`,
    `,`): the one found most often inside its names; None when none is."""
    if len(header) > 2:
        return None
    counts = {sep: sum(name.count(sep) for name in header) for sep in (";", "\t", "|", ",")}
    sep, count = max(counts.items(), key=lambda item: item[1])
    return sep if count > 0 else None


# ----------------------------------------------------------------------- reading
def read(
    path: Path,
    columns: Sequence[str],
    categorical: Sequence[str] = (),
    *,
    infer_from: Sequence[str] = (),
    delimiter: str = ",",
    non_numeric: str = "error",
    numbers: Sequence[str] = (),
) -> Table:
    """Read `columns` of a CSV or Parquet file.

    `categorical` columns are read as text. A column in `infer_from` whose values are
    mostly not numbers is categorical too; a column of numbers with a few stray words
    is an error naming the cells, or (`non_numeric` "missing", `data.non_numeric`) reads
    those cells as empty, but in the columns of `numbers` (targets, weights: a row's label
    or weight is never guessed), where words are always errors. Every other column must
    hold numbers.
    """
    header = read_header(path, delimiter)
    check_columns(path, header, columns, "needed")
    if parquet.is_parquet(path):
        frame, text, groups = parquet.read(path, columns, categorical, infer_from)
        if len(frame) == 0:
            raise DataError(f"{path}: has columns but no rows", ["write a file with data rows"])
        chosen = [c for c in columns if c in text]
        table = Table(path, header, frame, chosen, Digest(path), None, delimiter, groups)
        _check_cells(table)
        return table
    with csvscan.gzip_errors(path):
        return _read_csv(path, header, columns, categorical, infer_from, delimiter, non_numeric, numbers)


def _read_csv(
    path: Path,
    header: list[str],
    columns: Sequence[str],
    categorical: Sequence[str],
    infer_from: Sequence[str],
    delimiter: str,
    non_numeric: str,
    numbers: Sequence[str] = (),
) -> Table:
    # Reading only some columns needs the delimiter count, so it runs alongside the parse;
    # otherwise the hash is only needed later, and runs while the data is prepared.
    subset = len(columns) < len(header)
    digest = Digest(path, delimiter, count=True) if subset else None
    text_cols = set(categorical)
    inferable = set(infer_from) - text_cols
    if inferable:
        text_cols |= sniff_text_columns(path, [c for c in columns if c in inferable], delimiter)
    frame, found = _parse(path, header, columns, text_cols, delimiter)
    if found is not None and inferable:
        # The full pass found text in columns the first rows showed as numbers.
        wordy = {c for c in found.bad_cells if c in inferable and found.mostly_text(c)}
        if wordy:
            text_cols |= wordy
            frame, found = _parse(path, header, columns, text_cols, delimiter)
    strict = set(numbers)
    if found is not None and non_numeric == "missing":
        # Stray words in numeric features are read as text, then as numbers with the words
        # empty; a target's or weight's are errors still: a row without one teaches nothing.
        stray = set(found.bad_cells) - strict
        if stray:
            frame, found = _parse(path, header, columns, text_cols | stray, delimiter)
            if found is None:  # else a target's or weight's words are left: raised below
                for name in stray:
                    frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float32)
    if found is not None:
        found.raise_bad_numbers(path, inferable, set(columns) - strict if strict else None)
    for name in sorted(text_cols & inferable):
        if non_numeric == "missing" and _mostly_numbers(frame[name]):
            # The first rows showed a word, but the column is numbers: the words read as empty.
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float32)
            text_cols.discard(name)
            continue
        _check_mostly_text(path, header, frame, name, delimiter)
    if len(frame) == 0:
        raise DataError(f"{path}: has a header but no data rows", ["add rows below the header"])
    if digest is not None:
        # pandas ignores extra fields in a row when it reads only some columns; with no
        # quotes in the file, the delimiter count tells whether any row has them.
        digest.result()
        expected = (len(header) - 1) * (len(frame) + 1)
        if digest.quotes or digest.delimiters != expected:
            csvscan.scan(path, header, delimiter, {}).raise_bad_rows(path)
    else:
        digest = Digest(path, delimiter)
    table = Table(path, header, frame, [c for c in columns if c in text_cols], digest, None, delimiter)
    _check_cells(table)
    return table


def sniff_text_columns(path: Path, columns: Sequence[str], delimiter: str) -> set[str]:
    """Columns whose first rows hold a value that is not a number."""
    return sniff(path, columns, delimiter)[0]


def sniff(
    path: Path, columns: Sequence[str], delimiter: str
) -> tuple[set[str], set[str], int | None, dict[str, str]]:
    """Columns whose first rows hold text, columns whose first rows hold empty cells, how
    many rows were looked at (fewer than asked for: the whole table; None: unreadable),
    and (Parquet only) columns of a type that cannot be read, with that type."""
    if parquet.is_parquet(path):
        return parquet.sniff(path, columns)
    try:
        head = pd.read_csv(path, usecols=list(columns), nrows=_SNIFF_ROWS, sep=delimiter, **_AS_TEXT)
    except Exception:
        return set(), set(), None, {}  # the full read that follows reports what is wrong, precisely
    text, empty = set(), set()
    for name in columns:
        values = head[name]
        missing = values.isin(MISSING)
        if missing.any():
            empty.add(name)
        if pd.to_numeric(values[~missing], errors="coerce").isna().any():
            text.add(name)
    return text, empty, len(head), {}


def _parse(
    path: Path, header: list[str], columns: Sequence[str], text_cols: set[str], delimiter: str
) -> tuple[pd.DataFrame, Scan | None]:
    """pandas' C parser into float32; on any trouble, a scan that says what and where.

    Without `usecols`, pandas (3.1+) parses a large file on all cores. Leading spaces
    after a delimiter are skipped only when a first attempt fails on them: skipping them
    always costs a third of the parse time.
    """
    options = parse_options(header, columns, text_cols, delimiter)
    try:
        with parse_warnings():
            try:
                frame = pd.read_csv(path, **options)
            except ValueError:
                frame = pd.read_csv(path, skipinitialspace=True, **options)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning):
        found = csvscan.scan(path, header, delimiter, {c: c not in text_cols for c in columns})
        found.raise_bad_rows(path)
        if found.bad_cells:
            return pd.DataFrame(), found
        raise DataError(f"{path}: cannot be parsed as CSV", ["check quoting and the delimiter"]) from None
    frame = frame[list(columns)]  # usecols keeps file order; we want the order asked for
    empty = False
    for name in columns:
        if name in text_cols:
            frame[name] = frame[name].str.strip()
            empty = empty or bool(frame[name].isna().any())
        else:
            empty = empty or not np.isfinite(frame[name].to_numpy()).all()  # NaN (or inf)
    if empty:
        # A short row looks exactly like empty cells to pandas: tell them apart.
        csvscan.scan(path, header, delimiter, {}).raise_bad_rows(path)
    return frame, None


def pandas_names(header: list[str], columns: Sequence[str]) -> list[str]:
    """The header's (stripped) names for pandas, which refuses a name twice: a column not
    read whose name is empty or repeated (a spreadsheet's trailing `,,`, `to_csv()`'s index
    beside another unnamed column) gets a placeholder no column can have."""
    wanted = set(columns)
    return [
        f"\0column {i + 1}" if name not in wanted and (not name or header.count(name) > 1) else name
        for i, name in enumerate(header)
    ]


def parse_options(
    header: list[str], columns: Sequence[str], text_cols: set[str], delimiter: str
) -> dict[str, Any]:
    """pandas.read_csv's arguments for `columns`: text columns as text, the rest float32."""
    return {
        "usecols": list(columns) if len(columns) < len(header) else None,
        "names": pandas_names(header, columns),  # the file's own header line is skipped
        "header": 0,
        "dtype": {c: (object if c in text_cols else np.float32) for c in columns},
        "keep_default_na": False,
        "na_values": list(MISSING_VALUES),
        "index_col": False,
        "sep": delimiter,
        "encoding": "utf-8",
        "engine": "c",
        "on_bad_lines": "error",
    }


@contextmanager
def parse_warnings() -> Iterator[None]:
    """pandas' warnings while parsing: a ParserWarning is an error (its message is vague)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        # A number beyond float32 (1e308) becomes inf, which _check_cells then names.
        warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
        yield


def _mostly_numbers(values: pd.Series) -> bool:
    """Whether more than half of a text column's non-empty cells are numbers."""
    present = values.notna()
    return bool(pd.to_numeric(values[present], errors="coerce").notna().sum() * 2 > present.sum())


def _check_mostly_text(path: Path, header: list[str], frame: pd.DataFrame, name: str, delimiter: str) -> None:
    values = frame[name]
    present = values.notna()
    numeric = pd.to_numeric(values[present], errors="coerce").notna()
    if numeric.sum() * 2 > present.sum():
        rows = np.flatnonzero(present.to_numpy())[~numeric.to_numpy()]
        lines = csvscan.scan(path, header, delimiter, {}).lines
        cells = [f"line {lines[r]}: {csvscan.shown_cell(values.iloc[r])}" for r in rows[:EXAMPLES]]
        raise DataError(
            f"{path}, column `{name}`: mostly numbers, but {len(rows)} cell(s) are not",
            [
                examples(cells, len(rows)),
                f"fix those cells, list `{name}` in `data.categorical` to treat every value as a "
                "category, or set `data.non_numeric: missing` to read them as empty cells",
            ],
        )


def _check_cells(table: Table) -> None:
    """Infinite numbers are never usable: name where they are."""
    problems = []
    for name in table.frame.columns:
        if name in table.categorical:
            continue
        values = table.frame[name].to_numpy()
        bad = np.flatnonzero(np.isinf(values))
        if len(bad):
            lines = table.line_of(bad[:EXAMPLES])
            problems.append(
                f"column `{name}`: {len(bad)} infinite value(s) at {table.unit}(s) "
                f"{examples(lines, len(bad))}"
            )
    if problems:
        raise DataError(
            f"{table.path}: infinite values (or numbers beyond float32's ±3.4e38, which become infinite)",
            [*problems, "replace them with finite numbers within ±3.4e38, or leave the cells empty"],
        )


def read_chunks(
    path: Path,
    columns: Sequence[str],
    categorical: Sequence[str],
    delimiter: str,
    chunk_rows: int,
    non_numeric: str = "error",
) -> Iterator[tuple[Table, pd.DataFrame]]:
    """The whole file, chunk by chunk: `columns` typed by the rules of `read`, and every cell as written.

    For `predict`, which must stream files of any size and echo each row as it was. The
    cells follow the same rules as `read`: names and cells are stripped of surrounding
    spaces, MISSING_VALUES are empty, categories are text, numbers are float32 and finite.
    """
    header = read_header(path, delimiter)
    check_columns(path, header, columns, "feature the model was trained on")
    if parquet.is_parquet(path):
        for frame, cells, groups in parquet.read_batches(path, columns, categorical, chunk_rows):
            table = Table(path, header, frame, list(categorical), delimiter=delimiter, row_groups=groups)
            _check_cells(table)
            yield table, cells
        return
    with csvscan.gzip_errors(path):
        yield from _csv_chunks(path, header, columns, categorical, delimiter, chunk_rows, non_numeric)


def _csv_chunks(
    path: Path,
    header: list[str],
    columns: Sequence[str],
    categorical: Sequence[str],
    delimiter: str,
    chunk_rows: int,
    non_numeric: str,
) -> Iterator[tuple[Table, pd.DataFrame]]:
    text_options = {**_AS_TEXT, "names": pandas_names(header, columns), "header": 0}
    numeric = [c for c in columns if c not in categorical]
    offset = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # A number beyond float32 (1e308) becomes inf, which _check_cells then names.
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            reader = pd.read_csv(path, sep=delimiter, chunksize=chunk_rows, **text_options)
            with reader:
                for chunk in reader:
                    if chunk.isna().to_numpy().any():  # only short rows leave NaN in text
                        csvscan.scan(path, header, delimiter, {}).raise_bad_rows(path)
                    frame = _typed(chunk, columns, categorical)
                    frame.index = pd.RangeIndex(offset, offset + len(frame))
                    bad = [c for c in numeric if frame[c].isna().to_numpy().any() and _has_text(chunk[c])]
                    # Under `missing`, _typed left those cells empty; else the exact pass names
                    # every bad cell in the file, as `read` does.
                    if bad and non_numeric != "missing":
                        found = csvscan.scan(path, header, delimiter, dict.fromkeys(bad, True))
                        found.raise_bad_numbers(path, set())
                    table = Table(path, header, frame, list(categorical), delimiter=delimiter)
                    _check_cells(table)
                    yield table, chunk
                    offset += len(frame)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning):
        csvscan.scan(path, header, delimiter, {}).raise_bad_rows(path)
        raise DataError(f"{path}: cannot be parsed as CSV", ["check quoting and the delimiter"]) from None


def _cells(text: pd.Series) -> pd.Series:
    """Text cells stripped, with the MISSING_VALUES as NaN."""
    stripped = text.str.strip()
    return stripped.where(~stripped.isin(MISSING_VALUES))


def _typed(chunk: pd.DataFrame, columns: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """Text cells -> float32 for numeric columns, strings for categories, NaN when empty."""
    out: dict[str, Any] = {}
    for name in columns:
        cells = _cells(chunk[name])
        out[name] = cells if name in categorical else pd.to_numeric(cells, errors="coerce").astype(np.float32)
    return pd.DataFrame(out)


def _has_text(text: pd.Series) -> bool:
    """Whether a column of cells holds a value that is neither empty nor a number."""
    cells = _cells(text)
    return bool((pd.to_numeric(cells, errors="coerce").isna() & cells.notna()).any())
