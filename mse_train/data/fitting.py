"""The one fitter: the preprocessing and the drift profile, from the training rows of a
table in column form (cache.Entry), in memory (one block) or memory-mapped (in blocks).

Means and standard deviations: each block's count, float64 mean and squared deviations,
merged by Chan et al.'s parallel formula (numerically stable; one block gives numpy's
numbers exactly, blocks agree with it to ~1e-12 relative). Medians (`data.missing:
median`): exact, from the column's training values gathered (4 bytes a row).
Vocabularies: counts of the category codes, then sorted.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mse_train.config.schema import DataConfig
from mse_train.data.cache import Entry
from mse_train.data.preprocess import (
    MAX_CODED_CATEGORIES,
    MISSING_CATEGORY,
    CategoricalColumn,
    NumericColumn,
    Preprocessor,
    TargetColumn,
)
from mse_train.errors import DataError


def too_many_categories(name: str, count: int, max_categories: int, encoding: str) -> str | None:
    """The problem with a column of `count` training categories, or None (in-memory and streamed fits)."""
    if encoding == "embedding":
        if count <= MAX_CODED_CATEGORIES:
            return None
        return (
            f"column `{name}` has {count} distinct values in the training rows, more "
            f"than an embedding's {MAX_CODED_CATEGORIES} (codes are exact float32 inputs); "
            "drop it from `data.features` if it is an ID"
        )
    if count <= max_categories:
        return None
    return (
        f"column `{name}` has {count} distinct values in the training rows, more than "
        f"`data.max_categories` ({max_categories}); drop it from `data.features` if it is "
        "an ID, raise `data.max_categories`, or set `data.categorical_encoding: embedding`"
    )


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
        n: float = 0.0 if w is None else float(w.sum(dtype=np.float64))
        if w is not None and n > 0:
            mean = float(np.average(values.astype(np.float64), weights=w))
            m2 = float(np.sum(w * (values.astype(np.float64) - mean) ** 2))
        else:  # unweighted, or values that weigh nothing in all: then they count alike
            n = len(values)
            mean = float(values.mean(dtype=np.float64))  # float64 sums: float32 ones drift
            m2 = float(np.square(values.astype(np.float64) - mean).sum())
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
    features: Sequence[str],
    targets: Sequence[str],
    cfg: DataConfig,
    *,
    block_rows: int,
    weights: np.ndarray | None = None,
) -> tuple[Preprocessor, dict[str, Any]]:
    """The preprocessing fitted on the training rows of a table in column form, and the
    drift profile of those rows; in memory or memory-mapped alike.

    `rows`: None (all), a boolean mask, or row indices (read as one block, in their order).
    The table is read `block_rows` at a time (the whole table when it is in memory): each
    block's count, float64 mean and squared deviations, merged by Chan et al.'s parallel
    formula (one block gives numpy's numbers exactly); an exact median from the column's
    training values gathered; vocabularies from counts of category codes, sorted. With
    `weights` (each row of the table's sample weight, `data.weight`) the means, standard
    deviations and fill values are weighted, so that an integer weight fits what repeating
    the row fits; the vocabularies hold every training row's values.
    """

    def parts(values: np.ndarray) -> Iterator[np.ndarray]:
        if rows is not None and rows.dtype != np.bool_:
            yield values[rows]
            return
        for start in range(0, entry.rows, block_rows):
            part = values[start : start + block_rows]
            yield part if rows is None else part[rows[start : start + block_rows]]

    def weight_parts() -> Iterator[np.ndarray | None]:
        return parts(weights) if weights is not None else itertools.repeat(None)

    filled = cfg.missing in ("mean", "median")
    moments: dict[str, Moments] = {}
    counts: dict[str, np.ndarray] = {}
    for name in [*features, *targets]:
        if name in entry.vocabularies:
            size = len(entry.vocabularies[name]) + 1  # code -1 (empty) counted first
            counts[name] = sum(
                (
                    np.bincount(part.astype(np.int64) + 1, minlength=size)
                    for part in parts(entry.columns[name])
                ),
                np.zeros(size, np.int64),
            )
        else:
            moments[name] = Moments()
            for part, w in zip(parts(entry.columns[name]), weight_parts(), strict=False):
                moments[name].add(part, w)
    numeric, cats, problems = [], [], []
    for name in features:
        if name in counts:
            present = [entry.vocabularies[name][i] for i in np.flatnonzero(counts[name][1:])]
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
            spec.fill = _median(parts(entry.columns[name]), weight_parts())
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
        "rows": entry.rows if rows is None else int(rows.sum()) if rows.dtype == np.bool_ else len(rows),
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


def _median(values: Iterator[np.ndarray], weights: Iterator[np.ndarray | None]) -> float:
    """The median of the non-empty values; weighted (unless those weigh 0 in all), the one
    of the values repeated by integer weights: the mean of the two values where the
    cumulative weight reaches and passes half the total."""
    kept: list[np.ndarray] = []
    kept_w: list[np.ndarray] = []
    for part, w in zip(values, weights, strict=False):
        observed = ~np.isnan(part)
        kept.append(part[observed])
        if w is not None:
            kept_w.append(w[observed])
    v = np.concatenate(kept)
    w = np.concatenate(kept_w) if kept_w else None
    if w is None or not w.any():
        return float(np.median(v))
    order = np.argsort(v, kind="stable")
    cumulative = np.cumsum(w[order].astype(np.float64))
    half = cumulative[-1] / 2
    low = v[order[np.searchsorted(cumulative, half, side="left")]]
    high = v[order[min(int(np.searchsorted(cumulative, half, side="right")), len(v) - 1)]]
    return float((float(low) + float(high)) / 2)


def tiny_std_to_one(std: float) -> float:
    """The divisor for a column of this standard deviation.

    A constant column carries no information; dividing by 1 keeps it finite. So does a
    spread below float32's smallest normal number (cells of 1e-45): as a float32 divisor it
    rounds to 0 or loses all precision, and would turn the column into inf.
    """
    tiny = float(np.finfo(np.float32).tiny)
    return std if np.isfinite(std) and std >= tiny else 1.0
