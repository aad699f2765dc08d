"""Ridge regression with its penalty chosen by exact leave-one-out error, as scikit-learn's
RidgeCV chooses it: the L2 penalty of `mse-train init`'s linear starter candidate.

The linear model that `run` trains (L-BFGS on all rows, `regularization.l2`) converges to
ridge regression with that penalty; this module only picks the penalty, in closed form,
so the race (race.py) trains the linear candidate once per fold and not once per penalty.
"""

from __future__ import annotations

import numpy as np

ALPHAS = np.logspace(-3, 3, 13)  # ridge penalties tried, in units of the standardised inputs


class Ridge:
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
