"""The CUDA path end to end, checked against the CPU, with timings side by side.

    .venv/bin/python bench/gpu.py               # a few minutes on one GPU
    .venv/bin/python bench/gpu.py --rows 20000  # a smaller table

Where torch sees no CUDA device it prints "no CUDA here" and exits 1: nothing was checked.
`--plumbing-on-cpu` runs every step with the CPU on both sides (reduced precision and the
GPU timing left out): a check of this script's own plumbing, never a GPU measurement.

Each step runs the real CLI (`python -m mse_train ...`) on a generated table (bench/run.py's
16 features, --rows rows) once with `train.device: cpu` and once with `cuda`, and compares
a result that both must give within a stated tolerance (float rounding differs between
the devices and compounds over epochs of Adam, so the tolerances are relative and loose
enough for that, tight enough to catch a wrong result):

  run (module, --no-pack)        best val_loss           rel 2%
  run (stack of one)             best val_loss           rel 2%
  run, train.precision tf32      best val_loss vs cuda fp32   rel 5%
  run, train.precision bf16      best val_loss vs cuda fp32   rel 5%
  cv -k 5, packed                mean held-out MSE       rel 2%
  sweep, 8 trials, packed        best score              rel 5%   (+ packed vs --no-pack time)
  run, streamed from the cache   best val_loss           rel 2%   (data.memory_budget: 1MiB)
  torchrun                       best val_loss vs one process  rel 1e-3
  export                         the ONNX graph checked against predict (export --check)
  eval                           MSE of the cuda run's best.pt, scored on cpu and cuda  rel 1e-5

and a step timing: the mse-train loop (a module, as `run --no-pack` builds it) against a
bare torch loop over the same rows, model, optimizer and batch on the GPU (issue 27 asks
for >= 0.9x). Prints a table of seconds (CPU, CUDA, speed-up) and whether each check held;
exits 1 when one did not.

torchrun: with two or more GPUs, two processes with nccl (one GPU each); with one GPU,
`torchrun --nproc_per_node 1`, which mse-train runs as one process (WORLD_SIZE=1 joins no
process group): nccl itself needs a second GPU, as mse-train gives each rank its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import write_csv  # noqa: E402

EPOCHS = 8
BATCH = 1024
HIDDEN = [256, 256]


@dataclass
class Row:
    step: str
    cpu_seconds: float | None
    cuda_seconds: float
    what: str
    cpu_value: float | None
    cuda_value: float | None
    tolerance: float | None  # relative; None: the step's own check (exit code)
    ok: bool


def cli(args: list[str], env: dict[str, str], launcher: list[str] | None = None) -> tuple[float, str]:
    """Run `python -m mse_train ARGS` (or under `launcher`); seconds and stdout; raise on failure."""
    command = [*(launcher or [sys.executable, "-m", "mse_train"]), *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def best_val(folder: Path) -> float:
    summary = json.loads((folder / "summary.json").read_text())
    return float(summary["best"]["val_loss"])


def streamed_val(folder: Path) -> float:
    """best_val of a run that must have streamed its table (else the step measured nothing)."""
    notes = json.loads((folder / "summary.json").read_text())["notes"]
    if not any("streams it from the data cache" in note for note in notes):
        raise SystemExit(f"{folder}: the run did not stream its table; use more --rows")
    return best_val(folder)


def close(a: float | None, b: float | None, rel: float) -> bool:
    return a is not None and b is not None and abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def bare_vs_loop(cfg_path: Path, device: torch.device) -> tuple[float, float]:
    """Seconds per epoch of the mse-train loop (a module; its end-of-epoch validation
    included) and of a bare loop (no validation), same rows, model, optimizer and batch."""
    from mse_train import config, recipe
    from mse_train.data import prepare

    cfg = config.load(cfg_path, [f"train.device={device.type}", "train.early_stopping=null"])
    prepared = prepare.prepare(cfg.data, cfg.targets, cfg.seed)
    loop = recipe.build_loop(cfg, prepared, device, stack=False)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    loop.run(lambda record: None)
    torch.cuda.synchronize(device)
    mine = (time.perf_counter() - started) / cfg.train.epochs

    x = torch.from_numpy(prepared.train.x).to(device)
    y = torch.from_numpy(prepared.train.y).to(device)
    layers: list[torch.nn.Module] = []
    width = x.shape[1]
    for size in HIDDEN:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, y.shape[1])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(cfg.train.epochs):
        order = torch.randperm(len(x), device=device)
        xs, ys = x[order], y[order]
        for start in range(0, len(x), BATCH):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs[start : start + BATCH]), ys[start : start + BATCH])
            loss.backward()
            optimizer.step()
    torch.cuda.synchronize(device)
    bare = (time.perf_counter() - started) / cfg.train.epochs
    return mine, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the generated table")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    parser.add_argument(
        "--plumbing-on-cpu", action="store_true", help="both sides on the CPU: checks this script"
    )
    args = parser.parse_args()
    gpu_side = "cpu" if args.plumbing_on_cpu else "cuda"
    if gpu_side == "cuda" and not torch.cuda.is_available():
        print("no CUDA here: torch sees no CUDA device, so bench/gpu.py checked nothing (exit 1)")
        raise SystemExit(1)
    work = Path(tempfile.mkdtemp(prefix="mse-gpu-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MSE_TRAIN_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    write_csv(work / "t.csv", args.rows)
    base: dict[str, Any] = {
        "seed": 0,
        "data": {"train": "t.csv", "target": "y", "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": HIDDEN},
        "optimizer": {"name": "adam", "lr": 0.001},
        "train": {"epochs": EPOCHS, "batch_size": BATCH},
        "output": {"plot": False},
        "sweep": {
            "method": "grid",
            "folds": 0,
            "refit": False,
            "params": {"optimizer.lr": [0.0003, 0.001, 0.003, 0.01], "model.hidden": [[64], [256, 256]]},
        },
    }
    cfg = work / "c.yaml"
    cfg.write_text(yaml.safe_dump(base, sort_keys=False))
    gpu = torch.cuda.get_device_name(0) if gpu_side == "cuda" else "CPU on both sides (plumbing only)"
    print(f"{gpu}; torch {torch.__version__}; {args.rows} rows x 16 features; MLP {HIDDEN}; batch {BATCH}")
    rows: list[Row] = []

    def both(
        step: str,
        command: Callable[[str, Path], list[str]],
        value: Callable[[Path, str], float],
        rel: float,
        what: str,
    ) -> dict[str, Path]:
        seconds, values, folders = {}, {}, {}
        for side, device in (("cpu", "cpu"), ("cuda", gpu_side)):
            folder = work / f"{step.replace(' ', '_')}-{side}"
            shutil.rmtree(folder, ignore_errors=True)
            seconds[side], out = cli([*command(device, folder), "--set", f"train.device={device}"], env)
            values[side] = value(folder, out)
            folders[side] = folder
        ok = close(values["cpu"], values["cuda"], rel)
        rows.append(Row(step, seconds["cpu"], seconds["cuda"], what, values["cpu"], values["cuda"], rel, ok))
        return folders

    run = both(
        "run module",
        lambda d, f: ["run", str(cfg), "--no-pack", "-q", "-o", str(f)],
        lambda f, out: best_val(f),
        0.02,
        "best val_loss",
    )
    both(
        "run stack of one",
        lambda d, f: ["run", str(cfg), "-q", "-o", str(f)],
        lambda f, out: best_val(f),
        0.02,
        "best val_loss",
    )
    fp32 = best_val(run["cuda"])
    for precision in ("tf32", "bf16") if gpu_side == "cuda" else ():
        folder = work / f"run-{precision}"
        shutil.rmtree(folder, ignore_errors=True)
        seconds, _ = cli(
            [
                "run",
                str(cfg),
                "-q",
                "-o",
                str(folder),
                "--set",
                "train.device=cuda",
                "--set",
                f"train.precision={precision}",
            ],
            env,
        )
        value = best_val(folder)
        rows.append(
            Row(
                f"run {precision}",
                None,
                seconds,
                "best val_loss vs cuda fp32",
                fp32,
                value,
                0.05,
                close(fp32, value, 0.05),
            )
        )
    both(
        "cv packed",
        lambda d, f: ["cv", str(cfg), "-k", "5", "--json", "-o", str(f)],
        lambda f, out: float(json.loads(out)["mse"]["mean"]),
        0.02,
        "mean held-out MSE",
    )

    def best_score(folder: Path, out: str) -> float:
        import csv

        with open(folder / "leaderboard.csv", newline="") as f:
            return min(float(r["score_mean"]) for r in csv.DictReader(f) if r["score_mean"])

    both("sweep packed", lambda d, f: ["sweep", str(cfg), "-q", "-o", str(f)], best_score, 0.05, "best score")
    alone = work / "sweep-alone"
    shutil.rmtree(alone, ignore_errors=True)
    alone_seconds, _ = cli(
        ["sweep", str(cfg), "-q", "--no-pack", "-o", str(alone), "--set", f"train.device={gpu_side}"], env
    )
    packed_seconds = rows[-1].cuda_seconds
    rows.append(
        Row(
            "sweep --no-pack",
            None,
            alone_seconds,
            "packed is x faster",
            None,
            alone_seconds / packed_seconds,
            None,
            True,
        )
    )
    streamed = ["--set", "data.memory_budget=1MiB"]
    both(
        "run streamed",
        lambda d, f: ["run", str(cfg), "-q", "-o", str(f), *streamed],
        lambda f, out: streamed_val(f),
        0.02,
        "best val_loss",
    )

    ranks = min(2, torch.cuda.device_count()) if gpu_side == "cuda" else 1
    folder = work / "torchrun"
    shutil.rmtree(folder, ignore_errors=True)
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "mse_train",
    ]
    seconds, _ = cli(
        ["run", str(cfg), "-q", "--no-pack", "-o", str(folder), "--set", f"train.device={gpu_side}"],
        env,
        launcher,
    )
    value = best_val(folder)
    rows.append(
        Row(
            f"torchrun x{ranks}" + (" nccl" if ranks > 1 else " (one process)"),
            None,
            seconds,
            "best val_loss vs one process",
            fp32,
            value,
            1e-3,
            close(fp32, value, 1e-3),
        )
    )

    best = run["cuda"] / "best.pt"
    try:
        seconds, _ = cli(
            ["export", str(best), "-o", str(work / "model.onnx"), "--check", str(work / "t.csv")], env
        )
        rows.append(Row("export --check", None, seconds, "ONNX graph == predict", None, None, None, True))
    except SystemExit as failed:
        rows.append(Row("export --check", None, 0.0, str(failed).splitlines()[0], None, None, None, False))
    scored = {}
    times = {}
    for side, device in (("cpu", "cpu"), ("cuda", gpu_side)):
        times[side], out = cli(["eval", str(best), str(work / "t.csv"), "--json", "--device", device], env)
        scored[side] = float(json.loads(out)["mse"])
    rows.append(
        Row(
            "eval",
            times["cpu"],
            times["cuda"],
            "MSE of one best.pt",
            scored["cpu"],
            scored["cuda"],
            1e-5,
            close(scored["cpu"], scored["cuda"], 1e-5),
        )
    )

    if gpu_side == "cuda":
        mine, bare = bare_vs_loop(cfg, torch.device("cuda"))
        rows.append(
            Row(
                "step: loop vs bare",
                None,
                mine,
                "bare / loop s per epoch (>= 0.9 asked)",
                None,
                bare / mine,
                None,
                bare / mine >= 0.9,
            )
        )

    print(f"\n{'step':<24}{'cpu s':>9}{'cuda s':>9}{'x':>7}  {'check':<36}{'cpu':>12}{'cuda':>12}  tol    ok")
    for r in rows:
        speed = f"{r.cpu_seconds / r.cuda_seconds:.1f}" if r.cpu_seconds and r.cuda_seconds else "-"
        cells = [f"{v:.6g}" if v is not None else "-" for v in (r.cpu_value, r.cuda_value)]
        cpu_s = f"{r.cpu_seconds:.1f}" if r.cpu_seconds is not None else "-"
        tol = f"{r.tolerance:g}" if r.tolerance is not None else "-"
        timing = f"{r.step:<24}{cpu_s:>9}{r.cuda_seconds:>9.1f}{speed:>7}"
        print(f"{timing}  {r.what:<36}{cells[0]:>12}{cells[1]:>12}  {tol:<6} {'yes' if r.ok else 'NO'}")
    print(f"\nload average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; runs in {work}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if not all(r.ok for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
