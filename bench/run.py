"""mse-train against the alternatives, side by side, in one run.

    .venv/bin/python bench/run.py                 # full sweep, writes bench/results.md
    .venv/bin/python bench/run.py --quick         # smaller sweep, prints only

Measures, on the same generated data, model (16 -> 64 -> 64 -> 1 MLP), optimizer (Adam,
lr 1e-3) and seed:
  1. mse-train's training loop, built and run as `mse-train run` builds and runs it;
  2. a bare loop: the same model and optimizer stepping over pre-sliced tensors;
  3. the idiomatic DataLoader(TensorDataset(X, y), batch_size=B, shuffle=True) loop;
  4. the machine's ceiling: float32 matmul GFLOP/s, and the share of it each loop reaches;
  5. end to end as whole processes: `mse-train run` on a 1M x 16 CSV, 3 epochs, batch
     1024, against bench/plain_script.py (pandas + DataLoader) doing the same;
plus CSV ingest against pandas.read_csv defaults, peak memory while loading, time per
epoch against rows, `mse-train --help` time, and L-BFGS against numpy.linalg.lstsq.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mse_train import config as config_module  # noqa: E402
from mse_train import recipe  # noqa: E402
from mse_train.config import schema, yamlio  # noqa: E402
from mse_train.data import prepare, preprocess  # noqa: E402
from mse_train.models import inference  # noqa: E402
from mse_train.training import optimizers  # noqa: E402

FEATURES = 16
HIDDEN = [64, 64]
LR = 1e-3
SEED = 0
TIME_CAP = 8.0  # seconds of stepping per measurement, so slow loops do not take all day
ROUNDS = 3  # each loop is measured this many times, interleaved with the others


# --------------------------------------------------------------------------- data
def make_arrays(rows: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    w = rng.standard_normal(FEATURES).astype(np.float32)
    y = (np.tanh(x @ w) + 0.1 * rng.standard_normal(rows).astype(np.float32)).reshape(-1, 1)
    return np.ascontiguousarray(x), np.ascontiguousarray(y.astype(np.float32))


def write_csv(path: Path, rows: int) -> None:
    x, y = make_arrays(rows)
    header = ",".join([f"x{i}" for i in range(FEATURES)] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.7g")


def base_config(train_csv: str, batch: int | None, epochs: int, out: str) -> dict[str, Any]:
    return {
        "seed": SEED,
        "data": {"train": train_csv, "target": "y"},
        "model": {"type": "mlp", "hidden": HIDDEN},
        "optimizer": {"name": "adam", "lr": LR},
        "train": {"epochs": epochs, "batch_size": batch, "device": "cpu"},
        "output": {"dir": out},
    }


# -------------------------------------------------------------------- the loops
def mse_train_loop(
    x: np.ndarray, y: np.ndarray, batch: int | None, epochs: int, shuffle: bool = True
) -> float:
    """Seconds for `epochs` epochs of mse-train's Loop, set up as `mse-train run` does."""
    settings = base_config("unused.csv", batch, epochs, "unused")
    settings["train"]["shuffle"] = shuffle
    doc = yamlio.Document(settings, {}, "bench")
    cfg = config_module.from_document(doc, ROOT)
    pre = preprocess.Preprocessor(
        [f"x{i}" for i in range(FEATURES)],
        [preprocess.NumericColumn(f"x{i}") for i in range(FEATURES)],
        [],
        [preprocess.TargetColumn("y")],
    )
    prepared = prepare.Prepared(prepare.Split(x, y), None, pre, {})
    loop = recipe.build_loop(cfg, prepared, torch.device("cpu"))
    started = time.perf_counter()
    loop.run(lambda record: None)
    return time.perf_counter() - started


def build_model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same model and the same optimizer (mse-train's choice of implementation) by hand."""
    torch.manual_seed(SEED)
    layers: list[torch.nn.Module] = []
    width = FEATURES
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    cfg = schema.AdamConfig(name="adam", lr=LR, weight_decay=0.0)
    return model, optimizers.build_optimizer(list(model.parameters()), cfg)


def bare_loop(x: np.ndarray, y: np.ndarray, batch: int | None, epochs: int) -> tuple[float, int]:
    """The in-process limit: pre-sliced tensors, nothing but the step."""
    model, optimizer = build_model_and_optimizer()
    loss_fn = torch.nn.MSELoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    size = batch or len(x)
    batches = [(xt[i : i + size], yt[i : i + size]) for i in range(0, len(x), size)]
    return _timed_steps(model, optimizer, loss_fn, lambda: batches, epochs)


def dataloader_loop(x: np.ndarray, y: np.ndarray, batch: int | None, epochs: int) -> tuple[float, int]:
    """What readers write by hand: DataLoader over a TensorDataset, reshuffled each epoch."""
    model, optimizer = build_model_and_optimizer()
    loss_fn = torch.nn.MSELoss()
    generator = torch.Generator().manual_seed(SEED)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=batch or len(x),
        shuffle=True,
        generator=generator,
    )
    return _timed_steps(model, optimizer, loss_fn, lambda: loader, epochs)


def _timed_steps(model: Any, optimizer: Any, loss_fn: Any, batches: Any, epochs: int) -> tuple[float, int]:
    """(seconds, rows seen); stops early after TIME_CAP seconds."""
    started = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for xb, yb in batches():
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(xb)
            if time.perf_counter() - started > TIME_CAP:
                return time.perf_counter() - started, seen
    return time.perf_counter() - started, seen


def scoring_pass_seconds(rows: int, repeats: int = 5) -> float:
    """One end-of-epoch scoring pass over `rows` training rows, as the loop runs it."""
    x, y = make_arrays(rows)
    model, _ = build_model_and_optimizer()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    inference.per_target_sse(model, xt, yt)  # warm up
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        inference.per_target_sse(model, xt, yt)
        best = min(best, time.perf_counter() - started)
    return best


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b  # warm up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def step_flops_per_row() -> float:
    """Forward + backward of the MLP: about 6 multiply-adds... counted as 2 FLOPs each."""
    sizes = [FEATURES, *HIDDEN, 1]
    macs = sum(a * b for a, b in itertools.pairwise(sizes))
    return 6.0 * macs  # 2 FLOPs per MAC forward, twice that backward


# ----------------------------------------------------------------- whole processes
def run_process(args: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a child process.

    Peak memory comes from GNU time: a child's own ru_maxrss on Linux starts from the
    parent's RSS at fork, which would charge this (large) benchmark process to it.
    """
    timer = ["/usr/bin/time", "-f", "PEAK_KB %M"] if Path("/usr/bin/time").exists() else []
    started = time.perf_counter()
    result = subprocess.run([*timer, *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    peaks = [line for line in result.stderr.splitlines() if line.startswith("PEAK_KB ")]
    peak = int(peaks[-1].split()[1]) / 1024 if peaks else float("nan")
    return wall, peak, result.stdout


def ingest_child(path: str, how: str) -> dict[str, float]:
    """Run in a child: load the CSV one way; report seconds and memory above the baseline."""
    import pandas as pd

    from mse_train.data import table

    baseline = _rss_hwm()
    started = time.perf_counter()
    if how == "pandas-default":
        frame = pd.read_csv(path)
        arrays_bytes = frame.memory_usage(index=False).sum()
    else:
        header = table.read_header(Path(path))
        loaded = table.read(Path(path), header)
        arrays_bytes = loaded.frame.memory_usage(index=False).sum()
    seconds = time.perf_counter() - started
    if how == "mse-train":
        loaded.hasher.result()  # the sha256 runs in the background after the parse; wait for it
    return {
        "seconds": seconds,
        "with_hash": time.perf_counter() - started,
        "peak_mib": (_rss_hwm() - baseline) / 1024,
        "arrays_mib": arrays_bytes / 2**20,
    }


def _rss_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------ report
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sweep, print only")
    args = parser.parse_args()
    rows_sweep = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    batches: list[int | None] = [64, 256, 1024, None]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say("# mse-train benchmark")
    say()
    say(f"Machine: {machine()}.")
    say()
    say(
        f"Command: `.venv/bin/python bench/run.py{' --quick' if args.quick else ''}` "
        f"({time.strftime('%Y-%m-%d')}). Model 16 -> 64 -> 64 -> 1 MLP, Adam lr 1e-3, seed 0, CPU."
    )
    say()

    gflops = matmul_gflops()
    flops_row = step_flops_per_row()
    say(
        f"## Ceiling\n\nfloat32 2048x2048 matmul: **{gflops:.1f} GFLOP/s**. One training row costs "
        f"~{flops_row:.0f} FLOP (forward + backward), so the ceiling is "
        f"~{gflops * 1e9 / flops_row / 1e6:.1f} M rows/s."
    )
    say()
    say("## Training loop: samples/s (higher is better), ratios from the same run")
    say()
    say(
        "| rows | batch | mse-train | bare loop | DataLoader | mse-train / bare "
        "| same, shuffle off / bare | mse-train / DataLoader | % of matmul peak |"
    )
    say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    epoch_time: dict[int, float] = {}
    bare_epoch: dict[tuple[int, int | None], float] = {}
    for rows in rows_sweep:
        x, y = make_arrays(rows)
        for batch in batches:
            # Enough epochs per measurement for ~0.1 s or more of stepping; full-batch steps
            # move tens of MB through the allocator and vary more, so they get more rounds.
            epochs = {10_000: 3, 100_000: 3}.get(rows, 1) * (10 if batch is None and rows < 1_000_000 else 1)
            rounds = ROUNDS + 2 if batch is None else ROUNDS
            mse_train_loop(x, y, batch, 1)  # warm up allocator and threads
            ours = fixed = bare = loader = 0.0
            for _ in range(rounds):  # interleaved; the best round of each, as timeit does
                ours_s = mse_train_loop(x, y, batch, epochs)
                ours = max(ours, rows * epochs / ours_s)
                fixed = max(fixed, rows * epochs / mse_train_loop(x, y, batch, epochs, shuffle=False))
                bare_s, bare_rows = bare_loop(x, y, batch, epochs)
                bare = max(bare, bare_rows / bare_s)
                dl_s, dl_rows = dataloader_loop(x, y, batch, epochs)
                loader = max(loader, dl_rows / dl_s)
            bare_epoch[(rows, batch)] = rows / bare
            if batch == 1024:
                epoch_time[rows] = rows / ours
            peak = ours * flops_row / (gflops * 1e9) * 100
            say(
                f"| {rows:,} | {batch or 'full'} | {ours:,.0f} | {bare:,.0f} | {loader:,.0f} | "
                f"{ours / bare:.2f}x | {fixed / bare:.2f}x | {ours / loader:.1f}x | {peak:.1f}% |"
            )
    say()
    say(
        "`run` trains this config as a stack of one (training/stack/: flat parameters, the "
        "backward pass written out, the activations' own backward kernels); the bare loop is the "
        "same model as a torch module with autograd. Where a step is per-operation overhead "
        "(small batches) the stack passes it; at batch 1024 and full batch the end-of-epoch "
        "score below is most of the gap."
    )
    say()
    say("## Where the gap to the bare loop goes: the end-of-epoch score")
    say()
    say(
        "None of the loops above has validation rows. Without them, mse-train scores the weights "
        "at the end of every epoch on all training rows (one forward pass, eval mode), so the "
        "loss that picks best.pt is the loss of the weights best.pt holds; the bare loop does no "
        "such pass. The pass on its own (`inference.per_target_sse`, best of 5), against a bare epoch:"
    )
    say()
    say(
        "| rows | scoring pass (s) | bare epoch, batch 1024 (s) | pass / epoch "
        "| bare epoch, full batch (s) | pass / epoch |"
    )
    say("|---:|---:|---:|---:|---:|---:|")
    for rows in rows_sweep:
        score = scoring_pass_seconds(rows)
        at_1024, full = bare_epoch[(rows, 1024)], bare_epoch[(rows, None)]
        say(
            f"| {rows:,} | {score:.4f} | {at_1024:.4f} | {score / at_1024:.0%} "
            f"| {full:.4f} | {score / full:.0%} |"
        )
    say()
    say("## Time per epoch against rows (mse-train, batch 1024)")
    say()
    say("| rows | seconds per epoch | microseconds per row |")
    say("|---:|---:|---:|")
    for rows, seconds in epoch_time.items():
        say(f"| {rows:,} | {seconds:.3f} | {seconds / rows * 1e6:.2f} |")
    say()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        big_rows = 200_000 if args.quick else 1_000_000
        csv_path = folder / "big.csv"
        write_csv(csv_path, big_rows)
        size_mb = csv_path.stat().st_size / 1e6
        say(
            f"## CSV ingest: {big_rows:,} rows x 17 columns, {size_mb:.0f} MB "
            "(median of 3, fresh process each)"
        )
        say()
        say("| reader | seconds | seconds incl. sha256 | peak memory above start (MiB) | arrays (MiB) |")
        say("|---|---:|---:|---:|---:|")
        runs: dict[str, list[dict[str, float]]] = {"pandas-default": [], "mse-train": []}
        for _ in range(3):  # fresh process each, interleaved
            for how, results in runs.items():
                code = (
                    f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"sys.path.insert(0, {str(ROOT / 'bench')!r}); "
                    f"import run; print(json.dumps(run.ingest_child({str(csv_path)!r}, {how!r})))"
                )
                out = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True
                ).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
        ingest: dict[str, dict[str, float]] = {}
        for how, results in runs.items():
            best = sorted(results, key=lambda r: r["seconds"])[1]  # the median run
            ingest[how] = best
            label = (
                "pandas.read_csv (defaults, float64)"
                if how == "pandas-default"
                else "mse-train table.read (float32, checks, sha256)"
            )
            say(
                f"| {label} | {best['seconds']:.3f} | {best['with_hash']:.3f} | {best['peak_mib']:.0f} "
                f"| {best['arrays_mib']:.0f} |"
            )
        say()
        ours_ingest, pandas_ingest = ingest["mse-train"], ingest["pandas-default"]
        speedup = pandas_ingest["seconds"] / ours_ingest["seconds"]
        peak_ratio = ours_ingest["peak_mib"] / ours_ingest["arrays_mib"]
        say(
            f"mse-train ingest is {speedup:.2f}x the speed of pandas defaults; its peak is "
            f"{peak_ratio:.1f}x the arrays it produces."
        )
        say()

        cfg_path = folder / "e2e.yaml"
        cfg_path.write_text(json.dumps(base_config(str(csv_path), 1024, 3, str(folder / "e2e-run"))))
        exe = str(Path(sys.executable).with_name("mse-train"))
        ours_runs: list[tuple[float, float, str]] = []
        plain_runs: list[tuple[float, float, str]] = []
        plain_cmd = [sys.executable, str(ROOT / "bench" / "plain_script.py"), str(csv_path)]
        for _ in range(3):  # interleaved, so both see the same machine
            ours_runs.append(run_process([exe, "run", str(cfg_path), "-q", "--overwrite"]))
            plain_runs.append(run_process(plain_cmd, cwd=folder))
        ours_wall = statistics.median(r[0] for r in ours_runs)
        plain_wall = statistics.median(r[0] for r in plain_runs)
        ours_mem = statistics.median(r[1] for r in ours_runs)
        plain_mem = statistics.median(r[1] for r in plain_runs)
        say(f"## End to end: {big_rows:,}-row CSV, 3 epochs, batch 1024, whole processes (median of 3)")
        say()
        say("| program | wall seconds | peak RSS (MiB) |")
        say("|---|---:|---:|")
        say(
            "| `mse-train run` (start-up, parse, checks, train, checkpoints, plot) "
            f"| {ours_wall:.2f} | {ours_mem:.0f} |"
        )
        say(f"| `bench/plain_script.py` (pandas + DataLoader) | {plain_wall:.2f} | {plain_mem:.0f} |")
        say()
        say(
            f"mse-train is **{plain_wall / ours_wall:.2f}x** faster end to end, with "
            f"{ours_mem / plain_mem:.2f}x the peak memory."
        )
        say()

        helps = []
        for _ in range(7):
            started = time.perf_counter()
            subprocess.run([exe, "--help"], capture_output=True, check=True)
            helps.append(time.perf_counter() - started)
        say(f"## Start-up\n\n`mse-train --help`: {statistics.median(helps) * 1000:.0f} ms (median of 7).")
        say()
        say(lbfgs_report(folder))

    if not args.quick:
        (ROOT / "bench" / "results.md").write_text("\n".join(lines) + "\n")
        print(f"\nwrote {ROOT / 'bench' / 'results.md'}")


def lbfgs_report(folder: Path) -> str:
    """Linear model, full batch, L-BFGS on a standardised table, against lstsq."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20_000, 8)) * rng.uniform(0.1, 100, size=8)
    y = x @ rng.normal(size=8) + 3 + rng.normal(size=20_000)
    path = folder / "lbfgs.csv"
    header = ",".join([f"x{i}" for i in range(8)] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.9g")
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    design = np.column_stack([table[:, :8], np.ones(len(table))])
    w, *_ = np.linalg.lstsq(design, table[:, 8], rcond=None)
    optimum = float(np.mean((design @ w - table[:, 8]) ** 2))
    exe = str(Path(sys.executable).with_name("mse-train"))
    reached = None
    for epochs in range(1, 21):
        # evaluate the checkpoint after each number of epochs by re-running short
        run_dir = folder / f"lbfgs-{epochs}"
        run_process(
            [
                exe,
                "run",
                str(ROOT / "configs" / "linear_regression.yaml"),
                "-q",
                "-o",
                str(run_dir),
                "--set",
                f"data.train={path}",
                "--set",
                "data.target=y",
                "--set",
                f"train.epochs={epochs}",
            ]
        )
        _, _, text = run_process([exe, "eval", str(run_dir / "last.pt"), str(path), "--json"])
        mse = json.loads(text.strip().splitlines()[-1])["mse"]
        if mse <= optimum * 1.001:
            reached = (epochs, mse)
            break
    if reached is None:
        return f"## L-BFGS\n\nDid not reach 0.1% of the lstsq optimum ({optimum:.6g}) in 20 epochs."
    return (
        "## L-BFGS against least squares\n\n`configs/linear_regression.yaml` on a standardised "
        "20,000 x 8 table "
        f"with column scales from 0.1 to 100: MSE {reached[1]:.6g} after **{reached[0]} epoch(s)**, "
        f"lstsq optimum {optimum:.6g} (ratio {reached[1] / optimum:.6f})."
    )


if __name__ == "__main__":
    main()
