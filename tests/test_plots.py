"""What a person sees in the pictures: every label inside the canvas, tick labels apart, the
legend over no curve, the loss named with its reduction and units, log-sampled keys on log axes.

Checks are on what matplotlib draws (window extents of the texts it renders), not on pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from mse_train.config.schema import SweepRange
from mse_train.outputs import metrics, plots

from conftest import write_config


def drawn_texts(fig: Figure) -> list[tuple[Text, Bbox]]:
    """Every non-empty text matplotlib renders when it draws `fig`, with its box in pixels."""
    canvas = FigureCanvasAgg(fig)
    drawn: list[tuple[Text, Bbox]] = []
    original = Text.draw

    def spy(self: Text, renderer: Any) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, self.get_window_extent(renderer)))

    with mock.patch.object(Text, "draw", spy):
        canvas.draw()
    return drawn


def _overlap(a: Bbox, b: Bbox) -> bool:
    return bool(a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5)


def check_readable(fig: Figure) -> list[tuple[Text, Bbox]]:
    """Every text inside the canvas; the tick labels of each axis clear of each other."""
    texts = drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    outside = [
        (t.get_text(), tuple(round(v) for v in box.extents))
        for t, box in texts
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5
    ]
    assert not outside, f"cut off at the edge of the {width:.0f}x{height:.0f} canvas: {outside}"
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            mine = {id(label) for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                    for label in (tick.label1, tick.label2)}  # fmt: skip
            labels = [(t, box) for t, box in texts if id(t) in mine]
            clashes = [
                (a.get_text(), b.get_text())
                for i, (a, box_a) in enumerate(labels)
                for b, box_b in labels[i + 1 :]
                if _overlap(box_a, box_b)
            ]
            assert not clashes, f"tick labels of {axis.axis_name} print over each other: {clashes}"
    return texts


def legends(fig: Figure) -> list[Any]:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def hidden_points(fig: Figure) -> list[str]:
    """The curves (lr included) with a data point under a legend."""
    drawn_texts(fig)  # lay it out
    boxes = [legend.get_window_extent() for legend in legends(fig)]
    hidden = []
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
            xy = xy[np.isfinite(xy).all(axis=1)]
            if any(box.contains(x, y) for box in boxes for x, y in xy):
                hidden.append(str(line.get_label()))
    return hidden


def history(losses: list[float], lrs: list[float] | None = None, val: bool = True) -> list[dict[str, Any]]:
    rows = []
    for i, (loss, lr) in enumerate(zip(losses, lrs or [0.01] * len(losses), strict=True)):
        rows.append({"epoch": i + 1, "train_loss": loss, "lr": lr,
                     "val_loss": loss * 1.1 if val else None,
                     "train_end_loss": None if val else loss * 0.9})  # fmt: skip
    return rows


def stepped(n: int = 65) -> list[dict[str, Any]]:
    """Like configs/diabetes.yaml: loss within a decade (0.35-0.8), lr halved at epoch 50."""
    losses = [0.35 + 0.45 * math.exp(-i / 15) for i in range(n)]
    return history(losses, [0.01 if i < 50 else 0.005 for i in range(n)])


HISTORIES = {
    "under a decade": stepped(),
    "many decades, 3000 epochs": history([30 * 0.995**i for i in range(3000)], val=False),
    "one epoch": history([0.8]),
    "two epochs, a constant loss": history([0.5, 0.5]),
    "a narrow band": history([0.62 + 0.01 * math.sin(i) for i in range(40)]),
}


@pytest.mark.parametrize("name", list(HISTORIES))
def test_loss_png_keeps_every_label_inside_and_apart(name):
    label = metrics.loss_label("sum", "standardised targets")
    texts = check_readable(plots.loss_figure(HISTORIES[name], 1, label))
    assert any(t.get_text().replace("\n", " ") == label for t, _ in texts)


def test_a_loss_under_a_decade_is_labelled_in_plain_numbers():
    fig = plots.loss_figure(stepped(), 25, "loss")
    texts = drawn_texts(fig)
    axis = fig.axes[0].yaxis
    mine = {id(tick.label1) for tick in axis.get_major_ticks() + axis.get_minor_ticks()}
    labels = [t.get_text() for t, _ in texts if id(t) in mine]
    assert "0.5" in labels and "0.4" in labels  # not 5×10⁻¹, 4×10⁻¹
    assert not [label for label in labels if "times" in label or "^" in label]


def _drawn_tick_labels(fig: Figure, axis: Any) -> list[str]:
    texts = drawn_texts(fig)
    mine = {id(tick.label1) for tick in axis.get_major_ticks() + axis.get_minor_ticks()}
    mine |= {id(tick.label2) for tick in axis.get_major_ticks() + axis.get_minor_ticks()}
    return [t.get_text() for t, _ in texts if id(t) in mine]


def test_log_axes_are_labelled_in_plain_text_not_mathtext():
    """Decades read 10⁻¹, 10⁰, 10¹, on the ticks matplotlib labels, in plain text: the first
    mathtext label of a process builds matplotlib's math parser, a good part of what drawing
    a small run's loss.png costs."""
    losses, lrs = [30 * 0.9**i for i in range(60)], [1e-2 * 0.95**i for i in range(60)]
    fig = plots.loss_figure(history(losses, lrs), 1, "loss")
    loss_labels = _drawn_tick_labels(fig, fig.axes[0].yaxis)
    assert {"10⁻¹", "10⁰", "10¹"} <= set(loss_labels), loss_labels
    lr_labels = _drawn_tick_labels(fig, fig.axes[1].yaxis)
    assert {"10⁻³", "10⁻²"} <= set(lr_labels), lr_labels
    assert not [label for label in loss_labels + lr_labels if "$" in label or "mathdefault" in label]


def test_loss_png_legend_covers_no_curve():
    fig = plots.loss_figure(stepped(), 25, metrics.loss_label("mean", "standardised targets"))
    assert legends(fig)
    assert hidden_points(fig) == []


def test_one_epoch_is_drawn_and_epochs_are_whole():
    fig = plots.loss_figure(history([0.8]), 1, "loss")
    drawn_texts(fig)
    ax = fig.axes[0]
    assert all(line.get_marker() == "o" for line in ax.get_lines() if line.get_label() != "best (epoch 1)")
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize(
    ("reduction", "units", "words"),
    [("mean", "standardised targets", "MSE, standardised targets"),
     ("sum", "target units", "squared error summed over rows, target units"),
     (None, None, "units unknown")],
)  # fmt: skip
def test_the_loss_label_names_the_reduction_and_units(reduction, units, words):
    assert words in metrics.loss_label(reduction, units)


class Saved:
    """The figures the CLI saves, by file name (plots._save spied on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.figures: dict[str, Figure] = {}
        original = plots._save

        def spy(fig: Figure, path: Path) -> None:
            self.figures[path.name] = fig
            original(fig, path)

        monkeypatch.setattr(plots, "_save", spy)

    def ylabels(self, name: str) -> list[str]:
        return [ax.get_ylabel().replace("\n", " ") for ax in self.figures[name].axes if ax.get_ylabel()]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> Saved:
    return Saved(monkeypatch)


def train(cli: Any, small_config: Any, folder: Path, reduction: str, standardize: bool) -> None:
    cfg = small_config(
        f"{folder.name}.yaml",
        loss={"reduction": reduction},
        data={"standardize": standardize},
        output={"dir": str(folder), "plot": True},
        train={"epochs": 3},
    )
    result = cli("run", cfg, "-q")
    assert result.code == 0, result


def test_loss_png_names_the_runs_reduction_and_units(cli, small_config, tmp_path, saved):
    train(cli, small_config, tmp_path / "summed", "sum", False)
    assert saved.ylabels("loss.png")[0] == "loss: squared error summed over rows, target units"
    saved.figures.clear()
    redrawn = cli("plot", tmp_path / "summed", "-o", tmp_path / "again.png")  # from config.yaml
    assert redrawn.code == 0, redrawn
    assert saved.ylabels("again.png")[0] == "loss: squared error summed over rows, target units"


def test_plot_of_runs_in_different_units_draws_one_panel_per_unit(cli, small_config, tmp_path, saved):
    train(cli, small_config, tmp_path / "mean_a", "mean", True)
    train(cli, small_config, tmp_path / "mean_b", "mean", True)
    train(cli, small_config, tmp_path / "summed", "sum", False)
    same = cli("plot", tmp_path / "mean_a", tmp_path / "mean_b", "-o", tmp_path / "same.png")
    assert same.code == 0, same
    assert "units" not in same.stderr
    assert saved.ylabels("same.png") == ["loss: MSE, standardised targets"]
    mixed = cli("plot", tmp_path / "mean_a", tmp_path / "summed", "-o", tmp_path / "mixed.png")
    assert mixed.code == 0, mixed
    note = " ".join(mixed.stderr.split())
    assert "2 different units" in note and "one panel per unit" in note
    assert "mean_a: loss: MSE, standardised targets" in note
    assert "summed: loss: squared error summed over rows, target units" in note
    assert saved.ylabels("mixed.png") == [
        "loss: MSE, standardised targets",
        "loss: squared error summed over rows, target units",
    ]
    check_readable(saved.figures["mixed.png"])
    assert hidden_points(saved.figures["mixed.png"]) == []


def test_a_run_without_config_yaml_is_plotted_in_unknown_units(cli, small_config, tmp_path, saved):
    train(cli, small_config, tmp_path / "r", "mean", True)
    (tmp_path / "r" / "config.yaml").unlink()
    result = cli("plot", tmp_path / "r", "-o", tmp_path / "r.png")
    assert result.code == 0, result
    assert saved.ylabels("r.png")[0] == "loss (units unknown)"


# ------------------------------------------------------------------------- sweep.png
LR = SweepRange(low=1e-4, high=3e-2, log=True)
SPACE: dict[str, Any] = {
    "model.type": ["linear", "mlp"],
    "model.hidden": [[16], [32], [64, 64]],
    "model.dropout": SweepRange(low=0.0, high=0.3),
    "optimizer.lr": LR,
    "regularization.l2": [0.0, 1.0e-4, 1.0e-3, 1.0e-2],
    "a_rather_long_swept_key.with_a_long_dotted_name_inside_it": SweepRange(low=1, high=64, integer=True),
}


def sweep_rows(lrs: list[float]) -> list[dict[str, Any]]:
    """Trials as the leaderboard holds them (choices that are lists as their JSON text)."""
    rows = []
    for i, lr in enumerate(lrs):
        rows.append({"trial": i, "model.type": ["linear", "mlp"][i % 2],
                     "model.hidden": ["[16]", "[64, 64]"][i % 2], "model.dropout": 0.03 * i,
                     "optimizer.lr": lr, "regularization.l2": [0.0, 1e-4, 1e-3, 1e-2][i % 4],
                     "a_rather_long_swept_key.with_a_long_dotted_name_inside_it": 1 + 7 * i,
                     "score_mean": 3000.0 + 300 * i})  # fmt: skip
    return rows


# 8 draws from lr's range (1e-4 to 3e-2 on a log scale) that span 79x: on a linear axis
# the ticks 0.0000, 0.0025, ..., 0.0125 printed over each other.
LRS = [0.001483, 0.009588, 0.003914, 0.002474, 0.014281, 0.000308, 0.000181, 0.000945]


@pytest.mark.parametrize("with_space", [True, False], ids=["with the space", "keys alone"])
def test_sweep_png_keeps_every_label_inside_and_apart(with_space):
    keys = SPACE if with_space else list(SPACE)
    check_readable(plots.sweep_figure(sweep_rows(LRS), keys, best=1))


def test_a_log_sampled_key_gets_a_log_axis_over_its_range():
    fig = plots.sweep_figure(sweep_rows(LRS), SPACE, best=1)
    drawn_texts(fig)
    by_key = {ax.get_xlabel().replace("\n", ""): ax for ax in fig.axes}
    lr = by_key["optimizer.lr"]
    assert lr.get_xscale() == "log"
    low, high = lr.get_xlim()
    assert low < LR.low and high > LR.high  # the whole range searched is in view
    assert by_key["model.dropout"].get_xscale() == "linear"


def test_choices_get_one_slot_each_in_the_order_written():
    fig = plots.sweep_figure(sweep_rows(LRS), SPACE, best=1)
    drawn_texts(fig)
    by_key = {ax.get_xlabel(): ax for ax in fig.axes}
    l2 = [t.get_text() for t in by_key["regularization.l2"].get_xticklabels()]
    assert l2 == ["0", "0.0001", "0.001", "0.01"]
    hidden = [t.get_text() for t in by_key["model.hidden"].get_xticklabels()]
    assert hidden == ["[16]", "[32]", "[64, 64]"]  # [32] was never tried: its slot stays


def test_sweep_png_of_a_real_sweep_has_the_log_axis(cli, table, tmp_path, saved):
    # lr's range spans 50x: from the values alone (under 100x) the axis would be linear
    config = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.25},
        "train": {"epochs": 2},
        "output": {"dir": str(tmp_path / "sweep"), "plot": False},
        "sweep": {"method": "random", "trials": 3, "refit": False,
                  "params": {"optimizer.lr": {"low": 0.001, "high": 0.05, "log": True},
                             "regularization.l2": [0.0, 0.001]}},
    }  # fmt: skip
    result = cli("sweep", write_config(tmp_path / "s.yaml", config), "-q")
    assert result.code == 0, result
    fig = saved.figures["sweep.png"]
    check_readable(fig)
    assert {ax.get_xlabel(): ax.get_xscale() for ax in fig.axes} == {
        "optimizer.lr": "log",
        "regularization.l2": "linear",
    }


# ------------------------------------------------------- eval --plot, explain
LONG = "annual revenue of the customer account in euros after tax and discounts (forecast) " * 2


@pytest.mark.parametrize("name", ["y", LONG, LONG.replace(" ", "_")])
def test_fit_and_residual_pngs_keep_long_names_inside(name):
    rng = np.random.default_rng(0)
    actual = rng.normal(size=3000) * 1e6
    for fig in plots.fit_figures(name, actual, actual + rng.normal(size=3000) * 1e5):
        check_readable(fig)


def test_importance_png_keeps_long_column_names_inside():
    importance = {LONG.replace(" ", "_"): {"mean": 5.0, "std": 0.5}, "x": {"mean": 1.0, "std": 0.1}}
    check_readable(plots.importance_figure(importance, f"best.pt on {LONG}.csv"))
