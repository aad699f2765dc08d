"""The rows of a bagged run (`train.bags`): one preprocessing, K draws of validation rows.

Bag j holds out its own `data.val_fraction` of the training rows, drawn as `run` draws them
with seed + j (bag 0's are exactly those of a run with the same seed), trains on the rest
and stops early on its own. The preprocessing (means, scales, fill values, categories) is
fitted once on all training rows and shared, as AutoGluon's bagged models share theirs:
every bag needs the same input columns to be averaged in one checkpoint. So a bag's
validation rows take part in the statistics, never in the weights.

`cv` of a bagged config bags each fold the same way, on the fold's training rows
(`fold_bags`), and scores the mean of the fold's bags on its held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mse_train.config.schema import DataConfig
from mse_train.data import prepare, stream_fit, table, weights
from mse_train.data.prepare import Prepared, Split
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import DataError


@dataclass
class Bagged:
    """Every training row (`rows`), each bag's arrays (`bags[j]`: its training and validation
    rows), and which rows each bag held out (indices into `rows`, for the out-of-bag scores)."""

    rows: Split
    bags: list[Prepared]
    held_out: list[np.ndarray]

    @property
    def shared(self) -> Prepared:
        """Bag 0: its preprocessing, notes, digests and profile are every bag's."""
        return self.bags[0]


def prepare_bags(cfg: DataConfig, targets: list[str], seed: int, k: int) -> Bagged:
    """Read the training table into memory, fit the preprocessing on all its rows, and draw
    `k` validation splits (seeds seed, ..., seed + k - 1)."""
    path = Path(cfg.train)
    header = table.read_header(path, cfg.delimiter)
    if not stream_fit.surely_fits(path, header, len(targets), stream_fit.budget(cfg), gunzip=True):
        raise DataError(
            f"{path}: the table may need more memory than `data.memory_budget`, and a bagged run "
            "(`train.bags`) holds its rows in memory",
            ["raise `data.memory_budget`, or set `train.bags: 1` to stream the table"],
        )
    loaded = prepare.load_training(cfg, targets)
    whole, pre, profile = prepare.fit_all(loaded, cfg)
    return _draw(loaded, cfg, whole, pre, profile, seed, k)


def fold_bags(
    loaded: prepare.Loaded,
    cfg: DataConfig,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    split_name: str,
    seed: int,
    k: int,
) -> tuple[Bagged, prepare.Held]:
    """A fold of cross-validation as a bagged run trains on it: one preprocessing fitted on
    the fold's training rows, their `k` draws of validation rows, and its held-out rows."""
    whole, pre, profile = prepare.fit_all(loaded, cfg, train_rows)
    held = prepare.held_out(loaded, cfg, pre, whole, test_rows, split_name)
    return _draw(loaded, cfg, whole.take(train_rows), pre, profile, seed, k, f" of {split_name}"), held


def _draw(
    loaded: prepare.Loaded,
    cfg: DataConfig,
    whole: Split,
    pre: Preprocessor,
    profile: dict[str, Any],
    seed: int,
    k: int,
    where: str = "",
) -> Bagged:
    """The `k` bags of the rows `whole`: bag j's validation rows drawn with seed + j."""
    n = len(whole)
    bags, held_out = [], []
    for j in range(k):
        order, cut = prepare.holdout(n, cfg, seed + j, f"bag {j}{where}" if where else None)
        fit_rows, val_rows = order[:cut], order[cut:]
        if whole.w is not None:
            for rows, what in ((fit_rows, "training"), (val_rows, "validation")):
                weights.check_not_all_zero(
                    whole.w[rows], Path(cfg.train), str(cfg.weight), f"{what} rows of bag {j}{where}"
                )
        bags.append(
            Prepared(
                whole.take(fit_rows),
                whole.take(val_rows),
                pre,
                loaded.digests,
                loaded.notes,
                profile,
                loaded.ingest_seconds,
            )
        )
        held_out.append(val_rows)
    return Bagged(whole, bags, held_out)
