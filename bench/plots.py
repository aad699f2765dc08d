"""What drawing loss.png costs at the end of every run, with the layout it uses and without.

    .venv/bin/python bench/plots.py            # prints a markdown table
    .venv/bin/python bench/plots.py --repeats 10

`constrained` is loss.png as written (matplotlib's constrained layout sizes the axes around
their labels: one extra layout pass per save); `fixed` is the same figure with the layout
engine removed (the figure keeps matplotlib's default margins, what fixed
`subplots_adjust` margins cost: no pass, and labels that may be cut off). Seconds per PNG
written to memory, the best of `--repeats`, for histories of several lengths.
"""

from __future__ import annotations

import argparse
import io
import os
import time

from matplotlib.figure import Figure

from mse_train.outputs import plots


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {"epoch": i + 1, "train_loss": 1 / (i + 1), "val_loss": 1.1 / (i + 1), "lr": 0.01 * 0.999**i}
        for i in range(epochs)
    ]


def seconds(epochs: int, layout: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fig: Figure = plots.loss_figure(history(epochs), 1, plots.loss_label("mean", "target units"))
        if not layout:
            fig.set_layout_engine("none")
        fig.savefig(io.BytesIO(), format="png")
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds(10, True, 1)  # warm up: fonts, the first figure
    print(f"load average {os.getloadavg()[0]:.2f}\n")
    print("| epochs | constrained (s) | fixed (s) | ratio |\n|---|---|---|---|")
    for epochs in (1, 200, 3000):
        laid_out, fixed = seconds(epochs, True, args.repeats), seconds(epochs, False, args.repeats)
        print(f"| {epochs} | {laid_out:.3f} | {fixed:.3f} | {laid_out / fixed:.2f}x |")


if __name__ == "__main__":
    main()
