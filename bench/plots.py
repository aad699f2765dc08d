"""What drawing loss.png costs at the end of every run, with the layout it uses and without.

    .venv/bin/python bench/plots.py            # prints a markdown table
    .venv/bin/python bench/plots.py --repeats 10
    .venv/bin/python bench/plots.py --first     # the first loss.png of a process: labels

`constrained` is loss.png as written (matplotlib's constrained layout sizes the axes around
their labels: one extra layout pass per save); `fixed` is the same figure with the layout
engine removed (the figure keeps matplotlib's default margins, what fixed
`subplots_adjust` margins cost: no pass, and labels that may be cut off). Seconds per PNG
written to memory, the best of `--repeats`, for histories of several lengths.

`--first` draws the first loss.png of a fresh process (imports not timed), as `run` does,
interleaved: `plain` as written (log-axis labels 10⁻² in plain text) against `mathtext`, the
same figure with matplotlib's own mathtext labels ($10^{-2}$) put back, whose first use in
a process builds matplotlib's math parser. Medians of `--repeats` processes.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time

from matplotlib.figure import Figure

from mse_train.outputs import metrics, plots


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {"epoch": i + 1, "train_loss": 1 / (i + 1), "val_loss": 1.1 / (i + 1), "lr": 0.01 * 0.999**i}
        for i in range(epochs)
    ]


def seconds(epochs: int, layout: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fig: Figure = plots.loss_figure(history(epochs), 1, metrics.loss_label("mean", "target units"))
        if not layout:
            fig.set_layout_engine("none")
        fig.savefig(io.BytesIO(), format="png")
        best = min(best, time.perf_counter() - start)
    return best


FIRST = """
import io, sys, time
from matplotlib.ticker import LogFormatterSciNotation
from mse_train.outputs import metrics, plots
history = [{"epoch": 1, "train_loss": 0.8, "val_loss": 0.9, "lr": 0.01}]
start = time.perf_counter()
fig = plots.loss_figure(history, 1, metrics.loss_label("mean", "target units"))
if sys.argv[1] == "mathtext":
    for axis in (ax.yaxis for ax in fig.axes):
        axis.set_major_formatter(LogFormatterSciNotation())
        axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False))
fig.savefig(io.BytesIO(), format="png")
print(time.perf_counter() - start)
"""


def first(repeats: int) -> None:
    """The first loss.png of a process, its labels in plain text against mathtext."""
    times: dict[str, list[float]] = {"plain": [], "mathtext": []}
    for _ in range(repeats):
        for variant, found in times.items():
            done = subprocess.run(
                [sys.executable, "-c", FIRST, variant], capture_output=True, text=True, check=True
            )
            found.append(float(done.stdout))
    plain, mathtext = statistics.median(times["plain"]), statistics.median(times["mathtext"])
    print(f"load average {os.getloadavg()[0]:.2f}; first loss.png of a process, median of {repeats}\n")
    print("| labels | seconds |\n|---|---|")
    print(f"| plain (as written) | {plain:.3f} |\n| mathtext (matplotlib's default) | {mathtext:.3f} |")
    print(f"\nmathtext costs {mathtext - plain:.3f} s more ({mathtext / plain:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--first", action="store_true", help="the first loss.png of a process, labels")
    args = parser.parse_args()
    if args.first:
        first(args.repeats)
        return
    seconds(10, True, 1)  # warm up: fonts, the first figure
    print(f"load average {os.getloadavg()[0]:.2f}\n")
    print("| epochs | constrained (s) | fixed (s) | ratio |\n|---|---|---|---|")
    for epochs in (1, 200, 3000):
        laid_out, fixed = seconds(epochs, True, args.repeats), seconds(epochs, False, args.repeats)
        print(f"| {epochs} | {laid_out:.3f} | {fixed:.3f} | {laid_out / fixed:.2f}x |")


if __name__ == "__main__":
    main()
