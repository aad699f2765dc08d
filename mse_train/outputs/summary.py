"""summary.json: what a run did, in one typed record that the CLI prints and tools read."""

from __future__ import annotations

import platform
from typing import Literal, NotRequired, TypedDict

import numpy as np
import pandas as pd
import torch

from mse_train import __version__
from mse_train.config import Config
from mse_train.outputs import metrics
from mse_train.training.records import Status


class FinalLosses(TypedDict):
    epoch: int | None
    train_loss: float | None
    val_loss: float | None
    train_end_loss: float | None


class BestLosses(FinalLosses):
    watched: Literal["val_loss", "train_end_loss"]  # the loss of the weights in best.pt


class Rows(TypedDict):
    train: int
    val: int


class DataFiles(TypedDict):
    train: str
    val: str | None


class Timings(TypedDict):
    ingest_seconds: float  # reading the tables: parsing them, or from the data cache
    train_seconds: float  # the training loop, this call's epochs


class Versions(TypedDict):
    mse_train: str
    torch: str
    python: str
    numpy: str
    pandas: str


class Bags(TypedDict):
    """A bagged run's (`train.bags`): the out-of-bag score best.pt's mean earns."""

    count: int
    oob_mse: float  # each row some bag held out, predicted by the mean of those bags (as val_loss)
    oob_rows: int
    best_epochs: list[int]  # each bag's


class Summary(TypedDict):
    status: str  # a Status value
    epochs_run: int
    epochs_configured: int
    final: FinalLosses
    best: BestLosses
    loss_units: metrics.LossUnits
    rows: Rows
    inputs: list[str]
    targets: list[str]
    device: str
    threads: int  # torch's intra-op threads for the run (train.threads, MSE_TRAIN_THREADS)
    wall_seconds: float
    timings: Timings
    output_dir: str
    data: DataFiles
    notes: list[str]
    versions: Versions
    bags: NotRequired[Bags]  # only for a bagged run


def build(
    cfg: Config,
    status: Status,
    history: list[dict[str, float | None]],
    best_epoch: int,
    seconds: float,
    rows: Rows,
    inputs: list[str],
    device: torch.device,
    notes: list[str],
    timings: Timings,
) -> Summary:
    final = history[-1] if history else {}
    best = history[best_epoch - 1] if 0 < best_epoch <= len(history) else {}

    def epoch(row: dict[str, float | None]) -> int | None:
        value = row.get("epoch")
        return None if value is None else int(value)

    return {
        "status": status.value,
        "epochs_run": len(history),
        "epochs_configured": cfg.train.epochs,
        "final": {
            "epoch": epoch(final),
            "train_loss": final.get("train_loss"),
            "val_loss": final.get("val_loss"),
            "train_end_loss": final.get("train_end_loss"),
        },
        "best": {
            "epoch": epoch(best),
            "train_loss": best.get("train_loss"),
            "val_loss": best.get("val_loss"),
            "train_end_loss": best.get("train_end_loss"),
            "watched": "val_loss" if rows["val"] else "train_end_loss",
        },
        "loss_units": metrics.loss_units(bool(cfg.data.standardize_target)),
        "rows": rows,
        "inputs": inputs,
        "targets": cfg.targets,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "wall_seconds": round(seconds, 3),
        "timings": {
            "ingest_seconds": round(timings["ingest_seconds"], 3),
            "train_seconds": round(timings["train_seconds"], 3),
        },
        "output_dir": str(cfg.output.dir),
        "data": {"train": cfg.data.train, "val": cfg.data.val},
        "notes": notes,
        "versions": {
            "mse_train": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
