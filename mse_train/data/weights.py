"""Sample weights (`data.weight`): a column of non-negative numbers, one per row, not a feature.

The loss, the validation loss (so early stopping and the best epoch), the scores of `cv`
and `sweep`, and `eval`'s metrics weigh each row's squared error by its weight, as
scikit-learn's `sample_weight` does; an integer weight counts a row that many times.
Here the column is checked where it is read, so a bad weight is one clear message naming
the file, the column, the rows and the fix, never a NaN loss later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mse_train.data.table import Table
from mse_train.errors import EXAMPLES, DataError, examples

ROLE = "sample weight, `data.weight`"  # how the column is named in table.check_columns' message


def check_roles(weight: str | None, features: Sequence[str], targets: Sequence[str], path: Path) -> None:
    """The weight column is neither a feature nor a target: a model must not read its weights."""
    if weight is None:
        return
    if weight in targets:
        raise DataError(
            f"{path}: column `{weight}` is both `data.weight` and a target",
            ["a row's weight says how much its error counts; choose another column for `data.weight`"],
        )
    if weight in features:
        raise DataError(
            f"{path}: column `{weight}` is both `data.weight` and listed in `data.features`",
            [f"remove `{weight}` from `data.features`: a sample weight is not an input of the model"],
        )


def read(table: Table, name: str, rows: str = "rows") -> np.ndarray:
    """The weight column of `table` as float64, refused when a cell is empty or negative,
    or when every weight is zero. `rows` names the rows in that message (e.g. "training rows")."""
    values = table.frame[name].to_numpy(dtype=np.float64)
    problems = []
    for bad, what in ((np.isnan(values), "empty cell(s)"), (values < 0, "negative weight(s)")):
        where = np.flatnonzero(bad)
        if len(where):
            lines = table.line_of(table.frame.index.to_numpy()[where[:EXAMPLES]])
            problems.append(f"{len(where)} {what}, at {table.unit}(s) {examples(lines, len(where))}")
    if problems:
        raise DataError(
            f"{table.path}, column `{name}` (`data.weight`): every row needs a weight of 0 or more",
            [
                *problems,
                "fill in a non-negative number for each of them (0 leaves a row out of the loss "
                "and the metrics), or remove those rows",
            ],
        )
    check_not_all_zero(values, table.path, name, rows)
    return values


def check_not_all_zero(values: np.ndarray, path: Path | str, name: str, rows: str) -> None:
    """A loss weighted by zeros alone measures nothing: refuse it."""
    if len(values) and not values.any():
        raise DataError(
            f"{path}, column `{name}` (`data.weight`): every weight of the {rows} is 0, so no row counts",
            ["give some of those rows a weight above 0"],
        )
