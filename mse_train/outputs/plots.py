"""loss.png for a run, overlays of several runs (`mse-train plot`), a sweep's sweep.png, the
importance chart of `explain` and the fit plots of `eval --plot`."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The Figure API renders with Agg and never opens a window; skipping pyplot saves import time.
import numpy as np
from matplotlib.figure import Figure

from mse_train.outputs import fsio

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
    fig = Figure(figsize=SIZE, dpi=DPI)
    ax = fig.add_subplot()
    ax.plot(epochs, _positive([r.get("train_loss") for r in history]), label="train loss", color="tab:blue")
    for key, label, color in (
        ("val_loss", "val loss", "tab:orange"),
        ("train_end_loss", "train loss, end of epoch", "tab:purple"),
    ):
        values = _positive([r.get(key) for r in history])
        if any(math.isfinite(v) for v in values):
            ax.plot(epochs, values, label=label, color=color)
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
    fig.subplots_adjust(left=0.1, right=0.88, top=0.95, bottom=0.1)  # tight_layout costs ~0.1 s
    _save(fig, path)


def write_comparison(path: Path, runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> None:
    """Overlay the loss curves of several runs: solid train, dashed val."""
    fig = Figure(figsize=SIZE, dpi=DPI)
    ax = fig.add_subplot()
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
    fig.subplots_adjust(left=0.1, right=0.95, top=0.95, bottom=0.1)
    _save(fig, path)


def write_sweep_plot(path: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str], best: int) -> None:
    """Score against each swept key, one panel per key; the best trial in red."""
    scored = [r for r in rows if r.get("score_mean") is not None]
    columns = min(3, max(1, len(keys)))
    panels = max(1, math.ceil(len(keys) / columns))
    fig = Figure(figsize=(4.0 * columns, 3.2 * panels), dpi=DPI)
    for index, key in enumerate(keys):
        ax = fig.add_subplot(panels, columns, index + 1)
        pairs = [
            (r[key], float(r["score_mean"]), r["trial"] == best) for r in scored if r.get(key) is not None
        ]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _, _ in pairs)
        if numeric:
            xs = [float(v) for v, _, _ in pairs]
        else:  # choices: one slot each, in the order they first appear
            labels = list(dict.fromkeys(str(v) for v, _, _ in pairs))
            xs = [float(labels.index(str(v))) for v, _, _ in pairs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize="small")
        ys = [y for _, y, _ in pairs]
        ax.scatter(xs, ys, s=18, color="tab:blue", alpha=0.7)
        ax.scatter(
            [x for x, p in zip(xs, pairs, strict=True) if p[2]],
            [p[1] for p in pairs if p[2]],
            s=60,
            color="tab:red",
            label=f"best (trial {best})",
        )
        positive = [x for x in xs if x > 0]
        if numeric and positive and len(positive) == len(xs) and max(xs) / min(positive) > 100:
            ax.set_xscale("log")
        if ys and min(ys) > 0 and max(ys) / min(ys) > 100:  # diverging trials next to good ones
            ax.set_yscale("log")
        ax.set_xlabel(key, fontsize="small")
        ax.set_ylabel("score (val MSE)", fontsize="small")
        ax.grid(True, alpha=0.3)
        if index == 0:
            ax.legend(fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.97, top=0.95, bottom=0.15, hspace=0.5, wspace=0.3)
    _save(fig, path)


def write_importance_plot(path: Path, importance: dict[str, dict[str, float]], title: str) -> None:
    """Horizontal bars of the MSE increase per column, largest on top, std as error bars."""
    names = list(importance)[::-1]
    fig = Figure(figsize=(8.0, max(2.5, 0.35 * len(names) + 1.2)), dpi=DPI)
    ax = fig.add_subplot()
    ax.barh(
        names,
        [importance[n]["mean"] for n in names],
        xerr=[importance[n]["std"] for n in names],
        color="tab:blue",
        alpha=0.8,
        capsize=3,
    )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("increase in MSE when the column is shuffled (target units)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    longest = max((len(n) for n in names), default=1)
    fig.subplots_adjust(left=min(0.45, 0.04 + 0.012 * longest), right=0.97, top=0.9, bottom=0.15)
    _save(fig, path)


def fit_figures(name: str, actual: np.ndarray, predicted: np.ndarray) -> tuple[Figure, Figure]:
    """Predicted against actual with the y = x line, and a histogram of the residuals."""
    fit = Figure(figsize=(6.0, 6.0), dpi=DPI)
    ax = fit.add_subplot()
    ax.scatter(actual, predicted, s=10, alpha=0.5, color="tab:blue", edgecolors="none")
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="y = x")
    ax.set_xlabel(f"actual {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"{name}: predicted against actual ({len(actual)} rows)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    residuals = predicted - actual
    hist = Figure(figsize=SIZE, dpi=DPI)
    bx = hist.add_subplot()
    bx.hist(residuals, bins=min(50, max(5, len(residuals) // 10)), color="tab:blue", alpha=0.8)
    bx.axvline(0, color="tab:red", linewidth=1)
    bx.set_xlabel(f"residual: predicted - actual {name}")
    bx.set_ylabel("rows")
    bx.set_title(
        f"{name}: residuals, mean {residuals.mean():.4g}, std {residuals.std():.4g}", fontsize="medium"
    )
    bx.grid(True, alpha=0.3)
    return fit, hist


def write_fit_plots(
    folder: Path, names: Sequence[str], actual: np.ndarray, predicted: np.ndarray
) -> list[Path]:
    """`eval --plot DIR`: <target>_fit.png and <target>_residuals.png per target."""
    written = []
    for j, name in enumerate(names):
        fit, hist = fit_figures(name, actual[:, j], predicted[:, j])
        for figure, suffix in ((fit, "fit"), (hist, "residuals")):
            path = folder / f"{_file_name(name)}_{suffix}.png"
            _save(figure, path)
            written.append(path)
    return written


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "target"


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # Agg, the non-interactive default for a bare Figure
    fsio.write_bytes(path, buffer.getvalue())
