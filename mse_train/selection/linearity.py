"""Does a table need a neural network? The short check `mse-train init` runs to pick its starter.

On tables of a few hundred rows a well-regularised linear model often beats an MLP (the
MLP picks its epoch on a few dozen validation rows, and there is little for it to find),
while on tables with sharp, threshold-like effects the MLP wins by a wide margin. The check
asks the table, in closed form and without a training loop: how much 5-fold CV R² do 512
random ReLU features of the inputs, relu(x W + b) with W ~ N(0, 1/p) and b ~ N(0, 1), add
to ridge regression on the inputs alone? Both ridges pick their penalty from ALPHAS by
leave-one-out error on each fold's training rows (exact, from one eigendecomposition), as scikit-learn's
RidgeCV does. A gain of at least MARGIN means there is curvature or interaction for an
MLP to learn; below it, a linear model with the penalty ridge chose is the starter.

The margin was set on the eight tables of bench/quality.py and checked on six more it was
not set on (bench/quality_results.md). At most MAX_ROWS rows are looked at, so the check
takes a second or two on 2 cores whatever the table's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mse_train.data.folds import kfold

ALPHAS = np.logspace(-3, 3, 13)  # ridge penalties tried, in units of the standardised inputs
UNITS = 512  # random ReLU features
MAX_ROWS = 5000  # rows looked at (a seeded sample of larger tables)
FOLDS = 5
MARGIN = 0.02  # CV R² the random features must add for the starter to be an MLP
MIN_ROWS = 20  # fewer rows: no check (5 folds of 4 rows say nothing); the starter is linear


@dataclass(frozen=True)
class Finding:
    """What the check saw: the CV R² of ridge, what random features add, and ridge's penalty."""

    rows: int  # rows looked at
    ridge_r2: float  # mean 5-fold CV R² of ridge on the inputs
    gain: float  # mean 5-fold CV R² added by the random ReLU features
    alpha: float  # the penalty leave-one-out error picks for ridge on all rows looked at

    @property
    def nonlinear(self) -> bool:
        return self.gain >= MARGIN


def check(x: np.ndarray, y: np.ndarray, seed: int) -> Finding:
    """Run the check on inputs `x` (standardised, one-hot; n x p) and targets `y` (n x t)."""
    if len(x) < MIN_ROWS:
        raise ValueError(f"the check needs at least {MIN_ROWS} rows, not {len(x)}")
    rng = np.random.default_rng(seed)
    if len(x) > MAX_ROWS:
        keep = np.sort(rng.permutation(len(x))[:MAX_ROWS])
        x, y = x[keep], y[keep]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    weights = rng.normal(size=(x.shape[1], UNITS)) / np.sqrt(max(x.shape[1], 1))
    bias = rng.normal(size=UNITS)

    def widened(z: np.ndarray) -> np.ndarray:
        return np.hstack([z, np.maximum(z @ weights + bias, 0.0)])

    plain_r2, gains = [], []
    for fit, held in kfold(len(x), FOLDS, seed):
        plain = _r2(y[held], _Ridge(x[fit], y[fit]).predict(x[held]))
        wide = _r2(y[held], _Ridge(widened(x[fit]), y[fit]).predict(widened(x[held])))
        plain_r2.append(plain)
        gains.append(wide - plain)
    alpha = _Ridge(x, y).alpha
    return Finding(len(x), float(np.mean(plain_r2)), float(np.mean(gains)), alpha)


class _Ridge:
    """Ridge regression with an intercept; the penalty from ALPHAS with the least LOO error.

    From one symmetric eigendecomposition, of Z'Z or of ZZ' (whichever is smaller; Z the
    centred inputs): with Z = U S V', the fit for a penalty a shrinks U'y by s²/(s² + a),
    and the hat matrix's diagonal gives each row's leave-one-out residual exactly.
    """

    def __init__(self, z: np.ndarray, y: np.ndarray) -> None:
        self.z_mean, self.y_mean = z.mean(0), y.mean(0)
        zc, yc = z - self.z_mean, y - self.y_mean
        by_columns = len(z) >= z.shape[1]
        if by_columns:  # Z'Z = V S² V'; basis = Z V = U S
            s2, v = np.linalg.eigh(zc.T @ zc)
            basis = zc @ v
        else:  # ZZ' = U S² U'; basis = U
            s2, basis = np.linalg.eigh(zc @ zc.T)
        s2 = np.maximum(s2, 0.0)  # rounding can leave tiny negative eigenvalues
        projected = basis.T @ yc
        squared = basis * basis

        def shrink(alpha: float) -> np.ndarray:  # the fit is basis @ (shrink * projected)
            ratio: np.ndarray = 1.0 / (s2 + alpha) if by_columns else s2 / (s2 + alpha)
            return ratio

        best = (np.inf, float(ALPHAS[0]))
        for alpha in ALPHAS:
            ratio = shrink(float(alpha))
            residual = yc - basis @ (ratio[:, None] * projected)
            leverage = squared @ ratio + 1.0 / len(z)  # the hat matrix's diagonal, intercept included
            loo = residual / np.maximum(1.0 - leverage, 1e-12)[:, None]
            error = float(np.mean(loo * loo))
            if error < best[0]:
                best = (error, float(alpha))
        self.alpha = best[1]
        weights = projected / (s2 + self.alpha)[:, None]
        self.coef = v @ weights if by_columns else zc.T @ (basis @ weights)

    def predict(self, z: np.ndarray) -> np.ndarray:
        out: np.ndarray = (z - self.z_mean) @ self.coef + self.y_mean
        return out


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """R², averaged over targets (a constant target counts as 0, as nothing can be explained)."""
    sse = ((y - predicted) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    scores = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), 0.0)
    return float(scores.mean())
