"""Ridge regression in closed form, with exact leave-one-out residuals: the solution the
linear model (`model.type: linear`, `regularization.l2`) converges to.

`mse-train init` picks the linear starter's L2 penalty with it (by leave-one-out error over
ALPHAS, as scikit-learn's RidgeCV does: selection/choose.py), and a run of a linear model
on all its rows keeps its leave-one-out residuals for prediction intervals, the jackknife
(outputs/run_folder.py). One symmetric eigendecomposition serves every penalty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ALPHAS = np.logspace(-3, 3, 13)  # ridge penalties tried, in units of the standardised inputs
# A model whose predictions lie within this share of the residuals' RMS of the ridge solution
# has reached it (L-BFGS in float32 comes within ~1e-4; a linear starter's best epoch, chosen
# by the training loss without the penalty, within 0.05 on the bench tables)
AGREEMENT = 0.1


class Ridge:
    """Ridge regression with an unpenalised intercept; the penalty from `alphas` with the
    least leave-one-out error (one penalty: that one).

    From one symmetric eigendecomposition, of Z'Z or of ZZ' (whichever is smaller; Z the
    centred inputs): with Z = U S V', the fit for a penalty a shrinks U'y by s²/(s² + a),
    and the hat matrix's diagonal gives each row's leave-one-out residual exactly:
    e_i / (1 - h_ii), with e_i the residual of the fit on every row.
    """

    def __init__(self, z: np.ndarray, y: np.ndarray, alphas: Sequence[float] | np.ndarray = ALPHAS) -> None:
        self.z_mean, self.y_mean = z.mean(0), y.mean(0)
        zc, yc = z - self.z_mean, y - self.y_mean
        self._by_columns = len(z) >= z.shape[1]
        if self._by_columns:  # Z'Z = V S² V'; basis = Z V = U S
            s2, self._v = np.linalg.eigh(zc.T @ zc)
            self._basis = zc @ self._v
        else:  # ZZ' = U S² U'; basis = U
            s2, self._basis = np.linalg.eigh(zc @ zc.T)
            self._zc = zc
        self._s2 = np.maximum(s2, 0.0)  # rounding can leave tiny negative eigenvalues
        self._yc = yc
        self._squared = self._basis * self._basis
        self._projected = self._basis.T @ yc
        best = (np.inf, float(alphas[0]))
        for alpha in alphas:
            loo = self.loo_residuals(float(alpha))
            error = float(np.mean(loo * loo))
            if error < best[0]:
                best = (error, float(alpha))
        self.alpha = best[1]
        weights = self._projected * self._inverse(self.alpha)[:, None]
        self.coef = self._v @ weights if self._by_columns else self._zc.T @ (self._basis @ weights)

    def _inverse(self, alpha: float) -> np.ndarray:
        """1 / (s² + alpha); 0 in directions with no spread (collinear columns, such as every
        one-hot category beside the intercept): without a penalty, the least-squares fit of
        least norm, as the pseudo-inverse gives."""
        s2 = self._s2
        kept = s2 + alpha > max(float(s2.max(initial=0.0)), 1.0) * 1e-10
        out: np.ndarray = np.divide(np.ones_like(s2), s2 + alpha, out=np.zeros_like(s2), where=kept)
        return out

    def _ratio(self, alpha: float) -> np.ndarray:
        """The fit is basis @ (ratio * projected)."""
        inverse = self._inverse(alpha)
        return inverse if self._by_columns else self._s2 * inverse

    def predict_with(self, alpha: float) -> np.ndarray:
        """The fitted rows' predictions under penalty `alpha`, [rows, targets]."""
        out: np.ndarray = self._basis @ (self._ratio(alpha)[:, None] * self._projected) + self.y_mean
        return out

    def leverage(self, alpha: float) -> np.ndarray:
        """The hat matrix's diagonal under penalty `alpha`, the intercept included, [rows]."""
        out: np.ndarray = self._squared @ self._ratio(alpha) + 1.0 / len(self._yc)
        return out

    def loo_residuals(self, alpha: float) -> np.ndarray:
        """Each row's residual y - prediction under the fit on every other row, for penalty
        `alpha`, [rows, targets] (signed): e_i / (1 - h_ii)."""
        residual = self._yc + self.y_mean - self.predict_with(alpha)
        out: np.ndarray = residual / np.maximum(1.0 - self.leverage(alpha), 1e-12)[:, None]
        return out

    def predict(self, z: np.ndarray) -> np.ndarray:
        out: np.ndarray = (z - self.z_mean) @ self.coef + self.y_mean
        return out


def alpha_of(l2: float, reduction: str, rows: int, targets: int, batch_size: int | None) -> float:
    """The ridge penalty, on the sum of squared errors, that `regularization.l2` amounts to
    in the loss `run` minimises over `rows` rows: the mean reduction divides the squared
    errors by rows x targets, the sum reduction adds the penalty once per batch."""
    if reduction == "mean":
        return l2 * rows * targets
    return l2 * (math.ceil(rows / batch_size) if batch_size else 1)


def leave_one_out(fit: Ridge, y: np.ndarray, predicted: np.ndarray, alpha: float) -> np.ndarray | None:
    """Each row's leave-one-out residual, e_i / (1 - h_ii), of a model whose predictions on
    the rows `fit` was fitted on are `predicted` ([rows, targets]): its own residuals e_i, the
    hat matrix's diagonal h_ii of ridge with penalty `alpha`. None when `predicted` is not that
    ridge's solution (more than AGREEMENT of the residuals' RMS away): a model stopped short of
    it, or trained on another loss, whose leave-one-out residuals this formula does not give."""
    solution = fit.predict_with(alpha)
    ridge_residual = y - solution
    apart = float(np.sqrt(np.mean((predicted - solution) ** 2)))
    if not apart <= AGREEMENT * float(np.sqrt(np.mean(ridge_residual**2))) + 1e-6:
        return None
    out: np.ndarray = (y - predicted) / np.maximum(1.0 - fit.leverage(alpha), 1e-12)[:, None]
    return out
