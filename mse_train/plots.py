"""loss.png for a run, and overlays of several runs (`mse-train plot`)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt

from mse_train import fsio

SIZE = (8.0, 5.0)  # inches; at DPI 100 -> 800 x 500 pixels
DPI = 100


def _positive(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) and f > 0 else math.nan)
    return out


def write_loss_plot(path: Path, history: Sequence[dict[str, Any]], best_epoch: int) -> None:
    """Train and val loss per epoch on a log scale, lr on a second axis, best epoch marked."""
    epochs = [int(r["epoch"]) for r in history]
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    ax.plot(epochs, _positive([r.get("train_loss") for r in history]), label="train loss", color="tab:blue")
    val = _positive([r.get("val_loss") for r in history])
    if any(math.isfinite(v) for v in val):
        ax.plot(epochs, val, label="val loss", color="tab:orange")
    if best_epoch:
        ax.axvline(
            best_epoch, color="tab:green", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})"
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE)")
    ax.grid(True, which="both", alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(epochs, [float(r["lr"]) for r in history], color="tab:gray", linestyle=":", label="lr")
    lr_ax.set_ylabel("learning rate")
    if min(float(r["lr"]) for r in history) > 0:
        lr_ax.set_yscale("log")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    fig.tight_layout()
    _save(fig, path)


def write_comparison(path: Path, runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> None:
    """Overlay the loss curves of several runs: solid train, dashed val."""
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    for index, (name, history) in enumerate(runs):
        color = f"C{index % 10}"
        epochs = [int(r["epoch"]) for r in history]
        ax.plot(epochs, _positive([r.get("train_loss") for r in history]), color=color, label=f"{name} train")
        val = _positive([r.get("val_loss") for r in history])
        if any(math.isfinite(v) for v in val):
            ax.plot(epochs, val, color=color, linestyle="--", label=f"{name} val")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    fsio.write_bytes(path, buffer.getvalue())
