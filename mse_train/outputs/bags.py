"""What a bagged run (`train.bags`) writes: best.pt holding the bags' mean, its out-of-bag
score and intervals, bags.csv (one row per bag), and the bags' mean curve for metrics.csv.

Out of bag: each training row that some bag held out is predicted by the mean of the bags
that held it out (never by a bag that trained on it), as random forests score themselves.
Its squared error over those rows is the run's honest score (`oob_mse`), and its absolute
residuals calibrate `predict --interval` (as the jackknife+-after-bootstrap does, Kim et al.
2020): the mean of all K bags on a new row can only be steadier than the mean of the few
that held a row out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mse_train import config
from mse_train.config import Config
from mse_train.data.bags import Bagged
from mse_train.models import inference, networks
from mse_train.outputs import checkpoint, metrics, run_folder, tables

BAGS_FILE = "bags.csv"
BAG_COLUMNS = ["bag", "seed", "train_rows", "val_rows", "epochs", "best_epoch", "best_val_loss", "status"]


@dataclass
class Bag:
    """How one bag trained: its module at its best epoch, and its record."""

    module: nn.Module
    seed: int
    epochs: int
    best_epoch: int
    best_loss: float
    status: str
    history: list[dict[str, Any]]


@dataclass
class OutOfBag:
    mse: float  # mean over targets, scaled as the training loss sees the targets
    rows: int  # training rows that at least one bag held out
    residuals: np.ndarray | None  # |actual - predicted| in the targets' units, sorted per target


def out_of_bag(bags: Sequence[Bag], bagged: Bagged) -> OutOfBag:
    """Each held-out row predicted by the mean of the bags that held it out."""
    rows = bagged.rows
    total = np.zeros(rows.y.shape, dtype=np.float64)
    count = np.zeros(len(rows), dtype=np.int64)
    for bag, held in zip(bags, bagged.held_out, strict=True):
        predicted = inference.predict(bag.module.cpu(), torch.from_numpy(rows.x[held])).numpy()
        total[held] += predicted
        count[held] += 1
    covered = count > 0
    mean = total[covered] / count[covered, None]
    y = rows.y[covered].astype(np.float64)
    squared = ((mean - y) ** 2).mean(-1)
    w = None if rows.w is None else rows.w[covered]
    mse = float(np.average(squared, weights=w))
    pre = bagged.shared.pre
    residuals = np.abs(pre.unscale_targets(y) - pre.unscale_targets(mean))
    finite = bool(np.isfinite(residuals).all())
    return OutOfBag(mse, int(covered.sum()), np.sort(residuals, axis=0) if finite else None)


def write(out: Path, cfg: Config, bagged: Bagged, bags: Sequence[Bag], oob: OutOfBag) -> None:
    """best.pt (the bags' equal-weight mean, as one `networks.WeightedMean`), bags.csv and
    metrics.csv (the bags' mean curve: `mean_history`)."""
    shared = bagged.shared
    spec = run_folder.model_spec(cfg, shared)
    weights = [1.0 / len(bags)] * len(bags)
    model = networks.WeightedMean([b.module.cpu() for b in bags], weights)
    epoch = max(b.best_epoch for b in bags)
    ckpt = checkpoint.build(
        "best",
        epoch,
        networks.ensemble_spec([spec] * len(bags), weights),
        model.state_dict(),
        shared.pre,
        config.to_dict(cfg),
        shared.digests,
        {"epoch": epoch, "loss": oob.mse},
        residuals=None if oob.residuals is None else torch.from_numpy(oob.residuals),
        profile=shared.profile,
        no_residuals="not_finite" if oob.residuals is None else None,
        residuals_from="out_of_bag",
    )
    metrics.MetricsFile(out / "metrics.csv", [*metrics.columns_for(cfg.targets, True), "bags"]).write(
        mean_history([b.history for b in bags])
    )
    rows = [
        {
            "bag": j,
            "seed": b.seed,
            "train_rows": len(p.train),
            "val_rows": len(p.val) if p.val is not None else 0,
            "epochs": b.epochs,
            "best_epoch": b.best_epoch,
            "best_val_loss": b.best_loss,
            "status": b.status,
        }
        for j, (b, p) in enumerate(zip(bags, bagged.bags, strict=True))
    ]
    tables.write_rows(out / BAGS_FILE, BAG_COLUMNS, rows)
    checkpoint.save(out / "best.pt", ckpt)


def mean_history(histories: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Epoch by epoch, the mean of each number over the bags that trained that epoch (a bag
    stopped early trains no more), the longest epoch's seconds, and how many bags trained."""
    out: list[dict[str, Any]] = []
    for e in range(max((len(h) for h in histories), default=0)):
        rows = [h[e] for h in histories if len(h) > e]
        row: dict[str, Any] = {"epoch": e + 1, "bags": len(rows)}
        for key in rows[0]:
            if key == "epoch":
                continue
            values = [r.get(key) for r in rows]
            numbers = [float(v) for v in values if v is not None]
            if len(numbers) < len(values):
                row[key] = None
            elif key == "seconds":
                row[key] = max(numbers)
            else:
                row[key] = float(np.mean(numbers))
        out.append(row)
    return out
