"""The slow, exact pass over a CSV file: what is wrong, on which line, in which column.

pandas' fast parser says only that something failed (or fills a short row with NaN
without a word); this walks the file with the csv module, counting lines as a text
editor does, and collects the rows with the wrong number of fields and the cells that
are not numbers. It runs only when the fast path found a problem.

A file whose name ends in .gz is read through gzip (pandas does the same from the name),
so line numbers are those of the decompressed text.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from mse_train.errors import EXAMPLES, DataError, NotNumbers, examples

# The csv module refuses cells over 128 KiB by default, which pandas reads without a word;
# a long text cell is not an error. 2**31 - 1 fits the C long of every platform.
csv.field_size_limit(2**31 - 1)
SHOWN_CHARS = 60  # a cell quoted in a message is cut to this many characters

# Cells that mean "no value". Stated in the README; kept small so that real categories
# such as "none" or "n" stay categories.
MISSING_VALUES = (
    "",
    "NA",
    "N/A",
    "n/a",
    "NaN",
    "nan",
    "-NaN",
    "-nan",
    "NULL",
    "null",
    "None",
    "#N/A",
    "<NA>",
)
MISSING = frozenset(MISSING_VALUES)
# What reading a damaged .gz raises: not gzip at all, cut short, or corrupt inside.
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def open_text(path: Path) -> IO[str]:
    """The file as UTF-8 text for the csv module (a leading BOM dropped), decompressed if .gz."""
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def not_gzip(path: Path, exc: BaseException) -> DataError:
    """The one message for a .gz file that cannot be decompressed."""
    if isinstance(exc, EOFError):
        what = "the compressed data ends early (a truncated download or copy?)"
    else:
        what = f"not valid gzip data ({exc})"
    return DataError(
        f"{path}: {what}",
        ["compress the CSV again with gzip, or, if it is not compressed, name it without .gz"],
    )


@contextmanager
def gzip_errors(path: Path) -> Iterator[None]:
    """Damaged gzip data met anywhere while reading (pandas or the csv module) is named."""
    try:
        yield
    except GZIP_ERRORS as exc:
        if not is_gzip(path):
            raise
        raise not_gzip(path, exc) from None


@dataclass
class Scan:
    """What the slow pass found."""

    lines: np.ndarray
    bad_rows: list[tuple[int, int]]  # (line, fields)
    n_fields: int
    bad_cells: dict[str, list[tuple[int, str]]]  # column -> [(line, value)]
    bad_counts: dict[str, int]
    numeric_counts: dict[str, int]

    def mostly_text(self, name: str) -> bool:
        return self.bad_counts.get(name, 0) >= self.numeric_counts.get(name, 0)

    def raise_bad_rows(self, path: Path) -> None:
        if not self.bad_rows:
            return
        shown = [f"line {line}: {n} field{'s' if n != 1 else ''}" for line, n in self.bad_rows[:EXAMPLES]]
        raise DataError(
            f"{path}: {len(self.bad_rows)} row(s) do not have {self.n_fields} fields like the header",
            [
                examples(shown, len(self.bad_rows), "; "),
                "give every row one value per column (an empty cell is `,,`)",
            ],
        )

    def raise_bad_numbers(
        self, path: Path, may_be_categorical: set[str], features: set[str] | None = None
    ) -> None:
        """Name every cell that is not a number. `features`: the columns that are features
        (None: all); words in any other column (a target, a weight) are never read as
        empty, so they raise NotNumbers, whose fix is to write numbers."""
        problems = []
        for name, cells in self.bad_cells.items():
            shown = examples(
                [f"line {line}: {shown_cell(value)}" for line, value in cells], self.bad_counts[name]
            )
            problems.append(f"column `{name}`: not a number at {shown}")
        if not problems:
            return
        values = [value for cells in self.bad_cells.values() for _, value in cells]
        written = formatted_numbers(values)
        if features is not None and not set(self.bad_cells) & features:
            fix = f"write plain numbers there{f' ({written})' if written else ''}, or drop those rows"
            raise NotNumbers(
                f"{path}: a target or weight column holds cells that are not numbers", [*problems, fix]
            )
        fix = f"fix those cells{f' ({written})' if written else ''}"
        if may_be_categorical & set(self.bad_cells):
            fix += ", or list the column in `data.categorical` to treat its values as categories"
        fix += (
            ", or set `data.non_numeric: missing` to read them as empty cells "
            "(for eval/predict: in the config the model is trained with)"
        )
        raise DataError(f"{path}: non-numeric values in numeric columns", [*problems, fix])


_DECORATION = str.maketrans("", "", "$€£¥%, \u00a0'")


def formatted_numbers(values: Sequence[str]) -> str:
    """When every one of `values` is a number once currency signs, %, spaces and thousands
    separators are gone ('$12,345.50', '45%', '1,5'), what to write instead; else ""."""

    def number(text: str) -> bool:
        plain = text.strip().translate(_DECORATION).strip("()")
        try:
            float(plain)
        except ValueError:
            return False
        return plain != "" and plain.lower().lstrip("+-") not in ("inf", "infinity", "nan")

    if not values or not all(number(v) for v in values):
        return ""

    def not_thousands(text: str) -> bool:  # 1,5 or 0,594: no thousands separator reads so
        head, tail = text.strip().lstrip("+-").split(",")
        return len(tail.strip()) != 3 or head.strip() in ("0", "")

    if all(v.count(",") == 1 and "." not in v for v in values) and any(not_thousands(v) for v in values):
        return "these look like decimal commas: write 1.5 for 1,5"
    return "these are numbers with currency signs, % or thousands separators: write 12345.5 for $12,345.50"


def scan(path: Path, header: list[str], delimiter: str, numeric: dict[str, bool]) -> Scan:
    """Walk the file with the csv module: field counts, lines, cells that are not numbers."""
    positions = {name: header.index(name) for name, is_num in numeric.items() if is_num}
    lines: list[int] = []
    bad_rows: list[tuple[int, int]] = []
    bad_cells: dict[str, list[tuple[int, str]]] = {}
    bad_counts: dict[str, int] = {}
    numeric_counts = dict.fromkeys(positions, 0)
    with gzip_errors(path), open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
        seen_header = False
        start = end = 0  # the lines the last row starts and ends on
        try:
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:
                    continue  # blank lines are skipped, as pandas does
                if not seen_header:
                    seen_header = True
                    continue
                line = reader.line_num
                lines.append(line)
                if len(row) != len(header):
                    bad_rows.append((line, len(row)))
                    continue
                for name, index in positions.items():
                    value = row[index].strip()
                    if value in MISSING:
                        continue
                    try:
                        float(value)
                    except ValueError:
                        count = bad_counts.get(name, 0)
                        if count < EXAMPLES:
                            bad_cells.setdefault(name, []).append((line, value))
                        bad_counts[name] = count + 1
                    else:
                        numeric_counts[name] += 1
        except csv.Error as exc:
            raise DataError(
                f"{path}, line {reader.line_num}: cannot be parsed as CSV: {exc}",
                ["check quoting and the delimiter"],
            ) from None
    if start:  # the last row may hold a quoted cell that runs to the end of the file
        check_quote_closed(path, start, delimiter)
    return Scan(
        np.asarray(lines, dtype=np.int64), bad_rows, len(header), bad_cells, bad_counts, numeric_counts
    )


def check_quote_closed(path: Path, start: int, delimiter: str) -> None:
    """Error naming `start` when a quoted cell of the row that starts there is never closed.

    For a row that spans lines. The csv module reads an unclosed quote to the end of the
    file as one cell and says nothing; strict parsing of that one row tells it apart from
    a quoted cell that closes.
    """
    with gzip_errors(path), open_text(path) as f:
        reader = csv.reader(
            itertools.islice(f, start - 1, None), delimiter=delimiter, skipinitialspace=True, strict=True
        )
        try:
            next(reader, None)  # the row that starts there; an unclosed quote reads to the end
        except csv.Error as exc:
            if "unexpected end of data" not in str(exc):
                return  # some other irregularity that non-strict parsing accepts, as pandas does
            raise DataError(
                f"{path}, line {start}: a quoted cell that starts on this line is never closed",
                [
                    "the rest of the file would be read as part of that cell",
                    'add the closing `"`, or write a quote inside a cell as `""`',
                ],
            ) from None


def shown_cell(value: str) -> str:
    """A cell as quoted in a message: repr, cut short when long."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
