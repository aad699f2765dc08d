"""CSV files -> float32 arrays for training and evaluation, plus the fitted preprocessing.

Order matters for honesty: rows are split into train and validation first, and every
statistic (means, standard deviations, fill values, category lists) comes from the
training rows alone.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train import runtime
from mse_train.config.schema import DataConfig
from mse_train.config.starter import Survey
from mse_train.data import cache, csvscan, drift, fitting, ingest, parquet, table, weights
from mse_train.data.digest import Digest
from mse_train.data.missing import handle_missing
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import EXAMPLES, DataError, examples


@dataclass
class Split:
    """Inputs and (scaled) targets of one set of rows, float32, C-contiguous; with
    `data.weight`, each row's sample weight (float32, [rows]), else None (every row weighs 1)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def inputs(self) -> int:
        return int(self.x.shape[1])

    def take(self, index: np.ndarray) -> Split:
        """The rows `index` names, as a Split of their own (copies, C-contiguous)."""
        return Split(
            np.ascontiguousarray(self.x[index]),
            np.ascontiguousarray(self.y[index]),
            None if self.w is None else np.ascontiguousarray(self.w[index]),
        )

    @property
    def outputs(self) -> int:
        return int(self.y.shape[1])


@dataclass
class Prepared:
    train: Split
    val: Split | None
    pre: Preprocessor
    hashers: dict[str, Digest]  # file path -> its sha256, computed in the background
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None  # the drift profile of the training rows (fitting.fit)
    ingest_seconds: float = 0.0  # reading the tables (parsing them, or from the data cache)

    @property
    def digests(self) -> dict[str, str]:
        """File path -> sha256, so a resume can tell that the data changed (waits for them)."""
        return {path: hasher.result() for path, hasher in self.hashers.items()}


def feature_names(
    features: list[str] | None,
    header: list[str],
    targets: list[str],
    path: Path,
    weight: str | None = None,
) -> list[str]:
    """`data.features` when given, or else every named column except the targets and the
    sample weight (`data.weight`)."""
    weights.check_roles(weight, features or [], targets, path)
    if features is not None:
        return list(features)
    unnamed = [i + 1 for i, name in enumerate(header) if not name]
    if unnamed:
        raise DataError(
            f"{path}, line 1: column(s) {', '.join(map(str, unnamed))} have no name in the header",
            ["name them, or list the columns to use in `data.features`"],
        )
    features = [name for name in header if name not in targets and name != weight]
    if not features:
        raise DataError(f"{path}: no feature columns: the file holds only the target(s)")
    return features


@dataclass
class Loaded:
    """The training file read and cleaned, before any split: what every CV fold starts from."""

    table: table.Table
    features: list[str]
    targets: list[str]
    digests: dict[str, Digest]
    notes: list[str]
    store: cache.Store | None = None  # the data cache, for reading `data.val` too
    ingest_seconds: float = 0.0
    weight: str | None = None  # `data.weight`: a column of the table, checked

    def weights(self) -> np.ndarray | None:
        """Each row's sample weight (float64), or None without `data.weight`."""
        return None if self.weight is None else self.table.frame[self.weight].to_numpy(np.float64)


def load_training(cfg: DataConfig, targets: list[str]) -> Loaded:
    """Read `data.train` with its feature and target columns; apply `data.missing`."""
    started = time.perf_counter()
    notes: list[str] = []
    store = cache.open_store(cfg.cache, notes)
    train_path = Path(cfg.train)
    header = table.read_header(train_path, cfg.delimiter)
    features = feature_names(cfg.features, header, targets, train_path, cfg.weight)
    table.check_columns(train_path, header, features, "feature")
    table.check_columns(train_path, header, targets, "target")
    weight = _weight_columns(cfg.weight, train_path, header)
    unknown = [c for c in cfg.categorical if c not in features]
    if unknown:
        raise DataError(
            f"`data.categorical` names column(s) that are not features: {', '.join(unknown)}",
            ["list only feature columns there"],
        )
    train = ingest.read(
        train_path,
        [*features, *targets, *weight],
        cfg.categorical,
        infer_from=features,
        delimiter=cfg.delimiter,
        store=store,
        non_numeric=cfg.non_numeric,
        numbers=[*targets, *weight],
    )
    seconds = time.perf_counter() - started
    notes += _cache_notes(store)
    if cfg.weight is not None:
        weights.read(train, cfg.weight)
    train, missing_notes = handle_missing(train, features, targets, cfg.missing)
    if cfg.weight is not None:  # rows with empty cells may have gone: some weight must be left
        weights.check_not_all_zero(_weights(train, cfg.weight), train_path, cfg.weight, "rows left")
    digests = {str(train_path): train.hasher}
    return Loaded(train, features, list(targets), digests, notes + missing_notes, store, seconds, cfg.weight)


def _weight_columns(weight: str | None, path: Path, header: list[str]) -> list[str]:
    """[`data.weight`] when set (checked to be a column of the file), else []."""
    if weight is None:
        return []
    table.check_columns(path, header, [weight], weights.ROLE)
    return [weight]


def _weights(data: table.Table, weight: str) -> np.ndarray:
    return data.frame[weight].to_numpy(np.float64)


def _cache_notes(store: cache.Store | None) -> list[str]:
    """What the cache had to say while reading (an entry rebuilt), said once."""
    if store is None:
        return []
    notes, store.notes = store.notes, []
    return notes


@dataclass
class Held:
    """Rows held out for scoring only: arrays for the model and the targets as read."""

    split: Split
    y_true: np.ndarray  # float64, the targets' own units
    rows: np.ndarray | None = None  # their indices in the training table (a fold's held-out rows)


def fit_split(
    loaded: Loaded, cfg: DataConfig, train_rows: np.ndarray, test_rows: np.ndarray, split_name: str, seed: int
) -> tuple[Prepared, Held]:
    """Arrays for a fold: its training rows (less `data.val_fraction` of them, held out for
    early stopping and the best epoch, as `run` does) and its test rows, scored only.

    The preprocessing is fitted on the rows the model trains on, so nothing learned from
    the test rows (or the inner validation rows) reaches the model. `split_name` says in a
    message which split a category fell in (e.g. "fold 2 of 5").
    """
    val_rows: np.ndarray | None = None
    fit_rows = train_rows
    if cfg.val_fraction > 0:
        # The holdout `prepare` makes of a table of these rows (the same permutation of
        # them, the same order), so a fold trains exactly as `run` on the fold's rows would.
        order, cut = holdout(len(train_rows), cfg, seed, split_name)
        fit_rows, val_rows = train_rows[order[:cut]], train_rows[order[cut:]]
    pre, _ = _fit(loaded.table, fit_rows, loaded.features, loaded.targets, cfg)
    if cfg.unknown_category == "error" and val_rows is not None:
        _check_split_categories(loaded.table, pre, val_rows, cfg, f"the validation rows of {split_name}")
    x = pre.features_array(loaded.table)
    y = pre.targets_array(loaded.table.frame)
    w = loaded.weights()
    if w is not None:
        weights.check_not_all_zero(w[fit_rows], cfg.train, str(cfg.weight), f"training rows of {split_name}")
        if val_rows is not None:
            where = f"validation rows of {split_name}"
            weights.check_not_all_zero(w[val_rows], cfg.train, str(cfg.weight), where)

    whole = Split(x, y, None if w is None else w.astype(np.float32))
    rows = whole.take
    prepared = Prepared(
        rows(fit_rows), rows(val_rows) if val_rows is not None else None, pre, loaded.digests, []
    )
    return prepared, held_out(loaded, cfg, pre, whole, test_rows, split_name)


def held_out(
    loaded: Loaded, cfg: DataConfig, pre: Preprocessor, whole: Split, test_rows: np.ndarray, split_name: str
) -> Held:
    """A fold's held-out rows of `whole` (every row of `loaded`, preprocessed by `pre`),
    checked as its training rows are: categories `pre` never saw, weights all zero."""
    if cfg.unknown_category == "error":
        _check_split_categories(loaded.table, pre, test_rows, cfg, split_name)
    if whole.w is not None:
        where = f"held-out rows of {split_name}"
        weights.check_not_all_zero(whole.w[test_rows], cfg.train, str(cfg.weight), where)
    y_true = loaded.table.frame[loaded.targets].to_numpy(dtype=np.float64)[test_rows]
    return Held(whole.take(test_rows), y_true, test_rows)


def holdout(n: int, cfg: DataConfig, seed: int, split_name: str | None = None) -> tuple[np.ndarray, int]:
    """The one draw of `data.val_fraction`'s validation rows, in memory, for a fold's rows
    (`split_name`) and streamed: a permutation of `n` rows drawn with `seed`, and where it
    is cut (its first `cut` rows train, the rest validate)."""
    n_val = round(n * cfg.val_fraction)
    if n_val < 1 or n - n_val < 1:
        if split_name is not None:
            raise DataError(
                f"{cfg.train}: {split_name} has {n} training row(s), too few to hold "
                f"out `data.val_fraction: {cfg.val_fraction}` of them",
                ["use fewer folds, more rows, or data.val_fraction: 0"],
            )
        raise DataError(
            f"{Path(cfg.train)}: {n} row(s) are too few to hold out `data.val_fraction: "
            f"{cfg.val_fraction}` ({n_val} validation, {n - n_val} training)",
            ["use more rows, a different val_fraction, or set it to 0"],
        )
    return np.random.default_rng(seed).permutation(n), n - n_val


def fit_all(
    loaded: Loaded, cfg: DataConfig, rows: np.ndarray | None = None
) -> tuple[Split, Preprocessor, dict[str, Any]]:
    """Every row of `loaded` as arrays, the preprocessing and drift profile fitted on `rows`
    of them (None: all): for the bags of a bagged run, or of a fold (data/bags.py), which
    share one preprocessing."""
    pre, profile = _fit(loaded.table, rows, loaded.features, loaded.targets, cfg)
    w = loaded.weights()
    split = Split(
        pre.features_array(loaded.table),
        pre.targets_array(loaded.table.frame),
        None if w is None else w.astype(np.float32),
    )
    return split, pre, profile


def whole_table(loaded: Loaded, cfg: DataConfig) -> Split:
    """Every row of `loaded`, the preprocessing fitted on all of them: for `init`'s look at a
    table before any split (ridge's penalty), never for training or scoring a model."""
    pre, _ = _fit(loaded.table, None, loaded.features, loaded.targets, cfg)
    return Split(pre.features_array(loaded.table), pre.targets_array(loaded.table.frame))


def _fit(
    train: table.Table, rows: np.ndarray | None, features: list[str], targets: list[str], cfg: DataConfig
) -> tuple[Preprocessor, dict[str, Any]]:
    """`fitting.fit` on the table in column form, in memory: one block."""
    columns = cache.Entry.of_frame(train.frame, [*features, *targets], train.categorical)
    w = None if cfg.weight is None else _weights(train, cfg.weight)
    return fitting.fit(train.path, columns, rows, features, targets, cfg, block_rows=columns.rows, weights=w)


def prepare(cfg: DataConfig, targets: list[str], seed: int) -> Prepared:
    """Read, clean, split and preprocess the training (and validation) data."""
    loaded = load_training(cfg, targets)
    train, features, notes, digests = loaded.table, loaded.features, loaded.notes, loaded.digests
    train_path = Path(cfg.train)
    n = train.n_rows
    ingest_seconds = loaded.ingest_seconds
    if cfg.val is not None:
        val_path = Path(cfg.val)
        started = time.perf_counter()
        weight = _weight_columns(cfg.weight, val_path, table.read_header(val_path, cfg.delimiter))
        val = ingest.read(
            val_path,
            [*features, *targets, *weight],
            train.categorical,
            infer_from=(),
            delimiter=cfg.delimiter,
            store=loaded.store,
            non_numeric=cfg.non_numeric,
            numbers=[*targets, *weight],
        )
        ingest_seconds += time.perf_counter() - started
        notes += _cache_notes(loaded.store)
        if cfg.weight is not None:
            weights.read(val, cfg.weight, "validation rows")
        val, val_notes = handle_missing(val, features, targets, cfg.missing)
        if cfg.weight is not None:
            weights.check_not_all_zero(_weights(val, cfg.weight), val_path, cfg.weight, "rows left")
        notes += val_notes
        digests[str(val_path)] = val.hasher
        train_rows = None
    elif cfg.val_fraction > 0:
        order, cut = holdout(n, cfg, seed)
        train_rows = order[:cut]
    else:
        train_rows = None

    pre, profile = _fit(train, train_rows, features, targets, cfg)
    if train_rows is not None and cfg.unknown_category == "error":
        _check_split_categories(train, pre, order[cut:], cfg, "the validation split")
    x = pre.features_array(train)
    y = pre.targets_array(train.frame)
    w = None if cfg.weight is None else _weights(train, cfg.weight).astype(np.float32)
    del train
    runtime.release_freed_memory()
    if cfg.val is not None:
        val_w = None if cfg.weight is None else _weights(val, cfg.weight).astype(np.float32)
        val_split = Split(pre.features_array(val), pre.targets_array(val.frame), val_w)
        return Prepared(Split(x, y, w), val_split, pre, digests, notes, profile, ingest_seconds)
    if train_rows is None:
        return Prepared(Split(x, y, w), None, pre, digests, notes, profile, ingest_seconds)
    # One gather puts train rows first and validation rows after; both are then views.
    x, y, w = x[order], y[order], None if w is None else w[order]
    if w is not None:
        for part, rows in ((w[:cut], "training rows"), (w[cut:], "validation rows (`data.val_fraction`)")):
            weights.check_not_all_zero(part, train_path, str(cfg.weight), rows)
    fit_part, val_part = (None, None) if w is None else (w[:cut], w[cut:])
    return Prepared(
        Split(x[:cut], y[:cut], fit_part),
        Split(x[cut:], y[cut:], val_part),
        pre,
        digests,
        notes,
        profile,
        ingest_seconds,
    )


def _check_split_categories(
    train: table.Table, pre: Preprocessor, val_rows: np.ndarray, cfg: DataConfig, split_name: str
) -> None:
    """`check_categories` on held-out rows (indices) of a table read into memory."""
    columns = cache.Entry.of_frame(train.frame, pre.categorical_names, pre.categorical_names)
    check_categories(columns, val_rows, pre, cfg, train, split_name, train.frame.index.to_numpy())


def check_categories(
    entry: cache.Entry,
    rows: np.ndarray,
    pre: Preprocessor,
    cfg: DataConfig,
    where: table.Table,
    split_name: str,
    places: np.ndarray | None = None,
    block_rows: int | None = None,
) -> None:
    """A category held only by held-out rows (`rows`: indices, or a mask read `block_rows`
    at a time) of a table in column form: say so. The vocabulary comes from the training
    rows alone, so such a value would otherwise be reported as one "training never saw",
    against a file that holds it. `where` names the file, `places` maps rows to its data rows."""
    problems = []
    for col in pre.categorical:
        vocab, known_names = entry.vocabularies[col.name], set(col.categories)
        known = np.array([v in known_names for v in vocab] + [True])  # code -1 (empty) last
        column = entry.columns[col.name]
        seen: dict[str, None] = {}
        bad_rows: list[np.ndarray] = []
        count = 0
        for picked in _held_out(rows, entry.rows, block_rows):
            codes = column[picked]
            bad = ~known[codes]
            if bad.any():
                count += int(bad.sum())
                seen.update(dict.fromkeys(vocab[c] for c in codes[bad]))
                bad_rows.append(np.sort(picked[bad])[:EXAMPLES])
        if count:
            first = np.concatenate(bad_rows)[:EXAMPLES]
            lines = where.line_of(first if places is None else places[first])
            problems.append(
                f"column `{col.name}`: {examples([repr(v) for v in seen])} only in "
                f"{count} row(s) that fell in {split_name} ({where.unit}(s) {examples(lines, count)})"
            )
    if problems:
        raise DataError(
            f"{where.path}: categories that no training row holds: {split_name}"
            + (
                f" (`data.val_fraction: {cfg.val_fraction}`, shuffled with `seed`)"
                if split_name == "the validation split"
                else ""
            )
            + " took every row with them",
            [
                *problems,
                "the model cannot learn a category from validation rows: change `seed` for another "
                "split, hold out fewer rows, add rows with those values, or set "
                "`data.unknown_category: ignore` (validation rows with them are encoded as all zeros)",
            ],
        )


def _held_out(rows: np.ndarray, n: int, block_rows: int | None) -> Iterator[np.ndarray]:
    """The held-out row numbers: the indices as given, or a mask's a block at a time."""
    if rows.dtype != np.bool_:
        yield rows
        return
    step = block_rows or max(1, n)
    for start in range(0, n, step):
        yield start + np.flatnonzero(rows[start : start + step])


def watch_words(watch: drift.Watch, path: Path, header: list[str], delimiter: str) -> None:
    """Under `data.non_numeric: missing`, tell `watch` (which has seen every row) which numeric
    features' empty cells were words in the file: a second, exact pass over a CSV, only when
    such a column has empty cells (a Parquet column of numbers holds no words)."""
    pre = watch.pre
    if pre.non_numeric != "missing" or parquet.is_parquet(path):
        return
    empty = [c.name for c in pre.numeric if watch.missing.get(c.name)]
    if not empty:
        return
    found = csvscan.scan(path, header, delimiter, dict.fromkeys(empty, True))
    for name in empty:
        if found.bad_counts.get(name):
            cells = [(f"line {line}", word) for line, word in found.bad_cells.get(name, [])]
            watch.observe_words(name, found.bad_counts[name], cells)


def prepare_eval(
    path: Path,
    pre: Preprocessor,
    delimiter: str,
    with_targets: bool = True,
    watch: drift.Watch | None = None,
    store: cache.Store | None = None,
    weight: str | None = None,
) -> tuple[table.Table, Split, list[str]]:
    """Read a CSV with the columns a checkpoint was trained on and preprocess it the same way.

    `watch`, when given, sees the rows as read, before empty cells are dropped or filled;
    `store`, the data cache to read through; `weight`, the checkpoint's `data.weight`: when
    the file has that column, the split holds its rows' weights (checked as for training).
    """
    header = table.read_header(path, delimiter)
    targets = pre.target_names if with_targets else []
    table.check_columns(path, header, pre.features, "feature the model was trained on")
    table.check_columns(path, header, targets, "target")
    weighted = [weight] if weight is not None and weight in header and weight not in pre.features else []
    data = ingest.read(
        path,
        [*pre.features, *targets, *weighted],
        pre.categorical_names,
        infer_from=(),
        delimiter=delimiter,
        store=store,
        non_numeric=pre.non_numeric,
        numbers=[*targets, *weighted],
    )
    if watch is not None:
        watch.observe(data.frame)
        watch_words(watch, path, header, delimiter)
    for name in weighted:
        weights.read(data, name)
    policy = pre.missing
    data, notes = handle_missing(data, pre.features, targets, policy)
    notes = _cache_notes(store) + notes
    x = pre.features_array(data)
    y = pre.targets_array(data.frame) if with_targets else np.empty((len(x), 0), np.float32)
    w = None
    for name in weighted:
        w = _weights(data, name)
        weights.check_not_all_zero(w, path, name, "rows left")
    return data, Split(x, y, w), notes


@dataclass
class Sketch:
    """A first look at a table, for a starter config: which columns, and what they hold."""

    features: list[str]
    text_columns: list[str]  # hold text in their first rows: categorical
    empty_columns: list[str]  # hold empty cells in their first rows
    rows: int | None  # rows in the first 1000 (so the whole table when fewer); None: unknown
    left_out: dict[str, str] = field(default_factory=dict)  # Parquet columns of unreadable types
    unnamed: list[int] = field(default_factory=list)  # columns (from 1) with no name in the header


def sketch(path: Path, targets: Sequence[str], delimiter: str) -> Sketch:
    """Feature columns of a table, and which of them hold text or empty cells in the first rows.

    A Parquet column of a type that cannot be read (a list, a date, ...) is left out of
    the features, so that the starter config works; a target of such a type is an error.
    So is a column with no name in the header (the index `DataFrame.to_csv()` writes, the
    empty columns a spreadsheet leaves at the end of each row): the config lists its
    features by name.
    """
    header = table.read_header(path, delimiter)
    table.check_columns(path, header, targets, "target")
    unnamed = [i + 1 for i, name in enumerate(header) if not name]
    named = [name for name in header if name and name not in targets]
    features = feature_names(named if unnamed else None, header, list(targets), path)
    if not features:
        raise DataError(f"{path}: no feature columns with a name: the file holds only the target(s)")
    text, empty, rows, unusable = table.sniff(path, [*features, *targets], delimiter)
    bad_targets = [t for t in targets if t in unusable]
    if bad_targets:
        name = bad_targets[0]
        raise DataError(
            f"{path}, column `{name}`: Parquet type `{unusable[name]}` cannot be a target",
            [f"cast `{name}` to a number before writing the file"],
        )
    features = [f for f in features if f not in unusable]
    if not features:
        raise DataError(f"{path}: no feature column of a type that can be read (numbers, strings, booleans)")
    left_out = {f: unusable[f] for f in unusable}
    return Sketch(
        features, sorted(text & set(features)), sorted(empty - set(unusable)), rows, left_out, unnamed
    )


MIN_ROWS_FOR_ID = 20  # below this, a column of distinct values is no evidence of an ID


def survey(path: Path, features: Sequence[str], targets: Sequence[str], delimiter: str) -> Survey:
    """Read every row of a table as `run` would with `data.non_numeric: missing`, and say
    what its settings must allow: how many categories, which columns are IDs, where
    numeric columns hold stray words. Raises DataError when `run` could not read it either."""
    columns = [*features, *targets]
    data = table.read(
        path, columns, infer_from=features, delimiter=delimiter, non_numeric="missing", numbers=targets
    )
    frame, n = data.frame, data.n_rows
    categories: dict[str, int] = {}
    ids: list[str] = []
    for name in features:
        values = frame[name]
        if name in data.categorical:
            count = int(values.nunique(dropna=True))
            categories[name] = count
            if n >= MIN_ROWS_FOR_ID and count == n:
                ids.append(name)
        elif n >= MIN_ROWS_FOR_ID:
            numbers = values.to_numpy(dtype=np.float64)
            if (
                np.isfinite(numbers).all()
                and (numbers == np.round(numbers)).all()
                and numbers.max() - numbers.min() == n - 1
                and len(np.unique(numbers)) == n
            ):
                ids.append(name)  # 0..n-1 or 1..n in some order: a row number
    empty = [c for c in columns if bool(frame[c].isna().any())]
    blank = [c for c in features if bool(frame[c].isna().all())]
    stray: dict[str, int] = {}
    numeric_empty = [c for c in empty if c in features and c not in data.categorical]
    if numeric_empty and not parquet.is_parquet(path):  # a Parquet column of numbers holds no words
        header = table.read_header(path, delimiter)
        found = csvscan.scan(path, header, delimiter, dict.fromkeys(numeric_empty, True))
        stray = {c: found.bad_counts[c] for c in numeric_empty if found.bad_counts.get(c)}
    looks = {name: _looks_like(frame[name]) for name in features if name in data.categorical}
    far = {name: _far_out(frame[name]) for name in targets}
    constant = {}
    for name in targets:
        y = frame[name].dropna().to_numpy(dtype=np.float64)
        if len(y) > 1 and float(y.min()) == float(y.max()):
            constant[name] = float(y[0])
    return Survey(
        n,
        categories,
        ids,
        stray,
        empty,
        blank,
        {k: v for k, v in looks.items() if v},
        {k: v for k, v in far.items() if v},
        constant,
    )


FAR_OUT = 1000.0  # a target value this many median absolute deviations from the median is named


def _far_out(values: pd.Series) -> list[tuple[int, float]]:
    """The rows (from 1) and values of a target that lie FAR_OUT median absolute deviations or
    more from its median: a typing slip (1e9 among values near 1) that a squared error
    follows; a heavy tail of real values (incomes) stays within it. The first EXAMPLES."""
    column = values.to_numpy(dtype=np.float64)
    y = column[np.isfinite(column)]
    if len(y) < MIN_ROWS_FOR_ID:
        return []
    median = float(np.median(y))
    spread = float(np.median(np.abs(y - median)))
    if spread == 0:
        return []
    out = np.flatnonzero(np.abs(column - median) >= FAR_OUT * spread)
    return [(int(i) + 1, float(column[i])) for i in out[:EXAMPLES]]


LOOKS_SAMPLE = 200  # distinct values a text column is judged by


def _looks_like(values: pd.Series) -> tuple[str, str] | None:
    """What a text column's values are when they are not words, and one of them: "numbers"
    written with signs or separators, or "dates" (and times); None otherwise. Judged on up
    to LOOKS_SAMPLE of its distinct values, every one of which must read so."""
    sample = [str(v) for v in values.dropna().unique()[:LOOKS_SAMPLE]]
    if not sample:
        return None
    if csvscan.formatted_numbers(sample):
        return "numbers", sample[0]
    if all(_DATE.match(v) for v in sample):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' "could not infer format": then not dates
            parsed = pd.to_datetime(pd.Series(sample), errors="coerce", format="mixed")
        if bool(parsed.notna().all()):
            return "dates", sample[0]
    return None


# A date first (2021-03-04, 04/03/2021, 2021/3/4), then anything (a time, a zone).
_DATE = re.compile(r"^\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})([ T].*)?$")
