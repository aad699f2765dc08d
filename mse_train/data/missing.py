"""Empty cells: refuse them, drop their rows, or leave them for the preprocessor to fill.

The policy is `data.missing`; the fill values themselves (mean or median of the training
rows) are learned in preprocess.py. A row whose target is empty is dropped under any
policy but `error`: there is nothing to learn from it or to score it against. One
definition (`keep`) over a table in column form, in memory or a block at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mse_train.data.cache import Entry
from mse_train.data.table import Table
from mse_train.errors import EXAMPLES, DataError


def handle_missing(
    table: Table, features: Sequence[str], targets: Sequence[str], policy: str
) -> tuple[Table, list[str]]:
    """`keep` on a table read into memory: the table to use (without the dropped rows) and notes."""
    frame = table.frame
    entry = Entry.of_frame(frame, [*targets, *features], table.categorical)
    kept, notes = keep(entry, features, targets, policy, table, frame.index.to_numpy())
    return (table if kept is None else table.with_frame(frame.iloc[np.flatnonzero(kept)])), notes


def keep(
    entry: Entry,
    features: Sequence[str],
    targets: Sequence[str],
    policy: str,
    table: Table,
    places: np.ndarray | None = None,
    block_rows: int | None = None,
) -> tuple[np.ndarray | None, list[str]]:
    """Apply the missing-value policy to the rows of a table in column form: the rows to
    keep (None: all) and notes to show. Rows with an empty target are dropped under any
    policy but `error`; features are dropped (`drop`) or left for the Encoder to fill
    (`mean`, `median`). `table` names the file in messages, `places` maps the rows to the
    file's data rows (None: the same); the columns are read `block_rows` at a time."""
    n = entry.rows
    step = block_rows or max(1, n)
    target_empty = np.zeros(n, dtype=bool)
    feature_empty = np.zeros(n, dtype=bool)
    counts = dict.fromkeys([*targets, *features], 0)
    first: dict[str, list[int]] = {name: [] for name in counts}
    for start in range(0, n, step):
        stop = min(start + step, n)
        for name in counts:
            values = entry.columns[name][start:stop]
            empty = values < 0 if name in entry.vocabularies else np.isnan(values)
            if not empty.any():
                continue
            counts[name] += int(empty.sum())
            first[name] += [start + int(r) for r in np.flatnonzero(empty)[:EXAMPLES]]
            (target_empty if name in targets else feature_empty)[start:stop] |= empty
    notes: list[str] = []
    if not any(counts.values()):
        return None, notes
    if policy == "error":
        problems = []
        for name, count in counts.items():
            if count:
                rows = np.array(first[name][:EXAMPLES])
                lines = table.line_of(rows if places is None else places[rows])
                more = " ..." if count > EXAMPLES else ""
                role = "target" if name in targets else "feature"
                where = f"{table.unit}(s) {', '.join(lines)}{more}"
                problems.append(f"column `{name}` ({role}): {count} empty cell(s), at {where}")
        problems.append(
            "fill them in, or set `data.missing` to drop (skip those rows), mean or median "
            "(fill features from the training rows); rows with an empty target are then dropped"
        )
        raise DataError(f"{table.path}: empty cells (counted as empty: blank, NA, NaN, null, ...)", problems)
    if target_empty.any():
        notes.append(f"{table.path.name}: dropped {int(target_empty.sum())} row(s) with an empty target")
    drop = target_empty
    if policy == "drop":
        only_features = int((feature_empty & ~target_empty).sum())
        drop = drop | feature_empty
        if only_features:
            notes.append(f"{table.path.name}: dropped {only_features} row(s) with an empty feature")
    elif feature_empty.any():
        filled = sum(counts[f] for f in features)
        notes.append(
            f"{table.path.name}: filled {filled} empty feature cell(s) with the training rows' {policy}"
        )
    if drop.all():
        raise DataError(f"{table.path}: no rows left after dropping rows with empty cells")
    return (None if not drop.any() else ~drop), notes
