"""K-fold splits of the training rows: shuffled with the config's seed, sizes within one.

Only row numbers live here; prepare.fit_split fits the preprocessing on each fold's
training rows, so nothing learned from a fold's validation rows reaches its training.
"""

from __future__ import annotations

import numpy as np

from mse_train.errors import ConfigError


def kfold(n_rows: int, k: int, seed: int, where: str = "--folds") -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) for each of `k` folds; every row is validated once."""
    if k < 2:
        raise ConfigError(f"{where} is {k}; cross-validation needs at least 2 folds", ["use 5 or 10"])
    if k > n_rows:
        raise ConfigError(
            f"{where} is {k} but the training file has {n_rows} row(s); each fold needs one",
            [f"use at most {n_rows} folds"],
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    parts = np.array_split(order, k)
    folds = []
    for i, val in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != i])
        folds.append((np.sort(train), np.sort(val)))
    return folds
