"""loss.png for a run, overlays of several runs (`mse-train plot`), a sweep's sweep.png, the
importance chart of `explain` and the fit plots of `eval --plot`."""

from __future__ import annotations

import io
import json
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

# The Figure API renders with Agg and never opens a window; skipping pyplot saves import time.
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from mse_train.outputs import fsio

SIZE = (8.0, 5.0)  # inches; at DPI 100 -> 800 x 500 pixels
DPI = 100
# Constrained layout sizes the axes around their labels, tick labels and outside legends, so
# nothing is cut off whatever the numbers look like (it costs one extra layout pass per save).
LAYOUT: Final = "constrained"
MARKED_EPOCHS = 20  # up to this many epochs each one gets a dot: one epoch is a dot, not nothing
WRAP = 60  # characters per line of a title or a label built from a (column) name


def _positive(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) and f > 0 else math.nan)
    return out


_PLAIN = FuncFormatter(lambda value, _: f"{value:.3g}")


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_MATHTEXT = re.compile(r"\$\\mathdefault\{(.*)\}\$")


class _LogLabels(LogFormatterSciNotation):
    """matplotlib's own log-axis labels (the same ticks labelled, the same numbers) written
    as plain text, 10⁻² and 2×10⁻¹, instead of mathtext ($10^{-2}$): a process's first
    mathtext label builds matplotlib's math parser, about a third of what drawing a small
    run's loss.png costs (bench/startup.py)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = str(super().__call__(x, pos))
        found = _MATHTEXT.fullmatch(label)
        if found is None:
            return label
        plain = found.group(1).replace("\\times", "×")
        return re.sub(r"\^\{(-?\d+)\}", lambda power: power.group(1).translate(_SUPERSCRIPT), plain)


def _log_scale(ax: Axes, which: str) -> None:
    """A log axis (call it once the data are drawn); one whose view spans under a decade is
    labelled 0.4, 0.5, 0.6 rather than 4×10⁻¹: no decade is in view there to label, and at
    most 8 minor ticks and one decade are, all labelled."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    for formatter, replace in (
        (axis.get_major_formatter(), axis.set_major_formatter),
        (axis.get_minor_formatter(), axis.set_minor_formatter),
    ):
        if type(formatter) is LogFormatterSciNotation:  # the log scale's own: as plain text
            replace(_LogLabels(labelOnlyBase=formatter.labelOnlyBase))
    low, high = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    if low > 0 and high / low < 10:
        axis.set_major_formatter(_PLAIN)
        if which == "y":
            axis.set_minor_formatter(_PLAIN)
        else:  # side by side, 8 labels collide: 1, 2 and 5 times a power of ten
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_minor_formatter(NullFormatter())


def _wrap(text: str, width: int = WRAP) -> str:
    """Break a long title or label into lines (names without spaces too)."""
    return textwrap.fill(text, width, break_long_words=True, break_on_hyphens=False)


def _draw_losses(ax: Axes, history: Sequence[dict[str, Any]], name: str = "", color: str = "") -> None:
    """train (solid), val (dashed when a colour is shared) and end-of-epoch train loss."""
    epochs = [int(r["epoch"]) for r in history]
    marker = "o" if len(epochs) <= MARKED_EPOCHS else None
    prefix = f"{name} " if name else ""
    series = [("train_loss", "train loss", color or "tab:blue", "-")]
    series.append(("val_loss", "val loss", color or "tab:orange", "--" if color else "-"))
    if not color:
        series.append(("train_end_loss", "train loss, end of epoch", "tab:purple", "-"))
    for key, label, line_color, style in series:
        values = _positive([r.get(key) for r in history])
        if key == "train_loss" or any(math.isfinite(v) for v in values):
            ax.plot(
                epochs, values, label=prefix + label, color=line_color, linestyle=style, marker=marker, ms=3
            )


def _epoch_axis(ax: Axes, epochs: Sequence[int]) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # no epoch 1.25
    if epochs and max(epochs) - min(epochs) < 2:  # one or two epochs: whole numbers around them
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)


def write_loss_plot(
    path: Path, history: Sequence[dict[str, Any]], best_epoch: int, ylabel: str = "loss (units unknown)"
) -> None:
    """loss.png: `loss_figure`."""
    _save(loss_figure(history, best_epoch, ylabel), path)


def loss_figure(history: Sequence[dict[str, Any]], best_epoch: int, ylabel: str) -> Figure:
    """Train and val loss per epoch on a log scale, lr on a second axis, best epoch marked;
    `ylabel` names the loss and its units (`metrics.loss_label`)."""
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=SIZE, dpi=DPI, layout=LAYOUT)
    ax = fig.add_subplot()
    _draw_losses(ax, history)
    _log_scale(ax, "y")
    if best_epoch:
        ax.axvline(
            best_epoch, color="tab:green", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})"
        )
    _epoch_axis(ax, epochs)
    ax.set_ylabel(_wrap(ylabel))
    ax.grid(True, which="both", alpha=0.3)
    lr_ax = ax.twinx()
    lrs = [float(r["lr"]) for r in history]
    marker = "o" if len(epochs) <= MARKED_EPOCHS else None
    lr_ax.plot(epochs, lrs, color="tab:gray", linestyle=":", marker=marker, ms=3, label="lr")
    lr_ax.set_ylabel("learning rate")
    if min(lrs) > 0:
        _log_scale(lr_ax, "y")
    handles, labels = ax.get_legend_handles_labels()
    lr_handles, lr_labels = lr_ax.get_legend_handles_labels()
    # Above the axes: inside them a legend always covers some curve (the lr's, the val's).
    fig.legend(
        handles + lr_handles,
        labels + lr_labels,
        loc="outside upper center",
        ncols=len(handles + lr_handles),
        fontsize="small",
        frameon=False,
    )
    return fig


Run = tuple[str, Sequence[dict[str, Any]], str]  # name, metrics.csv rows, `metrics.loss_label`


def write_comparison(path: Path, runs: Sequence[Run]) -> None:
    """compare.png: `comparison_figure`."""
    _save(comparison_figure(runs), path)


def comparison_figure(runs: Sequence[Run]) -> Figure:
    """Overlay the loss curves of several runs (name, history, `metrics.loss_label`): solid train,
    dashed val. Runs whose losses are in different units (a summed loss, standardised
    targets) are not comparable on one axis: each unit gets its own panel."""
    panels: dict[str, list[tuple[int, str, Sequence[dict[str, Any]]]]] = {}
    for index, (name, history, label) in enumerate(runs):
        panels.setdefault(label, []).append((index, name, history))
    fig = Figure(figsize=(SIZE[0], SIZE[1] + 3.0 * (len(panels) - 1)), dpi=DPI, layout=LAYOUT)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, members) in zip(axes, panels.items(), strict=True):
        for index, name, history in members:
            _draw_losses(ax, history, _wrap(name, 30), f"C{index % 10}")
        _log_scale(ax, "y")
        ax.set_ylabel(_wrap(label, 40))
        ax.grid(True, which="both", alpha=0.3)
        # Beside the axes, so that no curve is hidden however many runs there are.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    _epoch_axis(axes[-1], [int(r["epoch"]) for _, history, _ in runs for r in history])
    return fig


def _text(value: Any) -> str:
    """A swept value as the leaderboard shows it (a float in its shortest form)."""
    if isinstance(value, float):
        return f"{value:g}"
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return str(value)


def write_sweep_plot(
    path: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str] | Mapping[str, Any], best: int
) -> None:
    """sweep.png: `sweep_figure`."""
    _save(sweep_figure(rows, keys, best), path)


def sweep_figure(
    rows: Sequence[dict[str, Any]], keys: Sequence[str] | Mapping[str, Any], best: int
) -> Figure:
    """Score against each swept key, one panel per key; the best trial in red.

    `keys` may map each key to its `sweep.params` entry: a list of choices gets one slot
    per choice in the order written, a range its declared extent, on a log axis when it
    is sampled on a log scale. Without it the values alone decide.
    """
    specs: Mapping[str, Any] = keys if isinstance(keys, Mapping) else dict.fromkeys(keys)
    scored = [r for r in rows if r.get("score_mean") is not None]
    columns = min(3, max(1, len(specs)))
    panels = max(1, math.ceil(len(specs) / columns))
    fig = Figure(figsize=(4.0 * columns, 3.2 * panels), dpi=DPI, layout=LAYOUT)
    for index, (key, spec) in enumerate(specs.items()):
        ax = fig.add_subplot(panels, columns, index + 1)
        pairs = [
            (r[key], float(r["score_mean"]), r["trial"] == best) for r in scored if r.get(key) is not None
        ]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _, _ in pairs)
        if isinstance(spec, list) or not numeric:  # choices: one slot each
            labels = list(dict.fromkeys(_text(v) for v in (spec if isinstance(spec, list) else [])))
            labels += [t for t in dict.fromkeys(_text(v) for v, _, _ in pairs) if t not in labels]
            xs = [float(labels.index(_text(v))) for v, _, _ in pairs]
            ax.set_xticks(range(len(labels)), [_wrap(t, 12) for t in labels], fontsize="small")
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs = [float(v) for v, _, _ in pairs]
            _range_axis(ax, spec, xs)
        ys = [y for _, y, _ in pairs]
        ax.scatter(xs, ys, s=18, color="tab:blue", alpha=0.7)
        ax.scatter(
            [x for x, p in zip(xs, pairs, strict=True) if p[2]],
            [p[1] for p in pairs if p[2]],
            s=60,
            color="tab:red",
            label=f"best (trial {best})",
        )
        if ys and min(ys) > 0 and max(ys) / min(ys) > 100:  # diverging trials next to good ones
            _log_scale(ax, "y")
        ax.set_xlabel(_wrap(key, 40), fontsize="small")
        ax.set_ylabel("score: val MSE, target units", fontsize="small")
        ax.tick_params(labelsize="small")
        ax.grid(True, alpha=0.3)
        if index == 0:  # above the panels, where it hides no trial
            fig.legend(loc="outside upper center", fontsize="small", frameon=False)
    return fig


def _range_axis(ax: Axes, spec: Any, xs: Sequence[float]) -> None:
    """A numeric key's axis: log when the range is sampled on a log scale (or, with no range
    given, when positive values span more than 100x), the range's extent, few ticks."""
    positive = bool(xs) and min(xs) > 0
    log = bool(spec.log) if spec is not None else positive and max(xs) / min(xs) > 100
    if spec is not None and spec.high > spec.low:  # the whole range searched, 5% either side
        low, high = float(spec.low), float(spec.high)
        pad = (high / low) ** 0.05 if log else (high - low) * 0.05
        ax.set_xlim(low / pad, high * pad) if log else ax.set_xlim(low - pad, high + pad)
    if log:
        ax.xaxis.set_major_locator(LogLocator(numticks=4))  # a panel is narrow: few decades
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2×10⁻³, 3×10⁻³ ... would collide
        _log_scale(ax, "x")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=bool(getattr(spec, "integer", False))))


def write_importance_plot(path: Path, importance: dict[str, dict[str, float]], title: str) -> None:
    """`explain`'s chart: `importance_figure`."""
    _save(importance_figure(importance, title), path)


def importance_figure(importance: dict[str, dict[str, float]], title: str) -> Figure:
    """Horizontal bars of the MSE increase per column, largest on top, std as error bars."""
    names = list(importance)[::-1]
    fig = Figure(figsize=(8.0, max(2.5, 0.35 * len(names) + 1.2)), dpi=DPI, layout=LAYOUT)
    ax = fig.add_subplot()
    ax.barh(
        range(len(names)),
        [importance[n]["mean"] for n in names],
        xerr=[importance[n]["std"] for n in names],
        color="tab:blue",
        alpha=0.8,
        capsize=3,
    )
    ax.set_yticks(range(len(names)), [_wrap(n, 30) for n in names])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("increase in MSE when the column is shuffled (target units)")
    fig.suptitle(_wrap(title, 90), fontsize="medium")  # over the figure: long names push the axes right
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def fit_figures(name: str, actual: np.ndarray, predicted: np.ndarray) -> tuple[Figure, Figure]:
    """Predicted against actual with the y = x line, and a histogram of the residuals."""
    fit = Figure(figsize=(6.0, 6.0), dpi=DPI, layout=LAYOUT)
    ax = fit.add_subplot()
    ax.scatter(actual, predicted, s=10, alpha=0.5, color="tab:blue", edgecolors="none")
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="y = x")
    ax.set_xlabel(_wrap(f"actual {name}", 50))
    ax.set_ylabel(_wrap(f"predicted {name}", 50))
    ax.set_title(_wrap(f"{name}: predicted against actual ({len(actual)} rows)", 50), fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    residuals = predicted - actual
    hist = Figure(figsize=SIZE, dpi=DPI, layout=LAYOUT)
    bx = hist.add_subplot()
    bx.hist(residuals, bins=min(50, max(5, len(residuals) // 10)), color="tab:blue", alpha=0.8)
    bx.axvline(0, color="tab:red", linewidth=1)
    bx.set_xlabel(_wrap(f"residual: predicted - actual {name}", 70))
    bx.set_ylabel("rows")
    bx.set_title(
        _wrap(f"{name}: residuals, mean {residuals.mean():.4g}, std {residuals.std():.4g}", 70),
        fontsize="medium",
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
