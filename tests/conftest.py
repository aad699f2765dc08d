"""Shared helpers: drive the real CLI in-process, write tables and configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mse_train.cli import app

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DATA = REPO / "data"


class Result:
    """Outcome of one CLI call: exit code, stdout, stderr."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:  # shown by pytest when an assertion fails
        return f"Result(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data cache (`data.cache: auto`), never the user's ~/.cache;
    subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("data-cache")
    monkeypatch.setenv("MSE_TRAIN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke `mse-train ARGS...` in-process, as a user would type it."""
    runner = CliRunner()

    def invoke(*args: Any) -> Result:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke


# Seconds after which a test gives up on a process: only a hang takes this long. Tests check
# behaviour, never speed (a loaded machine can make a 2-second command take a minute).
HANG_GUARD = 600.0


def run_process(*args: Any, timeout: float = HANG_GUARD, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`python -m mse_train ARGS...` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "mse_train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start_process(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mse_train", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def linear_rows(
    n: int, n_features: int = 3, noise: float = 0.1, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """A table y = X w + b + noise, as (header, array with y last)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)) * np.arange(1, n_features + 1)
    w = rng.normal(size=n_features)
    y = x @ w + 0.5 + noise * rng.normal(size=n)
    header = [f"x{i}" for i in range(n_features)] + ["y"]
    return header, np.column_stack([x, y])


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """200 rows of a noisy linear table with three features."""
    header, values = linear_rows(200)
    return write_csv(tmp_path / "table.csv", header, values.round(6).tolist())


@pytest.fixture
def small_config(tmp_path: Path, table: Path) -> Callable[..., Path]:
    """Write a config for `table` with the given sections merged in."""

    def make(name: str = "cfg.yaml", **sections: Any) -> Path:
        config: dict[str, Any] = {
            "data": {"train": str(table), "target": "y"},
            "optimizer": {"name": "adam", "lr": 0.05},
            "train": {"epochs": 5},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return write_config(tmp_path / name, config)

    return make


def signal_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> Callable[[], None]:
    """Send SIGINT to this process from inside the loop's n-th training step, whichever model
    axis takes it (a module, or a stack); returns what puts the real steps back."""
    import signal

    from mse_train.training.module import Module
    from mse_train.training.stack import Stack

    steps = {"n": 0}
    reals = {cls: cls.step for cls in (Module, Stack)}
    for cls, real in reals.items():

        def step(self: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            steps["n"] += 1
            if steps["n"] == n:
                os.kill(os.getpid(), signal.SIGINT)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", step)

    def restore() -> None:
        for cls, real in reals.items():
            monkeypatch.setattr(cls, "step", real)

    return restore


# ------------------------------------------------------------------ sweeps
def leaderboard(folder: Path) -> list[dict[str, str]]:
    """A sweep folder's leaderboard.csv, a dict per row."""
    with open(folder / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def sweep_study(folder: Path, name: str = "sweep") -> Any:
    """The Optuna study in a sweep folder's own journal file, sweep.journal."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "sweep.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def sweep_config(tmp_path: Path, table: Path, sweep: dict[str, Any], **sections: Any) -> Path:
    """A small MLP config with this `sweep:` section (and `sections` replaced), as sweep.yaml."""
    config: dict[str, Any] = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.25},
        "model": {"type": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.05},
        "train": {"epochs": 4},
        "output": {"dir": str(tmp_path / "run"), "plot": False},
        "sweep": sweep,
    }
    config.update(sections)
    return write_config(tmp_path / "sweep.yaml", config)
