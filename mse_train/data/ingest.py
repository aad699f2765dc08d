"""Read a table through the data cache: from the cache when it holds the table, else parse
it chunk by chunk into the cache and read it back from there.

The first read of a table parses the file in chunks of CHUNK_ROWS rows straight into the
cache's column files, so the parse never holds the whole file as text. Whatever the fast
chunked parse cannot vouch for (a cell that is not a number, an infinite value, a column
that `data.categorical` inference must look at again, a row with extra fields) sends the
file through `table.read`, the exact reader, which names the problem by line and column
just as without a cache, or, when the file is fine after all, gives the frame that is
then cached. A file with a problem is never cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train import __version__
from mse_train.data import csvscan, parquet, table
from mse_train.data.cache import Builder, Entry, Store, key, stat_signature
from mse_train.data.csvscan import MISSING_VALUES
from mse_train.data.digest import Digest
from mse_train.errors import DataError

CHUNK_ROWS = 1 << 18  # rows per chunk of the first parse: ~20 MB of float32 for 20 columns


class _Irregular(Exception):
    """The chunked parse met something only the exact reader can judge."""


PARSE = 2  # raised when a change reads some file differently (2: a target's words are errors)


def read(
    path: Path,
    columns: Sequence[str],
    categorical: Sequence[str] = (),
    *,
    infer_from: Sequence[str] = (),
    delimiter: str = ",",
    store: Store | None = None,
    non_numeric: str = "error",
    numbers: Sequence[str] = (),
) -> table.Table:
    """`table.read`, through `store` when there is one (same arguments, same frame)."""
    entry, sha = None, ""
    if store is not None:
        entry, sha = _entry(
            path,
            columns,
            categorical,
            infer_from,
            store,
            mapped=False,
            delimiter=delimiter,
            non_numeric=non_numeric,
            numbers=numbers,
        )
    if entry is None:  # no cache, or one that could not be written: parse without it
        return table.read(
            path,
            columns,
            categorical,
            infer_from=infer_from,
            delimiter=delimiter,
            non_numeric=non_numeric,
            numbers=numbers,
        )
    return table.Table(
        path,
        entry.header,
        entry.frame,
        entry.categorical,
        Digest.known(sha),
        None,
        delimiter,
        entry.row_groups,
    )


def mapped(
    path: Path,
    columns: Sequence[str],
    categorical: Sequence[str],
    *,
    infer_from: Sequence[str],
    delimiter: str,
    store: Store,
    non_numeric: str = "error",
    numbers: Sequence[str] = (),
) -> tuple[Entry, str] | None:
    """The table's cache entry with its columns memory-mapped, and the file's sha256; the
    entry is built first when needed. None when the cache cannot be written."""
    entry, sha = _entry(
        path,
        columns,
        categorical,
        infer_from,
        store,
        mapped=True,
        delimiter=delimiter,
        non_numeric=non_numeric,
        numbers=numbers,
    )
    return None if entry is None else (entry, sha)


def _entry(
    path: Path,
    columns: Sequence[str],
    categorical: Sequence[str],
    infer_from: Sequence[str],
    store: Store,
    mapped: bool,
    *,
    delimiter: str,
    non_numeric: str,
    numbers: Sequence[str],
) -> tuple[Entry | None, str]:
    header = table.read_header(path, delimiter)  # every check on the path itself comes first
    table.check_columns(path, header, columns, "needed")
    wanted = settings(path, header, columns, categorical, infer_from, delimiter, non_numeric, numbers)
    resolved = path.resolve()
    started = time.time_ns()
    try:
        before = os.stat(resolved)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    sha = store.known_sha256(resolved, before)
    if sha is not None:
        found = _Found(store, sha, wanted, columns, before, mapped)
    else:
        # Hashed while the file is parsed: a new file costs no more than without the
        # cache; a copy of a cached file is found as soon as its hash is known.
        found = _Found(store, Digest(resolved), wanted, columns, before, mapped)
    entry = found.entry()
    if entry is None:
        entry = _build(
            store, found, path, header, columns, categorical, infer_from, delimiter, non_numeric, numbers
        )
    if sha is None:
        store.remember_sha256(resolved, before, found.sha256(), started)
    return entry, found.sha256()


class _Found:
    """The cache entry for the file's bytes, looked up once its hash is known."""

    def __init__(
        self,
        store: Store,
        sha: str | Digest,
        wanted: dict[str, Any],
        columns: Sequence[str],
        before: os.stat_result,
        mapped: bool,
    ) -> None:
        self.store, self.wanted, self.columns, self.before = store, wanted, columns, before
        self.mapped = mapped
        self._hashing = sha if isinstance(sha, Digest) else None
        self._sha = sha if isinstance(sha, str) else ""
        self._looked = False

    def sha256(self) -> str:
        """The hash (waiting for it)."""
        if self._hashing is not None:
            self._sha = self._hashing.result()
            self._hashing = None
        return self._sha

    def unchanged(self, path: Path) -> bool:
        """Whether the file's stat is still what it was before it was hashed."""
        try:
            now = path.stat()
        except OSError:
            return False
        return stat_signature(now) == stat_signature(self.before)

    def key(self) -> str:
        return key(self.sha256(), self.wanted)

    def entry(self, wait: bool = False) -> Entry | None:
        """The entry, the first time it is asked for once the hash is known (or `wait`)."""
        if self._looked or (not wait and self._hashing is not None and not self._hashing.done()):
            return None
        self._looked = True
        sha = self.sha256()
        return self.store.load(key(sha, self.wanted), sha, self.wanted, self.columns, self.mapped)


class _Cached(Exception):
    """The entry turned up while the file was being parsed (a copy of a cached file)."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry


def settings(
    path: Path,
    header: Sequence[str],
    columns: Sequence[str],
    categorical: Sequence[str],
    infer_from: Sequence[str],
    delimiter: str,
    non_numeric: str = "error",
    numbers: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything besides the file's bytes that changes what a read gives: part of the key.

    The mse-train and pandas versions are in it so that an upgrade that parses a cell
    differently can never be served an older parse, and PARSE for a change between
    releases. `non_numeric` (and with it `numbers`, the columns it leaves strict) is in it
    only when it is "missing" (a strict read of a file with stray words is never cached),
    so keys written before it existed stay valid.
    """
    extra: dict[str, Any] = {}
    if non_numeric != "error":
        extra = {"non_numeric": non_numeric, "numbers": sorted(set(numbers))}
    return {
        **extra,
        "format": "parquet" if parquet.is_parquet(path) else "csv.gz" if csvscan.is_gzip(path) else "csv",
        "header": list(header),
        "columns": list(columns),
        "categorical": sorted(set(categorical)),
        "infer_from": sorted(set(infer_from)),
        "delimiter": delimiter,
        "missing_values": list(MISSING_VALUES),
        "mse_train": __version__,
        "pandas": pd.__version__,
        "parse": PARSE,
    }


def _build(
    store: Store,
    found: _Found,
    path: Path,
    header: list[str],
    columns: Sequence[str],
    categorical: Sequence[str],
    infer_from: Sequence[str],
    delimiter: str,
    non_numeric: str = "error",
    numbers: Sequence[str] = (),
) -> Entry | None:
    """Parse the file into a new entry, publish it and read it back; None if the cache cannot be written."""
    groups: tuple[int, ...] | None = None
    builder = None
    try:
        if not parquet.is_parquet(path):
            chosen = _csv_categorical(path, columns, categorical, infer_from, delimiter)
            builder = store.builder(columns, chosen)
            inferred = set(chosen) & set(infer_from) - set(categorical)
            try:
                _parse_csv(builder, path, header, columns, inferred, delimiter, found)
            except _Irregular:
                builder.discard()
                builder = None
        if builder is None:  # Parquet, or a CSV only the exact reader can judge
            entry = found.entry(wait=True)
            if entry is not None:
                return entry
            exact = table.read(
                path,
                columns,
                categorical,
                infer_from=infer_from,
                delimiter=delimiter,
                non_numeric=non_numeric,
                numbers=numbers,
            )
            groups = exact.row_groups
            builder = store.builder(columns, exact.categorical)
            for start in range(0, exact.n_rows, CHUNK_ROWS):
                builder.add(exact.frame.iloc[start : start + CHUNK_ROWS])
            del exact
        entry = found.entry(wait=True)
        if entry is not None:  # a copy of these bytes was cached while this one was parsed
            builder.discard()
            return entry
        if not found.unchanged(path):  # what was parsed may not be what was hashed: cache nothing
            builder.discard()
            return None
        builder.publish(found.key(), header, found.sha256(), found.wanted, groups)
    except _Cached as cached:
        if builder is not None:
            builder.discard()
        return cached.entry
    except OSError as exc:  # the folder not writable after all, the disk full: parse without the cache
        if builder is not None:
            builder.discard()
        store.notes.append(
            f"could not write the data cache in {store.root} ({exc.strerror or exc}); {path} is parsed anew"
        )
        return None
    except BaseException:
        if builder is not None:
            builder.discard()
        raise
    return store.load(found.key(), found.sha256(), found.wanted, columns, found.mapped)


def _csv_categorical(
    path: Path, columns: Sequence[str], categorical: Sequence[str], infer_from: Sequence[str], delimiter: str
) -> list[str]:
    """Columns read as text: those listed, and those whose first rows hold text (as `table.read`)."""
    text = set(categorical)
    inferable = [c for c in columns if c in infer_from and c not in text]
    if inferable:
        text |= table.sniff_text_columns(path, inferable, delimiter)
    return [c for c in columns if c in text]


def _parse_csv(
    builder: Builder,
    path: Path,
    header: list[str],
    columns: Sequence[str],
    inferred: set[str],
    delimiter: str,
    found: _Found,
) -> None:
    """The fast path of `table.read`, chunk by chunk into `builder`; _Irregular on anything odd.

    `inferred`: text columns that inference chose, which must be mostly text over the
    whole file (`table.read` then checks again and names the cells when they are not).
    """
    text_cols = builder.categorical
    subset = len(columns) < len(header)
    # Reading only some columns, pandas drops a row's extra fields; the delimiter count
    # (the same pass `table.read` makes) tells whether there are any.
    counter = Digest(path, delimiter, count=True) if subset else None
    options = table.parse_options(header, columns, text_cols, delimiter)
    empty = False
    rows = 0
    present = dict.fromkeys(inferred, 0)
    numeric = dict.fromkeys(inferred, 0)
    try:
        with table.parse_warnings(), pd.read_csv(path, chunksize=CHUNK_ROWS, **options) as reader:
            for chunk in reader:
                entry = found.entry()
                if entry is not None:
                    raise _Cached(entry)
                frame = chunk[list(columns)]
                for name in columns:
                    if name in text_cols:
                        frame[name] = cells = frame[name].str.strip()
                        empty = empty or bool(cells.isna().any())
                        if name in inferred:
                            kept = cells[cells.notna()]
                            present[name] += len(kept)
                            numeric[name] += int(pd.to_numeric(kept, errors="coerce").notna().sum())
                        continue
                    values = frame[name].to_numpy()
                    if not np.isfinite(values).all():
                        if np.isinf(values).any():
                            raise _Irregular  # the exact reader names the line
                        empty = True
                builder.add(frame)
                rows += len(frame)
    except (
        ValueError,
        UnicodeDecodeError,
        pd.errors.ParserError,
        pd.errors.ParserWarning,
        *csvscan.GZIP_ERRORS,
    ):
        raise _Irregular from None
    if rows == 0 or any(numeric[c] * 2 > present[c] for c in inferred):
        raise _Irregular
    if empty:  # a short row looks exactly like empty cells to pandas: tell them apart
        csvscan.scan(path, header, delimiter, {}).raise_bad_rows(path)
    if counter is not None:
        counter.result()
        if counter.quotes or counter.delimiters != (len(header) - 1) * (rows + 1):
            csvscan.scan(path, header, delimiter, {}).raise_bad_rows(path)
