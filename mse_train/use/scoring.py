"""Predictions in the targets' own units, refused when they are not finite numbers.

A row whose features lie far outside the training rows' range (a cell of 3e38, say) can
push the float32 model output past its largest value: the "prediction" is then inf or
NaN. That is not a number anyone should use, so `eval` and `predict` stop with exit 2
naming the rows (file lines) and the feature furthest from the training rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mse_train.data.preprocess import Preprocessor
from mse_train.data.table import Table
from mse_train.errors import EXAMPLES, DataError
from mse_train.models import inference


def predictions(
    model: nn.Module,
    x: np.ndarray,
    dev: torch.device,
    pre: Preprocessor,
    rows: Table,
    skip: np.ndarray | None = None,
) -> np.ndarray:
    """Model outputs for `x` (the rows of `rows.frame`) in the targets' units, float64.

    Rows in `skip` (a boolean mask) are not checked: predict leaves them empty on purpose.
    """
    out = inference.predict(model, torch.from_numpy(x).to(dev)).cpu().numpy()
    y: np.ndarray = pre.unscale_targets(out)
    bad = ~np.isfinite(y).all(axis=1)
    if skip is not None:
        bad &= ~skip
    if bad.any():
        raise _not_finite(rows, pre, np.flatnonzero(bad), y)
    return y


def _not_finite(rows: Table, pre: Preprocessor, bad: np.ndarray, y: np.ndarray) -> DataError:
    lines = rows.line_of(rows.frame.index.to_numpy()[bad[:EXAMPLES]])
    problems = []
    for line, row in zip(lines, bad[:EXAMPLES], strict=False):
        values = ", ".join(f"{name}_pred {y[row, j]}" for j, name in enumerate(pre.target_names))
        problems.append(f"{rows.unit} {line}: {values}{_furthest_out(rows, pre, int(row))}")
    if len(bad) > EXAMPLES:
        problems.append(f"and {len(bad) - EXAMPLES} more row(s)")
    problems.append(
        "inputs this far outside the range of the training rows overflow the model's float32 "
        "output; check those cells (a unit or typing error?), or leave those rows out"
    )
    return DataError(
        f"{rows.path}: the model's prediction is not a finite number for {len(bad)} row(s)", problems
    )


def _furthest_out(rows: Table, pre: Preprocessor, row: int) -> str:
    """`; x0 is 3e+38, 2.9e+38 standard deviations from the training mean 0.01` for the worst feature."""
    worst, text = 0.0, ""
    for col in pre.numeric:
        value = float(rows.frame[col.name].iloc[row])
        if not np.isfinite(value):
            continue
        z = abs(value - col.mean) / col.std
        if z > worst or not text:
            worst = z
            text = f"; `{col.name}` is {value:.6g}"
            if (col.mean, col.std) != (0.0, 1.0):  # standardised: say how far out that is
                text += f", {z:.3g} standard deviations from the training mean {col.mean:.6g}"
    return text
