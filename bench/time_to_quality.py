"""Time to quality: `mse-train init` + `run` against a LightGBM-defaults script, whole processes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/time_to_quality.py [--repeats 3] [--write] [--baseline DIR]
        [--table CSV --target COLUMN]

On a seeded 80/20 split of data/diamonds.csv (43,152 training rows, 10,788 test rows; the
categorical columns as categories on both sides; `--table`: another CSV), interleaved
(A, B, A, B, ...) so that a change in the machine's load falls on both alike:

- A: `mse-train init train.csv --target price` then `mse-train run` of the config it wrote,
  with nothing changed, each a fresh process, as a new user types them;
- B: `python bench/lightgbm_script.py train.csv test.csv price`: pandas.read_csv, the text
  columns as pandas categories, `lightgbm.LGBMRegressor()` with its defaults, fit, predict.

Each repeat starts with an empty data cache (MSE_TRAIN_CACHE_DIR), so A reads the CSV as a
first run does. Test R² of A comes from `mse-train eval best.pt test.csv --json` (not timed),
that of B from the script. Also prints where A's time goes: init, and the run's own
`summary.json` timings (reading the table, the training loop; the rest is start-up, the
checkpoints and loss.png). `--baseline DIR` times a second mse-train (another commit's
`mse_train/` unpacked in DIR, first on PYTHONPATH) the same way in each repeat, A/B.
Issue 23's target: A within 3x of B at the same or better R².
LightGBM is needed only here: `.venv/bin/pip install lightgbm`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "data" / "diamonds.csv"
TARGET = "price"
SEED = 0
TRAIN_SHARE = 0.8


def _mse_train() -> list[str]:
    script = Path(sys.executable).parent / "mse-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mse_train"]


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    # not from REPO: `python -m` puts its folder first on sys.path, ahead of PYTHONPATH (--baseline)
    done = subprocess.run(command, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout


def _shown(table: Path) -> str:
    table = table.resolve()
    return str(table.relative_to(REPO)) if table.is_relative_to(REPO) else table.name


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def split(folder: Path, table: Path) -> tuple[Path, Path]:
    frame = pd.read_csv(table)
    order = np.random.default_rng(SEED).permutation(len(frame))
    cut = int(len(frame) * TRAIN_SHARE)
    train, test = folder / "train.csv", folder / "test.csv"
    frame.iloc[order[:cut]].to_csv(train, index=False)
    frame.iloc[order[cut:]].to_csv(test, index=False)
    return train, test


def _ours(
    version: Version, train: Path, test: Path, target: str, scratch: Path, i: int, env: dict[str, str]
) -> dict[str, float]:
    """One repeat of A for one version: init, run (its own timings), and the test R² (untimed)."""
    env = {**env, **version.env}
    tag = f"{version.tag}{i}"
    config, out = scratch / f"config-{tag}.yaml", scratch / f"run-{tag}"
    init_s, _ = _timed([*version.command, "init", str(train), "--target", target, "-o", str(config)], env)
    run_s, _ = _timed([*version.command, "run", str(config), "-o", str(out)], env)
    summary = json.loads((out / "summary.json").read_text())
    _, scored = _timed([*version.command, "eval", str(out / "best.pt"), str(test), "--json"], env)
    model = next(line for line in config.read_text().splitlines() if line.startswith("  type:"))
    version.model = model.split("#")[0].split(":", 1)[1].strip()
    version.r2 = float(json.loads(scored)["r2"])
    return {
        "init": init_s,
        "run": run_s,
        "total": init_s + run_s,
        "ingest": summary["timings"]["ingest_seconds"],
        "train": summary["timings"]["train_seconds"],
        "epochs": summary["epochs_run"],
    }


@dataclass
class Version:
    """An mse-train to time: this tree, or another source tree put first on PYTHONPATH."""

    name: str
    tag: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    times: list[dict[str, float]] = field(default_factory=list)
    model: str = ""
    r2: float = float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="also write bench/time_to_quality_results.md")
    parser.add_argument(
        "--baseline",
        type=lambda text: Path(text).resolve(),
        help="another mse-train source tree (an earlier commit: `git archive COMMIT mse_train | tar -x "
        "-C DIR`), timed the same way in the same repeats, for an A/B of two versions",
    )
    parser.add_argument("--table", type=Path, default=TABLE, help="the CSV to split (default: diamonds)")
    parser.add_argument("--target", default=TARGET, help="its target column (default: price)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="mse-train-ttq-"))
    lightgbm = [sys.executable, str(REPO / "bench" / "lightgbm_script.py")]
    versions = [Version("mse-train", "a", _mse_train())]
    if args.baseline is not None:  # both as `python -m mse_train`, so that they start alike
        module = [sys.executable, "-m", "mse_train"]
        versions = [
            Version("mse-train (this tree)", "a", module),
            Version(
                f"mse-train ({args.baseline.name})", "b", module, {"PYTHONPATH": str(args.baseline.resolve())}
            ),
        ]
    theirs: list[float] = []
    lightgbm_r2 = float("nan")
    try:
        train, test = split(scratch, args.table)
        load_before = _loadavg()
        for i in range(args.repeats):
            env = {**os.environ, "MSE_TRAIN_CACHE_DIR": str(scratch / f"cache{i}")}
            for version in versions:
                version.times.append(_ours(version, train, test, args.target, scratch, i, env))
            seconds, printed = _timed([*lightgbm, str(train), str(test), args.target], env)
            theirs.append(seconds)
            lightgbm_r2 = float(printed.split()[-1])
        load_after = _loadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    theirs_s = statistics.median(theirs)
    lines = [
        f"{_shown(args.table)}, seeded 80/20 split ({args.target}); whole processes,"
        f" median of {args.repeats},"
        f" interleaved; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')};"
        f" load average {load_before} before, {load_after} after.",
        "",
        "| program | median s | min s | max s | test R² |",
        "|---|---:|---:|---:|---:|",
    ]
    for version in versions:
        total = [t["total"] for t in version.times]
        lines.append(
            f"| `{version.name} init` + `run` ({version.model} starter)"
            f" | {statistics.median(total):.2f} | {min(total):.2f} | {max(total):.2f} | {version.r2:.4f} |"
        )
    lines += [
        f"| `bench/lightgbm_script.py` (LGBMRegressor defaults) | {theirs_s:.2f} | {min(theirs):.2f}"
        f" | {max(theirs):.2f} | {lightgbm_r2:.4f} |",
        "",
    ]
    for version in versions:
        total = [t["total"] for t in version.times]
        med = {key: statistics.median(t[key] for t in version.times) for key in version.times[0]}
        lines.append(
            f"{version.name} / LightGBM: **{med['total'] / theirs_s:.2f}x** (target 3x); each pair:"
            f" {', '.join(f'{a / b:.2f}x' for a, b in zip(total, theirs, strict=True))}."
            " Of its time (medians):"
            f" init {med['init']:.2f} s; run {med['run']:.2f} s, of which reading the table"
            f" {med['ingest']:.2f} s and the training loop {med['train']:.2f} s ({med['epochs']:.0f} epochs),"
            " the rest start-up, checkpoints and loss.png."
        )
    if len(versions) == 2:
        pairs = [a["total"] / b["total"] for a, b in zip(versions[0].times, versions[1].times, strict=True)]
        ratio = statistics.median(t["total"] for t in versions[0].times) / statistics.median(
            t["total"] for t in versions[1].times
        )
        lines.append(
            f"\n{versions[0].name} / {versions[1].name}: **{ratio:.2f}x** (each interleaved pair: "
            f"{', '.join(f'{r:.2f}x' for r in pairs)})."
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = REPO / "bench" / "time_to_quality_results.md"
        path.write_text(f"# Time to quality (bench/time_to_quality.py)\n\n{text}\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
