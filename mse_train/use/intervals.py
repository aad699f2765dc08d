"""Prediction intervals: split-conformal, from the validation rows' residuals.

At the end of `run`, each checkpoint stores the absolute residuals |actual - predicted| of
the validation rows under its own weights, in the targets' units (outputs/run_folder.py);
a linear model trained on every row stores its training rows' exact leave-one-out
residuals instead (the jackknife), and a sweep's ensemble its out-of-fold residuals: the
checkpoint says which (`residuals_from`), and the messages here name them.
For a level P and n residuals, the half-width is the ceil((n + 1) P)-th smallest of them:
if the new rows are drawn like the validation rows, the interval prediction ± half-width
holds the actual value with probability at least P (and less than P + 1/(n + 1)), per
target (Vovk et al. 2005; Lei et al. 2018, "Distribution-Free Predictive Inference for
Regression"). The width is the same for every row: the guarantee is on average over
rows, not for each row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mse_train.errors import CheckpointError, UserError
from mse_train.outputs import checkpoint


def check_level(level: float, option: str = "--interval") -> None:
    """A coverage level strictly between 0 and 1."""
    if not (math.isfinite(level) and 0 < level < 1):
        raise UserError(
            f"{option} must be a coverage level between 0 and 1 (exclusive), got {level:g}",
            [f"for 90% intervals: {option} 0.9"],
        )


def half_widths(ckpt_path: Path, ckpt: dict[str, Any], level: float) -> np.ndarray:
    """Per target, the distance from a prediction to either end of its level-P interval."""
    check_level(level)
    residuals = ckpt.get(checkpoint.K_RESIDUALS)
    if residuals is None:
        raise CheckpointError(
            f"{ckpt_path}: holds no validation residuals, so no intervals", [_why_none(ckpt)]
        )
    sorted_residuals = residuals.numpy()
    n = len(sorted_residuals)
    if _rank(n, level) > n:
        source = residuals_from(ckpt)
        rows = "validation rows" if source == "validation" else "rows"
        raise UserError(
            f"--interval {level:g} needs at least {_rows_needed(level)} {rows}; "
            f"{ckpt_path} was calibrated on {n} ({checkpoint.RESIDUALS_FROM[source]})",
            [f"{n} rows allow levels up to {n / (n + 1):.4g}; or hold out more validation rows"],
        )
    out: np.ndarray = sorted_residuals[_rank(n, level) - 1]
    return out


def residuals_from(ckpt: dict[str, Any]) -> str:
    """Whose residuals calibrate the checkpoint's intervals: a key of checkpoint.RESIDUALS_FROM
    (validation rows where the checkpoint does not say: it was written before it could)."""
    source = ckpt.get(checkpoint.K_RESIDUALS_FROM)
    return source if isinstance(source, str) and source in checkpoint.RESIDUALS_FROM else "validation"


_HOLD_OUT = "set `data.val` (a CSV) or `data.val_fraction` (e.g. 0.2) and train again"
_FIXES = {
    "no_validation": _HOLD_OUT,
    "weighted": _HOLD_OUT,
    "not_solved": "train it to the ridge solution (`optimizer.name: lbfgs`, `train.batch_size: null`, "
    f"`regularization.l1: 0`), or {_HOLD_OUT}",
    "too_large": _HOLD_OUT,
    "sweep_holdout": "sweep with `sweep.folds: 5` (or --folds 5): its refit's intervals come from "
    "the out-of-fold residuals",
    "streamed": "train it in memory: raise `data.memory_budget` above the table's size (or train "
    "on fewer rows) and run again",
    "not_finite": "train a model whose predictions stay finite (a lower `optimizer.lr`, "
    "`data.standardize: true`) and run again",
}


def _why_none(ckpt: dict[str, Any]) -> str:
    """Why a checkpoint holds no residuals, and the fix, as truthfully as it can tell."""
    why = ckpt.get(checkpoint.K_NO_RESIDUALS)
    if why in _FIXES:
        return f"{checkpoint.NO_RESIDUALS[why]}: {_FIXES[why]}"
    data = ckpt[checkpoint.K_CONFIG].get("data", {})
    if data.get("val") is None and not float(data.get("val_fraction") or 0) > 0:
        return f"{checkpoint.NO_RESIDUALS['no_validation']}: {_FIXES['no_validation']}"
    return (
        "it was written before its run ended (killed), or by an older mse-train: finish the "
        "run with `mse-train run CONFIG --resume`, or train it again"
    )


def _rank(n: int, level: float) -> int:
    """Which residual, counting from the smallest, bounds a level-P interval: ceil((n + 1) P)."""
    return math.ceil((n + 1) * level)


def _rows_needed(level: float) -> int:
    """The fewest validation rows for which `_rank` stays within the rows (about P / (1 - P))."""
    n = max(1, math.floor(level / (1 - level)) - 1)
    while _rank(n, level) > n:
        n += 1
    return n


def coverage(
    actual: np.ndarray,
    predicted: np.ndarray,
    half: np.ndarray,
    level: float,
    names: list[str],
    source: str = "validation",
) -> dict[str, Any]:
    """Share of rows whose actual value lies in its interval, and the mean width, per target;
    `source`: whose residuals calibrated them (`residuals_from`)."""
    inside = np.abs(actual - predicted) <= half
    per = {
        name: {"coverage": float(inside[:, j].mean()), "mean_width": float(2 * half[j])}
        for j, name in enumerate(names)
    }
    out: dict[str, Any] = {
        "level": level,
        "coverage": float(inside.mean()),
        "mean_width": float(np.mean(2 * half)),
        "residuals": source,
    }
    if len(names) > 1:
        out["targets"] = per
    return out
