"""Ridge regression in closed form, with exact leave-one-out residuals: the solution the
linear model (`model.type: linear`, `regularization.l2`) converges to.

`mse-train init` picks the linear starter's L2 penalty with it (by leave-one-out error over
ALPHAS, as scikit-learn's RidgeCV does: selection/choose.py), and a run of a linear model
on all its rows keeps its leave-one-out residuals for prediction intervals, the jackknife
(outputs/run_folder.py). One symmetric eigendecomposition serves every penalty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALPHAS = np.logspace(-3, 3, 13)  # ridge penalties tried, in units of the standardised inputs


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
        weights = self._projected / (self._s2 + self.alpha)[:, None]
        self.coef = self._v @ weights if self._by_columns else self._zc.T @ (self._basis @ weights)

    def _ratio(self, alpha: float) -> np.ndarray:
        """The fit is basis @ (ratio * projected)."""
        s2 = self._s2
        ratio: np.ndarray = 1.0 / (s2 + alpha) if self._by_columns else s2 / (s2 + alpha)
        return ratio

    def loo_residuals(self, alpha: float) -> np.ndarray:
        """Each row's residual y - prediction under the fit on every other row, for penalty
        `alpha`, [rows, targets] (signed)."""
        ratio = self._ratio(alpha)
        residual = self._yc - self._basis @ (ratio[:, None] * self._projected)
        leverage = self._squared @ ratio + 1.0 / len(self._yc)  # intercept included
        out: np.ndarray = residual / np.maximum(1.0 - leverage, 1e-12)[:, None]
        return out

    def predict(self, z: np.ndarray) -> np.ndarray:
        out: np.ndarray = (z - self.z_mean) @ self.coef + self.y_mean
        return out
