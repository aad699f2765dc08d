"""`preprocess.fit` and `drift.profile` over a memory-mapped table, a block of rows at a time.

Means and standard deviations: each block's count, float64 mean and float64 sum of squared
deviations, merged by Chan et al.'s parallel formula (numerically stable; equal to the
in-memory numbers to ~1e-12 relative). Medians (`data.missing: median`): exact, from one
more pass per numeric column that gathers that column's training values (4 bytes a row).
Vocabularies: counts of the cache's category codes, then sorted as in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mse_train.config.schema import DataConfig
from mse_train.data.cache import Entry
from mse_train.data.preprocess import (
    MISSING_CATEGORY,
    CategoricalColumn,
    NumericColumn,
    Preprocessor,
    TargetColumn,
    tiny_std_to_one,
    too_many_categories,
)
from mse_train.data.stream import BLOCK_ROWS
from mse_train.errors import DataError


class Moments:
    """Count, mean, squared deviations (float64), min, max and empty cells of a column's
    values; with weights, `n` is their sum and the mean and squared deviations are weighted.

    The first block's numbers are taken as computed (not merged into zeros), so one block
    gives exactly what numpy gives for the whole column.
    """

    def __init__(self) -> None:
        self.n: float = 0
        self.mean, self.m2 = 0.0, 0.0
        self.low, self.high, self.empty = np.inf, -np.inf, 0

    def add(self, values: np.ndarray, w: np.ndarray | None = None) -> None:
        empty = np.isnan(values)
        if empty.any():
            self.empty += int(empty.sum())
            values = values[~empty]
            w = None if w is None else w[~empty]
        if len(values) == 0:
            return
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        if w is None:
            n: float = len(values)
            mean = float(values.mean(dtype=np.float64))
            m2 = float(np.square(values.astype(np.float64) - mean).sum())
        else:
            n = float(w.sum(dtype=np.float64))
            if n == 0:  # rows that weigh nothing move neither the mean nor the spread
                return
            mean = float(np.average(values.astype(np.float64), weights=w))
            m2 = float(np.sum(w * (values.astype(np.float64) - mean) ** 2))
        if self.n == 0:
            self.n, self.mean, self.m2 = n, mean, m2
        else:
            total = self.n + n
            delta = mean - self.mean
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.n * n / total
            self.n = total

    def mean_std(self) -> tuple[float, float]:
        return self.mean, tiny_std_to_one(float(np.sqrt(self.m2 / self.n)))


def fit(
    path: Path,
    entry: Entry,
    rows: np.ndarray | None,
    features: list[str],
    targets: list[str],
    cfg: DataConfig,
) -> tuple[Preprocessor, dict[str, Any]]:
    """The preprocessing fitted on `rows` (all when None) and the drift profile of those rows."""
    categorical = set(entry.categorical)
    numbers = [c for c in [*features, *targets] if c not in categorical]
    moments = {name: Moments() for name in numbers}
    counts = {
        name: np.zeros(len(entry.vocabularies[name]) + 1, np.int64)
        for name in features
        if name in categorical
    }
    for start in range(0, entry.rows, BLOCK_ROWS):
        mask = None if rows is None else rows[start : start + BLOCK_ROWS]
        for name in [*moments, *counts]:
            part = entry.columns[name][start : start + BLOCK_ROWS]
            if mask is not None:
                part = part[mask]
            if name in moments:
                moments[name].add(part)
            else:
                counts[name] += np.bincount(part.astype(np.int64) + 1, minlength=len(counts[name]))
    n_rows = entry.rows if rows is None else int(rows.sum())
    numeric, cats, problems = [], [], []
    for name in features:
        if name in counts:
            present = [entry.vocabularies[name][i] for i in np.flatnonzero(counts[name][1:])]
            filled = cfg.missing in ("mean", "median")
            names = sorted(set(present) | ({MISSING_CATEGORY} if filled and counts[name][0] else set()))
            if filled and MISSING_CATEGORY not in names:
                names.append(MISSING_CATEGORY)
            problem = too_many_categories(name, len(names), cfg.max_categories, cfg.categorical_encoding)
            if problem:
                problems.append(problem)
            cats.append(CategoricalColumn(name, names))
            continue
        m = moments[name]
        if m.n == 0:
            problems.append(f"column `{name}` has no values in the training rows")
            continue
        spec = NumericColumn(name)
        if cfg.missing == "mean":
            spec.fill = m.mean
        elif cfg.missing == "median":
            spec.fill = _median(entry, name, rows, int(m.n))
        if cfg.standardize:
            spec.mean, spec.std = m.mean_std()
        numeric.append(spec)
    target_specs = []
    for name in targets:
        target = TargetColumn(name)
        if cfg.standardize_target:
            target.mean, target.std = moments[name].mean_std()
        target_specs.append(target)
    if problems:
        raise DataError(f"{path}: cannot prepare the features", problems)
    pre = Preprocessor(
        list(features),
        numeric,
        cats,
        target_specs,
        cfg.missing,
        cfg.unknown_category,
        cfg.categorical_encoding,
        cfg.non_numeric,
    )
    profile = {
        "rows": n_rows,
        "numeric": {
            c.name: {
                "min": moments[c.name].low,
                "max": moments[c.name].high,
                "missing": moments[c.name].empty,
            }
            for c in numeric
        },
        "categorical": {c.name: {"missing": int(counts[c.name][0])} for c in cats},
    }
    return pre, profile


def _median(entry: Entry, name: str, rows: np.ndarray | None, n: int) -> float:
    """The exact median of a column's non-empty training values, gathered into one array."""
    values = np.empty(n, dtype=np.float32)
    at = 0
    for start in range(0, entry.rows, BLOCK_ROWS):
        part = entry.columns[name][start : start + BLOCK_ROWS]
        if rows is not None:
            part = part[rows[start : start + BLOCK_ROWS]]
        part = part[~np.isnan(part)]
        values[at : at + len(part)] = part
        at += len(part)
    return float(np.median(values))
