"""`run`'s and `eval`'s data: in memory when the table's arrays fit `data.memory_budget`,
else streamed.

A streamed table is read from the data cache, memory-mapped, in passes of BLOCK_ROWS rows:
one pass finds the empty cells (`data.missing`), one fits the preprocessing and the drift
profile on the training rows (fitting.fit, the fitter the in-memory path runs as one
block), and `data.missing: median` adds one pass per numeric column that gathers its
training values (4 bytes a row) for an exact median. Validation rows (`data.val`, or
`data.val_fraction` of the training file, chosen with `seed` exactly as in memory) are
streamed too, for scoring."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train import runtime
from mse_train.config.schema import DataConfig, size_in_bytes
from mse_train.data import cache, csvscan, drift, fitting, ingest, missing, parquet, prepare, table
from mse_train.data.digest import Digest
from mse_train.data.preprocess import Encoder, Preprocessor
from mse_train.data.stream import BLOCK_ROWS, Rows
from mse_train.errors import DataError

AUTO_SHARE = 0.5  # `data.memory_budget: auto`: this share of the memory available at the start


@dataclass
class Streamed:
    """`prepare.Prepared`'s counterpart for a streamed table (the same fields)."""

    train: Rows
    val: Rows | None
    pre: Preprocessor
    hashers: dict[str, Digest]
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    ingest_seconds: float = 0.0

    @property
    def digests(self) -> dict[str, str]:
        return {path: hasher.result() for path, hasher in self.hashers.items()}


def budget(cfg: DataConfig) -> int:
    """`data.memory_budget` in bytes."""
    return budget_of(cfg.memory_budget)


def budget_of(setting: str) -> int:
    """A `data.memory_budget` setting in bytes (`auto`: a share of the available memory)."""
    size = size_in_bytes(setting)
    if size is not None:
        return size
    import torch

    available = runtime.available_memory(torch.device("cpu"))
    return int(available * AUTO_SHARE) if available else 1 << 62


def in_memory_bytes(rows: int, columns: int, inputs: int, targets: int) -> int:
    """What the in-memory path holds at its peak: the parsed columns, the inputs and targets
    as float32, and the loop's shuffled copy of them."""
    return rows * 4 * (columns + 2 * (inputs + targets))


def prepare_run(
    cfg: DataConfig, targets: list[str], seed: int, batch_size: int | None
) -> prepare.Prepared | Streamed:
    """The data for `run`: `prepare.prepare` when it fits the budget, else streamed."""
    limit = budget(cfg)
    path = Path(cfg.train)
    if surely_fits(path, table.read_header(path, cfg.delimiter), len(targets), limit):
        return prepare.prepare(cfg, targets, seed)
    started = time.perf_counter()
    notes: list[str] = []
    store = cache.open_store(cfg.cache, notes)
    header = table.read_header(path, cfg.delimiter)
    features = prepare.feature_names(cfg.features, header, targets, path, cfg.weight)
    table.check_columns(path, header, features, "feature")
    table.check_columns(path, header, targets, "target")
    found = mapped_over(
        path,
        [*features, *targets],
        cfg.categorical,
        features,
        cfg.delimiter,
        store,
        cfg.non_numeric,
        limit,
        lambda entry: sum(len(entry.vocabularies.get(f, [0])) for f in features),
        len(targets),
    )
    if found is None:
        return prepare.prepare(cfg, targets, seed)
    entry, sha, need = found
    assert store is not None  # the entry came from it
    if cfg.weight is not None:
        raise DataError(
            f"{path}: the table needs about {need >> 20} MiB in memory, more than `data.memory_budget` "
            f"({limit >> 20} MiB), and mse-train does not stream a table with sample weights "
            "(`data.weight`) yet",
            ["raise `data.memory_budget` so the table is held in memory, or train on a sample of the rows"],
        )
    if batch_size is None:
        raise DataError(
            f"{path}: the table needs about {need >> 20} MiB in memory, more than `data.memory_budget` "
            f"({limit >> 20} MiB), and full-batch training (`train.batch_size: null`) cannot stream it",
            ["set `train.batch_size` (e.g. 1024), or raise `data.memory_budget`"],
        )
    notes += prepare._cache_notes(store)
    notes.append(
        f"the table needs about {need >> 20} MiB in memory, more than `data.memory_budget` "
        f"({limit >> 20} MiB): training streams it from the data cache in shuffled blocks "
        f"of {BLOCK_ROWS} rows"
    )
    source = Source(path, entry, header)
    kept = source.keep(features, targets, cfg.missing, notes)
    val_source: Source | None = None
    val_mask: np.ndarray | None = None
    if cfg.val is not None:
        vpath = Path(cfg.val)
        vfound = ingest.mapped(
            vpath,
            [*features, *targets],
            entry.categorical,
            infer_from=(),
            delimiter=cfg.delimiter,
            store=store,
            non_numeric=cfg.non_numeric,
            numbers=targets,
        )
        if vfound is None:
            raise DataError(f"{vpath}: cannot be streamed: the data cache could not be written")
        val_source = Source(vpath, vfound[0], table.read_header(vpath, cfg.delimiter))
        val_mask = val_source.keep(features, targets, cfg.missing, notes)
        train_mask = kept
        digests = {str(path): Digest.known(sha), str(vpath): Digest.known(vfound[1])}
    else:
        train_mask, val_mask = _split(kept, entry.rows, cfg, seed, path)
        val_source = source if val_mask is not None else None
        digests = {str(path): Digest.known(sha)}
    seconds = time.perf_counter() - started
    pre, profile = fitting.fit(source.path, entry, train_mask, features, targets, cfg, block_rows=BLOCK_ROWS)
    train = Rows(Encoder(pre, entry, source.table()), train_mask)
    val = None
    if val_source is not None:
        if cfg.unknown_category == "error":
            held = val_mask if val_mask is not None else np.ones(val_source.entry.rows, dtype=bool)
            split_name = "the validation split" if val_source is source else "`data.val`"
            where = val_source.table()
            prepare.check_categories(
                val_source.entry, held, pre, cfg, where, split_name, block_rows=BLOCK_ROWS
            )
        val = Rows(Encoder(pre, val_source.entry, val_source.table()), val_mask)
    return Streamed(train, val, pre, digests, notes, profile, seconds)


def surely_fits(path: Path, header: list[str], targets: int, limit: int, gunzip: bool = False) -> bool:
    """True when even the most rows the table could hold fit `limit` bytes in memory, decided
    without parsing it: a CSV's row takes at least one byte per column, so its size bounds
    its rows; a Parquet file's footer holds its row count. A .gz file's size bounds nothing:
    False, or with `gunzip` (where the alternative is to refuse), its decompressed size,
    counted only as far as the limit."""

    def fits(rows: int) -> bool:
        return in_memory_bytes(rows, len(header), len(header), targets) <= limit

    if parquet.is_parquet(path):
        return fits(sum(parquet.row_groups(path)))
    if csvscan.is_gzip(path):
        return gunzip and _gunzipped_fits(path, lambda size: fits(size // max(1, len(header))))
    return fits(path.stat().st_size // max(1, len(header)))


def _gunzipped_fits(path: Path, fits: Callable[[int], bool]) -> bool:
    """`fits(bytes)` of a .gz file's decompressed size, counted in chunks; False as soon as
    the count so far does not fit (a large file is not decompressed whole to find out)."""
    import gzip

    size = 0
    with csvscan.gzip_errors(path), gzip.open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            size += len(chunk)
            if not fits(size):
                return False
    return True


def mapped_over(
    path: Path,
    columns: list[str],
    categorical: list[str],
    infer_from: list[str],
    delimiter: str,
    store: cache.Store | None,
    non_numeric: str,
    limit: int,
    inputs: Callable[[cache.Entry], int],
    targets: int,
) -> tuple[cache.Entry, str, int] | None:
    """The table's cache entry, memory-mapped, its sha256 and the bytes its arrays need in
    memory (`inputs` model inputs), when those exceed `limit`; None: read it into memory."""
    if store is None:
        return None
    found = ingest.mapped(
        path,
        columns,
        categorical,
        infer_from=infer_from,
        delimiter=delimiter,
        store=store,
        non_numeric=non_numeric,
        numbers=columns[len(columns) - targets :],  # the last `targets` columns
    )
    if found is None:
        return None
    entry, sha = found
    need = in_memory_bytes(entry.rows, len(entry.columns), inputs(entry), targets)
    return (entry, sha, need) if need > limit else None


def mapped_if_too_big(
    path: Path, pre: Preprocessor, delimiter: str, setting: str, store: cache.Store | None
) -> tuple[cache.Entry, list[str]] | None:
    """`eval`'s table as a mapped cache entry, and its header, when its arrays exceed the
    budget `setting` (a checkpoint's `data.memory_budget`); None: it is read into memory."""
    limit = budget_of(setting)
    targets = pre.target_names
    header = table.read_header(path, delimiter)
    if store is None or surely_fits(path, header, len(targets), limit):
        return None
    table.check_columns(path, header, pre.features, "feature the model was trained on")
    table.check_columns(path, header, targets, "target")
    inputs = len(pre.numeric) + sum(len(c.categories) for c in pre.categorical)
    found = mapped_over(
        path,
        [*pre.features, *targets],
        pre.categorical_names,
        [],
        delimiter,
        store,
        pre.non_numeric,
        limit,
        lambda _: inputs,
        len(targets),
    )
    return None if found is None else (found[0], header)


def eval_blocks(
    path: Path,
    entry: cache.Entry,
    header: list[str],
    pre: Preprocessor,
    watch: drift.Watch | None,
    notes: list[str],
    delimiter: str,
) -> Iterator[tuple[np.ndarray, np.ndarray, None, table.Table]]:
    """`prepare.prepare_eval` for a mapped table, a block at a time: each block's inputs, its
    targets as read (float64), no weights, and its rows (numeric features as read, indexed
    by place in the file) for messages. `watch` sees every row as read first, and the words
    read as empty (`prepare.watch_words`)."""
    notes.append(
        f"{path.name}: scored a block at a time from the data cache (larger than data.memory_budget)"
    )
    source = Source(path, entry, header)
    if watch is not None:
        for start in source.slices():
            watch.observe(source.frame(pre.features, slice(start, min(start + BLOCK_ROWS, entry.rows))))
        prepare.watch_words(watch, path, header, delimiter)
    rows = Rows(
        Encoder(pre, entry, source.table()), source.keep(pre.features, pre.target_names, pre.missing, notes)
    )
    for b, count in enumerate(rows.counts):
        if count:
            x, _ = rows.block(b)
            places = rows.places(b)
            y_true = np.stack([entry.columns[t][places] for t in pre.target_names], axis=1).astype(np.float64)
            yield x, y_true, None, source.table(source.frame([c.name for c in pre.numeric], places))
            runtime.release_freed_memory()


@dataclass
class Source:
    path: Path
    entry: cache.Entry
    header: list[str]

    def table(self, frame: pd.DataFrame | None = None) -> table.Table:
        """Some of the file's rows as a Table (`frame` indexed by place in the file; none:
        the file, for naming places in messages)."""
        rows = pd.DataFrame() if frame is None else frame
        return table.Table(
            self.path, self.header, rows, self.entry.categorical, row_groups=self.entry.row_groups
        )

    def lines(self, rows: np.ndarray) -> list[str]:
        """Where rows are, for messages (a CSV's lines, a Parquet file's rows)."""
        return self.table().line_of(rows)

    def frame(self, names: list[str], places: np.ndarray | slice) -> pd.DataFrame:
        """Columns of some rows (`places`, 0-based) as read: categories decoded, as
        `table.read` gives them, indexed by place."""
        cells: dict[str, Any] = {}
        for name in names:
            part = np.asarray(self.entry.columns[name][places])
            vocabulary = self.entry.vocabularies.get(name)
            cells[name] = (
                part
                if vocabulary is None
                else pd.Categorical.from_codes(part.astype(np.int64), categories=pd.Index(vocabulary))
            )
        index = np.arange(places.start, places.stop) if isinstance(places, slice) else places
        return pd.DataFrame(cells, index=index)

    def keep(
        self, features: list[str], targets: list[str], policy: str, notes: list[str]
    ) -> np.ndarray | None:
        """`data.missing` over the table, a block at a time: the rows kept (None: all)."""
        kept, said = missing.keep(self.entry, features, targets, policy, self.table(), block_rows=BLOCK_ROWS)
        notes += said
        return kept

    def slices(self) -> range:
        return range(0, self.entry.rows, BLOCK_ROWS)


def _split(
    keep: np.ndarray | None, n_rows: int, cfg: DataConfig, seed: int, path: Path
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Training and validation rows of one file: the same rows `prepare.prepare` picks (the
    permutation of the kept rows, drawn with `seed`)."""
    if cfg.val_fraction <= 0:
        return keep, None
    kept = np.flatnonzero(keep) if keep is not None else None
    order, cut = prepare.holdout(len(kept) if kept is not None else n_rows, cfg, seed)
    chosen = order[:cut]
    train = np.zeros(n_rows, dtype=bool)
    train[kept[chosen] if kept is not None else chosen] = True
    return train, (~train if keep is None else keep & ~train)
