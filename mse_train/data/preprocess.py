"""Learned preprocessing: missing values, one-hot categories or category codes, standardisation.

What is learned (`Preprocessor`, fitted on training rows only by fit.py) is stored in the
checkpoint as plain data, and applied by one transform (`Encoder`) to a table in column
form, in memory or a block at a time, by training, `eval` and `predict` alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mse_train.data.cache import Entry
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
    def numeric_constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The numeric features' fill values (NaN: none), means and standard deviations, as
        the float32 the transform (Encoder) and its ONNX export (use/onnx_graph.py) apply."""
        fill = np.array([c.fill if c.fill is not None else np.nan for c in self.numeric], dtype=np.float32)
        mean = np.array([c.mean for c in self.numeric], dtype=np.float32)
        return fill, mean, np.array([c.std for c in self.numeric], dtype=np.float32)

    def features_array(self, table: Table) -> np.ndarray:
        """float32 (rows, inputs) of a table read into memory: the Encoder on one block."""
        entry = Entry.of_frame(table.frame, self.features, self.categorical_names)
        return Encoder(self, entry, table, table.frame.index.to_numpy()).x(0, entry.rows, None)

    def targets_array(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 (rows, targets), standardised when training scaled the targets."""
        return self.scale_targets(frame[self.target_names].to_numpy(dtype=np.float32, copy=True))

    def scale_targets(self, y: np.ndarray) -> np.ndarray:
        """float32 targets standardised in place, as training scaled them."""
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


@dataclass
class Encoder:
    """The transform, one definition: rows of a table in column form (cache.Entry, in memory
    or memory-mapped) -> float32 model inputs (empty cells filled, numbers standardised,
    then one-hot blocks or embedding codes) and scaled targets.

    `table` names the file in messages; `places` maps the entry's rows to the file's data
    rows (None: the same), so that an unseen category is named by line (or Parquet row).
    """

    pre: Preprocessor
    entry: Entry
    table: Table
    places: np.ndarray | None = None

    def __post_init__(self) -> None:
        pre = self.pre
        self.fill, self.mean, self.std = pre.numeric_constants()
        # Per categorical column: entry code + 1 -> place in the fitted categories (-1: none).
        self.lookups: list[np.ndarray] = []
        for col in pre.categorical:
            index = {c: i for i, c in enumerate(col.categories)}
            vocab = self.entry.vocabularies[col.name]
            empty = index.get(MISSING_CATEGORY, -1) if pre.missing in ("mean", "median") else -1
            self.lookups.append(np.array([empty, *(index.get(v, -1) for v in vocab)], dtype=np.int64))
        widths = [1 if pre.embedded else len(c.categories) for c in pre.categorical]
        self.inputs = len(pre.numeric) + sum(widths)

    def x(self, start: int, stop: int, rows: np.ndarray | None) -> np.ndarray:
        """Inputs of the entry's rows `start:stop` (only those where `rows` is True)."""
        cols = self.entry.columns

        def pick(column: np.ndarray) -> np.ndarray:
            return column[start:stop] if rows is None else column[start:stop][rows]

        n = (stop - start) if rows is None else int(rows.sum())
        out = np.empty((n, self.inputs), dtype=np.float32)
        width = len(self.pre.numeric)
        block = out[:, :width]
        for j, number in enumerate(self.pre.numeric):
            block[:, j] = pick(cols[number.name])
        if self.pre.missing in ("mean", "median") and width:
            np.copyto(block, np.broadcast_to(self.fill, block.shape), where=np.isnan(block))
        if width:
            # A value far outside the training rows may overflow float32 here; the prediction
            # is then not finite, and use/scoring.py names the row instead of warning.
            with np.errstate(over="ignore", invalid="ignore"):
                block -= self.mean
                block /= self.std
        at = width
        for col, lookup in zip(self.pre.categorical, self.lookups, strict=True):
            codes = pick(cols[col.name])
            where = lookup[codes.astype(np.int64) + 1]
            unknown = (where < 0) & (codes >= 0)
            if self.pre.unknown_category == "error" and unknown.any():
                within = np.flatnonzero(unknown)
                bad = start + (within if rows is None else np.flatnonzero(rows)[within])
                raise self._unseen(col, bad, whole=(start, stop) == (0, self.entry.rows))
            if self.pre.embedded:  # the code column: 1 + place, 0 for none (the fixed zero row)
                out[:, at] = (where + 1).astype(np.float32)
                at += 1
                continue
            part = out[:, at : at + len(col.categories)]
            part[:] = 0.0
            known = np.flatnonzero(where >= 0)
            part[known, where[known]] = 1.0
            at += len(col.categories)
        return out

    def y(self, start: int, stop: int, rows: np.ndarray | None) -> np.ndarray:
        """Scaled targets of the entry's rows `start:stop` (only those where `rows` is True)."""
        cols = self.entry.columns
        names = self.pre.target_names
        y = np.empty(((stop - start) if rows is None else int(rows.sum()), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            y[:, j] = cols[name][start:stop] if rows is None else cols[name][start:stop][rows]
        return self.pre.scale_targets(y)

    def _unseen(self, col: CategoricalColumn, bad: np.ndarray, whole: bool) -> DataError:
        """The error for rows (of the entry) holding categories that training never saw;
        `whole`: they were counted in every row, not in one block."""
        vocab = self.entry.vocabularies[col.name]
        seen = list(dict.fromkeys(vocab[int(c)] for c in self.entry.columns[col.name][bad]))
        places = bad if self.places is None else self.places[bad]
        lines = self.table.line_of(places[:EXAMPLES])
        shown = ", ".join(repr(v) for v in seen[:EXAMPLES]) + (" ..." if len(seen) > EXAMPLES else "")
        return DataError(
            f"{self.table.path}, column `{col.name}`: {len(bad)} row(s){'' if whole else ' of a block'} "
            "hold categories that training never saw",
            [
                f"values: {shown}; first at {self.table.unit}(s) {', '.join(lines)}",
                f"known categories: {', '.join(col.categories[:20])}"
                + (" ..." if len(col.categories) > 20 else ""),
                "fix the values, or train with `data.unknown_category: ignore` (all-zero encoding)",
            ],
        )
