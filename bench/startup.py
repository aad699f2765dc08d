"""Start-up: a 1-epoch run on a tiny table against `python -c 'import torch'`, whole processes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/startup.py [--repeats 7] [--write]

Times three commands, each a fresh process, interleaved in one loop (A, B, C, A, B, C, ...)
so that a change in the machine's load falls on all of them alike:

- A: `python -c 'import torch'`, the floor any torch program pays;
- B: `mse-train run configs/linear.yaml --set train.epochs=1 -o <fresh folder>` (3 rows);
- C: `mse-train --help`;
- D: `import torch` and one `torch.optim.SGD`, as torch ships it: the floor of a program
  that builds a torch optimizer, which imports `torch._dynamo` (`Optimizer.add_param_group`
  is wrapped in `torch._disable_dynamo`, and `step` imports it too). mse-train's runs that
  the stack trains skip that import (training/optimizers.py, `_eager_only`);
- E: `import torch`, `pandas` and `matplotlib.figure`, the libraries `run` reads the CSV and
  draws `loss.png` with: B - E is what mse-train itself adds;
- F: B with `--set output.plot=false`: B - F is what drawing `loss.png` costs;
- G: B with MSE_TRAIN_DRAWER=0: `loss.png` drawn in the command's process after training,
  as before outputs/drawer.py; B draws it in a process beside the command, which imports
  matplotlib and draws a first figure while the command imports torch and trains. G / B is
  what that buys, A/B in one run. (Until 2026-12-07 G was B with `torch._dynamo` imported
  first, which measured what `_eager_only` buys: bench/results.md.)
- H: B through `app()` instead of the console script's `main()`: the same command, ending
  with Python's interpreter teardown, which `main` skips once torch is loaded (cli/app.py
  `_exit_quickly`). H / B is what skipping it buys.

The data cache lives in a temporary folder, warmed by one untimed run, so B times a
second run of the table as a user sees it. Prints medians, the ratio B / A (issue 23's
target: 1.6x) and the load average before and after; `--write` also writes
bench/startup_results.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPTIM = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"
LIBRARIES = "import torch, pandas, matplotlib.figure"
THROUGH_APP = "import sys; from mse_train.cli.app import app; sys.argv[0] = 'mse-train'; app()"


def _mse_train() -> list[str]:
    script = Path(sys.executable).parent / "mse-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mse_train"]


def _time(command: list[str], env: dict[str, str]) -> float:
    if command[0] == "MSE_TRAIN_DRAWER=0":
        env, command = {**env, "MSE_TRAIN_DRAWER": "0"}, command[1:]
    start = time.perf_counter()
    quiet = subprocess.DEVNULL
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=quiet, stderr=quiet)
    return time.perf_counter() - start


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="also write bench/startup_results.md")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="mse-train-startup-"))
    env = {**os.environ, "MSE_TRAIN_CACHE_DIR": str(scratch / "cache")}
    run = [*_mse_train(), "run", "configs/linear.yaml", "--set", "train.epochs=1"]
    no_plot = [*run, "--set", "output.plot=false"]
    commands: dict[str, Callable[[int], list[str]]] = {
        "python -c 'import torch'": lambda i: [sys.executable, "-c", "import torch"],
        "mse-train run configs/linear.yaml --set train.epochs=1": lambda i: [*run, "-o", f"{scratch}/run{i}"],
        "mse-train --help": lambda i: [*_mse_train(), "--help"],
        "the run, --set output.plot=false": lambda i: [*no_plot, "-o", f"{scratch}/noplot{i}"],
        "python -c <import torch; torch.optim.SGD(...)>": lambda i: [sys.executable, "-c", OPTIM],
        "python -c <import torch, pandas, matplotlib.figure>": lambda i: [sys.executable, "-c", LIBRARIES],
        "the run through app(), ending with Python's teardown": lambda i: [
            sys.executable,
            "-c",
            THROUGH_APP,
            *run[len(_mse_train()) :],
            "-o",
            f"{scratch}/app{i}",
        ],
        "MSE_TRAIN_DRAWER=0 (loss.png drawn in the command)": lambda i: [
            "MSE_TRAIN_DRAWER=0",
            *run,
            "-o",
            f"{scratch}/inside{i}",
        ],
    }
    try:
        # Fills the data cache and brings the files into the page cache.
        _time([*run, "-o", str(scratch / "warm")], env)
        load_before = _loadavg()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.repeats):
            for name, command in commands.items():
                times[name].append(_time(command(i), env))
        load_after = _loadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s, run_s, help_s, no_plot_s, optim_s, libraries_s, teardown_s, inside_s = medians.values()
    lines = [
        f"Whole processes, median of {args.repeats}, interleaved;"
        f" OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')};"
        f" load average {load_before} before, {load_after} after.",
        "",
        "| command | median s | min s | max s |",
        "|---|---:|---:|---:|",
        *(
            f"| `{name}` | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} |"
            for name, values in times.items()
        ),
        "",
        f"run / import torch: **{run_s / torch_s:.2f}x** (target 1.6x); with loss.png drawn in the"
        f" command: {inside_s / torch_s:.2f}x, **{inside_s / run_s:.2f}x** the run; with Python's"
        f" teardown: {teardown_s / torch_s:.2f}x, **{teardown_s / run_s:.2f}x** the run;"
        f" torch + one stock optimizer / import torch: {optim_s / torch_s:.2f}x;"
        f" torch, pandas and matplotlib: {libraries_s / torch_s:.2f}x;"
        f" run / those libraries: {run_s / libraries_s:.2f}x; loss.png: {run_s - no_plot_s:.2f} s;"
        f" --help: {help_s * 1000:.0f} ms.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        out = REPO / "bench" / "startup_results.md"
        out.write_text(f"# Start-up (bench/startup.py)\n\n{text}\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
