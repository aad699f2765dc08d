"""Learned preprocessing: missing values, one-hot categories or category codes, standardisation.

Everything here is fitted on training rows only, stored in the checkpoint as plain
data, and applied the same way by training, `eval` and `predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mse_train.data.table import Table
from mse_train.errors import EXAMPLES, DataError

MISSING_CATEGORY = "(missing)"  # the category an empty cell gets under mean/median
# Under `categorical_encoding: embedding` a category's code (1..n; 0 = unseen) is a float32
# input: exact below 2**24, so a column may hold at most this many categories.
MAX_CODED_CATEGORIES = 2**24 - 1


@dataclass
class NumericColumn:
    name: str
    mean: float = 0.0
    std: float = 1.0
    fill: float | None = None  # mean/median of training rows, when missing cells are filled


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str] = field(default_factory=list)


@dataclass
class TargetColumn:
    name: str
    mean: float = 0.0
    std: float = 1.0


@dataclass
class Preprocessor:
    """What turns CSV columns into model inputs and targets, and back."""

    features: list[str]
    numeric: list[NumericColumn]
    categorical: list[CategoricalColumn]
    targets: list[TargetColumn]
    missing: str = "error"
    unknown_category: str = "error"
    categorical_encoding: str = "onehot"
    non_numeric: str = "error"  # `data.non_numeric`: how eval and predict read stray words

    @property
    def embedded(self) -> bool:
        """Categories enter the model as codes for its embeddings, not as one-hot columns."""
        return self.categorical_encoding == "embedding"

    @property
    def input_names(self) -> list[str]:
        """Model inputs in order: numeric features, then one column per category (onehot)
        or one code column per categorical feature (embedding)."""
        names = [c.name for c in self.numeric]
        for col in self.categorical:
            names += [col.name] if self.embedded else [f"{col.name}={cat}" for cat in col.categories]
        return names

    @property
    def category_counts(self) -> list[int]:
        """Each embedded column's number of categories (empty under onehot): the model's tables."""
        return [len(c.categories) for c in self.categorical] if self.embedded else []

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def categorical_names(self) -> list[str]:
        return [c.name for c in self.categorical]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        """Rebuild from `to_dict()`'s output; data read from a file goes through stored.py first."""
        return cls(
            features=list(data["features"]),
            numeric=[NumericColumn(**c) for c in data["numeric"]],
            categorical=[CategoricalColumn(**c) for c in data["categorical"]],
            targets=[TargetColumn(**t) for t in data["targets"]],
            missing=str(data["missing"]),
            unknown_category=str(data["unknown_category"]),
            # checkpoints written before categorical embeddings lack the key: one-hot
            categorical_encoding=str(data.get("categorical_encoding", "onehot")),
            # and those written before `data.non_numeric` read strictly
            non_numeric=str(data.get("non_numeric", "error")),
        )

    # ------------------------------------------------------------------ transform
    def features_array(self, table: Table, frame: pd.DataFrame | None = None) -> np.ndarray:
        """float32 (rows, inputs): filled, standardised numbers, then one-hot blocks (or codes)."""
        frame = table.frame if frame is None else frame
        block = frame[[c.name for c in self.numeric]].to_numpy(dtype=np.float32, copy=True)
        if self.missing in ("mean", "median") and len(self.numeric):
            fills = np.array(
                [[c.fill if c.fill is not None else np.nan for c in self.numeric]], dtype=np.float32
            )
            np.copyto(block, np.broadcast_to(fills, block.shape), where=np.isnan(block))
        if len(self.numeric):
            # A value far outside the training rows may overflow float32 here; the prediction
            # is then not finite, and use/scoring.py names the row instead of warning.
            with np.errstate(over="ignore", invalid="ignore"):
                block -= np.array([c.mean for c in self.numeric], dtype=np.float32)
                block /= np.array([c.std for c in self.numeric], dtype=np.float32)
        if not self.categorical:
            return block
        parts = [block] + [self._encode(table, frame, col) for col in self.categorical]
        return np.concatenate(parts, axis=1)

    def _encode(self, table: Table, frame: pd.DataFrame, col: CategoricalColumn) -> np.ndarray:
        """A column's one-hot block, or (embedding) its codes: 1 + the category's place, 0 for
        none (an unseen category under `ignore`), the embedding's fixed zero row."""
        codes = self._codes(table, frame, col)
        if self.embedded:
            return (codes + 1).astype(np.float32)[:, None]
        out = np.zeros((len(codes), len(col.categories)), dtype=np.float32)
        known = codes >= 0
        out[np.flatnonzero(known), codes[known]] = 1.0
        return out

    def _codes(self, table: Table, frame: pd.DataFrame, col: CategoricalColumn) -> np.ndarray:
        """Each row's place in the vocabulary, -1 for none; an unseen one is an error unless `ignore`."""
        values = frame[col.name]
        if self.missing in ("mean", "median"):
            values = values.fillna(MISSING_CATEGORY)
        codes = pd.Index(col.categories).get_indexer(pd.Index(values)).astype(np.int64)  # -1: unknown/empty
        unknown = np.flatnonzero((codes < 0) & values.notna().to_numpy())
        if len(unknown) and self.unknown_category == "error":
            seen = pd.unique(values.iloc[unknown])
            lines = table.line_of(frame.index.to_numpy()[unknown[:EXAMPLES]])
            shown = ", ".join(repr(v) for v in seen[:EXAMPLES])
            raise DataError(
                f"{table.path}, column `{col.name}`: {len(unknown)} row(s) hold categories "
                "that training never saw",
                [
                    f"values: {shown}{' ...' if len(seen) > EXAMPLES else ''}; first at {table.unit}(s) "
                    f"{', '.join(map(str, lines))}",
                    f"known categories: {', '.join(col.categories[:20])}"
                    + (" ..." if len(col.categories) > 20 else ""),
                    "fix the values, or train with `data.unknown_category: ignore` (all-zero encoding)",
                ],
            )
        return codes

    def targets_array(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 (rows, targets), standardised when training scaled the targets."""
        y = frame[self.target_names].to_numpy(dtype=np.float32, copy=True)
        with np.errstate(over="ignore", invalid="ignore"):  # far-out targets of eval rows: inf
            y -= np.array([t.mean for t in self.targets], dtype=np.float32)
            y /= np.array([t.std for t in self.targets], dtype=np.float32)
        return y

    def unscale_targets(self, y: np.ndarray) -> np.ndarray:
        """Model outputs back in each target's own units (float64)."""
        mean = np.array([t.mean for t in self.targets])
        std = np.array([t.std for t in self.targets])
        out: np.ndarray = y.astype(np.float64) * std + mean
        return out


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


def fit(
    table: Table,
    rows: np.ndarray | None,
    features: Sequence[str],
    targets: Sequence[str],
    *,
    standardize: bool,
    standardize_target: bool,
    missing: str,
    unknown_category: str,
    max_categories: int,
    categorical_encoding: str = "onehot",
    non_numeric: str = "error",
    weights: np.ndarray | None = None,
) -> Preprocessor:
    """Fit on the given training rows of `table` (all rows when `rows` is None).

    With `weights` (each row of the table's sample weight, `data.weight`) the means,
    standard deviations and fill values are weighted, so that an integer weight fits what
    repeating the row fits; the category vocabularies hold every training row's values.
    """
    frame = table.frame

    def column(name: str) -> np.ndarray:
        values = frame[name].to_numpy()
        return values if rows is None else values[rows]

    w = None if weights is None else (weights if rows is None else weights[rows])

    numeric: list[NumericColumn] = []
    categorical: list[CategoricalColumn] = []
    problems = []
    for name in features:
        if name in table.categorical:
            values = pd.Series(column(name))
            if missing in ("mean", "median"):
                values = values.fillna(MISSING_CATEGORY)
            cats = sorted({str(v) for v in values.dropna().unique()})
            if missing in ("mean", "median") and MISSING_CATEGORY not in cats:
                cats.append(MISSING_CATEGORY)
            problem = too_many_categories(name, len(cats), max_categories, categorical_encoding)
            if problem:
                problems.append(problem)
            categorical.append(CategoricalColumn(name, cats))
            continue
        cells = column(name)
        observed = _observed(cells)
        if len(observed) == 0:
            problems.append(f"column `{name}` has no values in the training rows")
            continue
        spec = NumericColumn(name)
        ow = _observed_weights(cells, w)
        if missing in ("mean", "median"):
            spec.fill = _mean_std(observed, ow)[0] if missing == "mean" else _median(observed, ow)
        if standardize:
            spec.mean, spec.std = _mean_std(observed, ow)
        numeric.append(spec)
    target_specs = []
    for name in targets:
        target = TargetColumn(name)
        if standardize_target:
            cells = column(name)
            target.mean, target.std = _mean_std(_observed(cells), _observed_weights(cells, w))
        target_specs.append(target)
    if problems:
        raise DataError(f"{table.path}: cannot prepare the features", problems)
    return Preprocessor(
        list(features),
        numeric,
        categorical,
        target_specs,
        missing,
        unknown_category,
        categorical_encoding,
        non_numeric,
    )


def _observed(values: np.ndarray) -> np.ndarray:
    """The non-empty values (no copy when there are no empty cells)."""
    empty = np.isnan(values)
    return values[~empty] if empty.any() else values


def _observed_weights(values: np.ndarray, w: np.ndarray | None) -> np.ndarray | None:
    """The weights of the non-empty values; None without weights, or when those weigh 0 in
    all (then the values count alike, rather than not at all)."""
    if w is None:
        return None
    kept = w[~np.isnan(values)]
    return kept if kept.any() else None


def _mean_std(values: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """Mean and (population) standard deviation, weighted by `w` when given."""
    if w is not None:
        mean = float(np.average(values.astype(np.float64), weights=w))
        var = float(np.average((values.astype(np.float64) - mean) ** 2, weights=w))
        return mean, tiny_std_to_one(float(np.sqrt(var)))
    mean = float(values.mean(dtype=np.float64))  # float64 sums: float32 ones drift on big tables
    return mean, tiny_std_to_one(float(values.std(dtype=np.float64)))


def _median(values: np.ndarray, w: np.ndarray | None = None) -> float:
    """The median; weighted, the one of the values repeated by integer weights: the mean of
    the two values where the cumulative weight reaches and passes half the total."""
    if w is None:
        return float(np.median(values))
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(w[order].astype(np.float64))
    half = cumulative[-1] / 2
    low = values[order[np.searchsorted(cumulative, half, side="left")]]
    high = values[order[min(int(np.searchsorted(cumulative, half, side="right")), len(values) - 1)]]
    return float((float(low) + float(high)) / 2)


def tiny_std_to_one(std: float) -> float:
    """The divisor for a column of this standard deviation.

    A constant column carries no information; dividing by 1 keeps it finite. So does a
    spread below float32's smallest normal number (cells of 1e-45): as a float32 divisor it
    rounds to 0 or loses all precision, and would turn the column into inf.
    """
    tiny = float(np.finfo(np.float32).tiny)
    return std if np.isfinite(std) and std >= tiny else 1.0
