"""Empty cells: refuse them, drop their rows, or leave them for the preprocessor to fill.

The policy is `data.missing`; the fill values themselves (mean or median of the training
rows) are learned in preprocess.py. A row whose target is empty is dropped under any
policy but `error`: there is nothing to learn from it or to score it against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mse_train.data.table import Table
from mse_train.errors import EXAMPLES, DataError


def handle_missing(
    table: Table, features: Sequence[str], targets: Sequence[str], policy: str
) -> tuple[Table, list[str]]:
    """Apply the missing-value policy to rows; return the table to use and notes to show.

    Rows with an empty target are dropped under any policy but `error`; features are
    dropped (`drop`) or left for `features_array` to fill (`mean`, `median`).
    """
    frame = table.frame
    notes: list[str] = []
    empty = frame.isna()
    target_empty = empty[list(targets)].to_numpy().any(axis=1) if targets else np.zeros(len(frame), bool)
    feature_empty = empty[list(features)].to_numpy().any(axis=1)
    if not target_empty.any() and not feature_empty.any():
        return table, notes
    if policy == "error":
        problems = []
        for name in [*targets, *features]:
            rows = np.flatnonzero(empty[name].to_numpy())
            if len(rows):
                lines = table.line_of(frame.index.to_numpy()[rows[:EXAMPLES]])
                more = " ..." if len(rows) > EXAMPLES else ""
                role = "target" if name in targets else "feature"
                problems.append(
                    f"column `{name}` ({role}): {len(rows)} empty cell(s), at {table.unit}(s) "
                    f"{', '.join(map(str, lines))}{more}"
                )
        problems.append(
            "fill them in, or set `data.missing` to drop (skip those rows), mean or median "
            "(fill features from the training rows); rows with an empty target are then dropped"
        )
        raise DataError(f"{table.path}: empty cells (counted as empty: blank, NA, NaN, null, ...)", problems)
    drop = target_empty.copy()
    if target_empty.any():
        notes.append(f"{table.path.name}: dropped {int(target_empty.sum())} row(s) with an empty target")
    if policy == "drop":
        drop |= feature_empty
        only_features = int((feature_empty & ~target_empty).sum())
        if only_features:
            notes.append(f"{table.path.name}: dropped {only_features} row(s) with an empty feature")
    elif feature_empty.any():
        notes.append(
            f"{table.path.name}: filled {int(empty[list(features)].to_numpy().sum())} empty feature "
            f"cell(s) with the training rows' {policy}"
        )
    if drop.any():
        kept = frame.iloc[np.flatnonzero(~drop)]
        if len(kept) == 0:
            raise DataError(f"{table.path}: no rows left after dropping rows with empty cells")
        table = table.with_frame(kept)
    return table, notes
