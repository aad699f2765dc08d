"""Crashes lose nothing, interrupts save and say how to resume, resume is bit-identical."""

from __future__ import annotations

import errno
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mse_train.outputs import checkpoint
from mse_train.use import evaluate

from conftest import (
    CONFIGS,
    DATA,
    HANG_GUARD,
    read_metrics,
    signal_at_step,
    start_process,
    write_config,
    write_csv,
)


@pytest.fixture
def busy_table(tmp_path: Path) -> Path:
    """A non-linear table big enough for many mini-batches per epoch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = x @ [1.0, 2.0, -1.0, 0.5] + np.sin(x[:, 0]) + 0.1 * rng.normal(size=3000)
    return write_csv(
        tmp_path / "busy.csv", ["a", "b", "c", "d", "y"], np.column_stack([x, y]).round(6).tolist()
    )


def everything_in_play(tmp_path: Path, table: Path, **train) -> Path:
    """Shuffled mini-batches, dropout, StepLR and early-stopping state all matter."""
    return write_config(
        tmp_path / "cfg.yaml",
        {
            "seed": 3,
            "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
            "model": {"type": "mlp", "hidden": [16, 16], "dropout": 0.2},
            "optimizer": {"name": "adam", "lr": 0.01},
            "scheduler": {"name": "step", "step_size": 3, "gamma": 0.5},
            # min_delta so large that no epoch counts as progress: the patience counter runs.
            "train": {
                "epochs": 10,
                "batch_size": 64,
                "early_stopping": {"patience": 50, "min_delta": 10.0},
                **train,
            },
            "output": {"plot": False},
        },
    )


def losses(run: Path) -> list[tuple[str, str]]:
    return [(r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.csv")]


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=True)["weights"]
    wb = torch.load(b, weights_only=True)["weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stop_after_4_then_resume_to_10_is_bit_identical(cli, tmp_path, busy_table):
    cfg = everything_in_play(tmp_path, busy_table)
    assert cli("run", cfg, "-q", "-o", tmp_path / "straight").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "split", "--set", "train.epochs=4").code == 0
    stopped = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert stopped["epoch"] == 4 and stopped["training"]["progress"]["stop_bad"] == 3
    result = cli("run", cfg, "-o", tmp_path / "split", "--resume")
    assert result.code == 0, result
    assert "resuming after epoch 4" in result.stderr
    assert same_weights(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    assert len(losses(tmp_path / "split")) == 10


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_saves_and_resume_is_bit_identical(cli, tmp_path, busy_table, sig):
    cfg = everything_in_play(tmp_path, busy_table, batch_size=8)
    run = tmp_path / "run"
    process = start_process("run", cfg, "-q", "-o", run)
    _wait_for(run / "metrics.csv", process)
    time.sleep(random.Random(sig).uniform(0.05, 0.3))
    process.send_signal(sig)
    _, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 130, err
    assert "interrupted at epoch" in err and "--resume" in err
    saved = torch.load(run / "last.pt", weights_only=True)
    assert saved["epoch"] < 10
    resumed = cli("run", cfg, "-q", "-o", run, "--resume")
    assert resumed.code == 0, resumed
    assert cli("run", cfg, "-q", "-o", tmp_path / "straight").code == 0
    assert same_weights(tmp_path / "straight" / "last.pt", run / "last.pt")
    assert losses(tmp_path / "straight") == losses(run)


@pytest.mark.parametrize("dropout", [0.2, 0.0], ids=["module", "stack-of-one"])
def test_interrupt_inside_an_epoch_keeps_the_position(tmp_path, busy_table, monkeypatch, dropout):
    """SIGINT lands on a known batch (the 40th step, inside epoch 2); the run goes on from there.
    With dropout the model trains as a module; without, as a stack of one (training/stack/)."""
    from mse_train import config, recipe
    from mse_train.errors import TrainingInterrupted
    from mse_train.training.stack import why_alone

    cfg = config.load(everything_in_play(tmp_path, busy_table, epochs=3))
    cfg.model.dropout = dropout  # type: ignore[union-attr]
    assert (why_alone(cfg) is None) == (dropout == 0)
    cfg.output.dir = str(tmp_path / "a")
    restore = signal_at_step(monkeypatch, 40)
    with pytest.raises(TrainingInterrupted):
        recipe.run(cfg, recipe.Options(), recipe.Silent())
    restore()
    progress = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["training"]["progress"]
    assert (progress["epoch"], progress["batch"]) == (1, 40 - 38)  # 38 batches of 64 per epoch
    recipe.run(cfg, recipe.Options(resume=True), recipe.Silent())
    cfg.output.dir = str(tmp_path / "b")
    recipe.run(cfg, recipe.Options(), recipe.Silent())
    assert same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_sigkill_at_random_moments_never_breaks_last_pt(tmp_path):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(DATA / "linear.csv"), "target": "y", "standardize": False},
            "train": {"epochs": 1_000_000},
            "output": {"dir": str(tmp_path / "run"), "checkpoint_every": 1, "plot": False},
        },
    )
    run = tmp_path / "run"
    rng = random.Random(0)
    epochs_seen = []
    for attempt in range(8):
        args = ["run", cfg, "-q"] + (["--resume"] if attempt else [])
        process = start_process(*args)
        _wait_for(run / "last.pt", process, newer_than=(run / "last.pt").stat().st_mtime if attempt else 0)
        time.sleep(rng.uniform(0.0, 0.4))
        process.kill()
        process.communicate(timeout=HANG_GUARD)
        ckpt = checkpoint.load(run / "last.pt")  # raises if damaged
        epochs_seen.append(int(ckpt["epoch"]))
        report = evaluate.evaluate(run / "last.pt", DATA / "linear.csv")
        assert report.overall["n"] == 3 and math.isfinite(report.overall["mse"])
        rows = read_metrics(run / "metrics.csv")
        assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] > epochs_seen[0]


def _wait_for(path: Path, process, newer_than: float = 0.0, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime > newer_than:
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        time.sleep(0.01)
    process.kill()
    process.communicate()
    raise AssertionError(f"{path} never appeared")


def test_divergence_exits_1_and_keeps_the_last_finite_state(cli, tmp_path):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(DATA / "linear.csv"), "target": "y", "standardize": False},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "loss": {"reduction": "sum"},
            "train": {"epochs": 500},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        },
    )
    result = cli("run", cfg, "-q")
    assert result.code == 1, result
    assert "diverged at epoch" in result.stderr and "lower optimizer.lr" in result.stderr
    epoch = int(result.stderr.split("diverged at epoch ")[1].split(":")[0])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == epoch - 1
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    for name in ("last.pt", "best.pt"):
        ckpt = checkpoint.load(tmp_path / "run" / name)
        assert all(torch.isfinite(w).all() for w in ckpt["weights"].values())
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == epoch - 1
    assert cli("eval", tmp_path / "run" / "last.pt", DATA / "linear.csv", "--json").code == 0


def test_resume_refuses_a_changed_config_or_data(cli, tmp_path, busy_table):
    cfg = everything_in_play(tmp_path, busy_table, epochs=2)
    run = tmp_path / "run"
    assert cli("run", cfg, "-q", "-o", run).code == 0
    before = (run / "last.pt").read_bytes()
    changed = cli("run", cfg, "-q", "-o", run, "--resume", "--set", "optimizer.lr=0.5")
    assert changed.code == 2
    assert "optimizer.lr: 0.01 in the run, 0.5 now" in changed.stderr and "--force" in changed.stderr
    with open(busy_table, "a") as f:
        f.write("0,0,0,0,0\n")
    data_changed = cli("run", cfg, "-q", "-o", run, "--resume", "--set", "train.epochs=3")
    assert data_changed.code == 2 and "changed since the run started" in data_changed.stderr
    assert (run / "last.pt").read_bytes() == before
    forced = cli(
        "run",
        cfg,
        "-q",
        "-o",
        run,
        "--resume",
        "--force",
        "--set",
        "train.epochs=3",
        "--set",
        "optimizer.lr=0.5",
    )
    assert forced.code == 0, forced
    assert len(read_metrics(run / "metrics.csv")) == 3
    assert read_metrics(run / "metrics.csv")[-1]["lr"] == "0.5"


def test_resume_ignores_what_the_config_name_and_location_resolve_to(cli, tmp_path, table):
    """A renamed and moved config with relative paths: its run folder, MLflow experiment and
    absolute paths resolve differently, none of which changes what is trained."""
    first = tmp_path / "a" / "p5.yaml"
    first.parent.mkdir()
    (tmp_path / "a" / "t.csv").write_bytes(table.read_bytes())
    config = {
        "data": {"train": "t.csv", "target": "y"},
        "model": {"type": "mlp", "hidden": [4]},
        "train": {"epochs": 2},
        "output": {"plot": False},
    }
    write_config(first, config)
    assert cli("run", first, "-q").code == 0
    run = tmp_path / "a" / "runs" / "p5"
    moved = tmp_path / "b" / "p12.yaml"
    moved.parent.mkdir()
    (tmp_path / "b" / "t.csv").write_bytes(table.read_bytes())
    lrs = {"params": {"optimizer.lr": [0.01, 0.1]}}  # `run` ignores what a sweep would search
    renamed = {
        **config,
        "train": {"epochs": 3},
        "output": {"plot": True, "checkpoint_every": 1},
        "sweep": lrs,
    }
    write_config(moved, renamed)
    resumed = cli("run", moved, "-q", "-o", run, "--resume")
    assert resumed.code == 0, resumed.stderr
    assert checkpoint.load(run / "last.pt")["epoch"] == 3
    # A setting that changes training is still refused, named, and nothing is written.
    before = (run / "last.pt").read_bytes()
    write_config(moved, {**config, "model": {"type": "mlp", "hidden": [5]}, "train": {"epochs": 4}})
    changed = cli("run", moved, "-q", "-o", run, "--resume")
    assert changed.code == 2 and "model.hidden: [4] in the run, [5] now" in changed.stderr
    assert "output" not in changed.stderr.split("cannot resume")[1].split("only train.epochs")[0]
    assert (run / "last.pt").read_bytes() == before


def test_resume_needs_a_last_pt(cli, small_config, tmp_path):
    result = cli("run", small_config(), "--resume")
    assert result.code == 2 and "nothing to resume" in result.stderr


def test_full_disk_during_a_save_fails_loudly_and_keeps_the_previous_checkpoint(
    cli, small_config, tmp_path, monkeypatch
):
    cfg = small_config(train={"epochs": 6}, output={"checkpoint_every": 1})
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 7:  # the first epochs' files land, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = cli("run", cfg, "-q")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.code == 1, result
    assert "No space left on device" in result.stderr and "previous version" in result.stderr
    run = tmp_path / "run"
    ckpt = checkpoint.load(run / "last.pt")
    assert 1 <= ckpt["epoch"] < 6
    assert not list(run.glob(".*.tmp"))


def test_no_temporary_files_are_left_behind(cli, small_config, tmp_path):
    from mse_train.outputs import run_folder

    assert cli("run", small_config(output={"checkpoint_every": 1}), "-q").code == 0
    # The lock file stays (filelock keeps it so that every locker meets the same inode); it
    # holds no lock once the run has ended.
    assert [p.name for p in (tmp_path / "run").glob(".*")] == [run_folder.LOCK_FILE]


def test_a_sigterm_during_the_error_report_waits_for_the_whole_report_and_its_exit_code(tmp_path):
    """torchrun's agent sends SIGTERM to the surviving processes at about the moment they
    find out that one died and start to say so; the report still comes out whole."""
    script = tmp_path / "report.py"
    script.write_text(
        "import importlib, os, signal\n"
        "from mse_train.cli import console\n"
        "app = importlib.import_module('mse_train.cli.app')\n"
        "from mse_train.errors import UserError\n"
        "real = console.stderr\n"
        "def stderr():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # as the report begins\n"
        "    return real()\n"
        "console.stderr = stderr\n"
        "def work():\n"
        "    raise UserError('another process died', ['last.pt is intact', 'continue with: resume'])\n"
        "try:\n"
        "    app._guard(False, work)\n"
        "except app.typer.Exit as stop:  # as typer's main turns it into the exit code\n"
        "    raise SystemExit(stop.exit_code)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr  # the command's own exit code, not the signal's
    assert "error: another process died" in done.stderr
    assert "  - last.pt is intact\n  - continue with: resume" in done.stderr


_SIGNAL_WHILE_SAVING = """
import os, signal, sys
from mse_train.outputs import run_folder

real, sig = run_folder.Saver.checkpoint, getattr(signal, sys.argv[1])

def checkpoint(self, loop, final=False):
    if final:  # training has ended: the run's last files are being written
        os.kill(os.getpid(), sig)
    return real(self, loop, final)

run_folder.Saver.checkpoint = checkpoint
sys.argv = ["mse-train", *sys.argv[2:]]
from mse_train.cli.app import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_last_files_are_written_lets_them_be_written_whole(tmp_path, sig):
    """Training has ended: a Ctrl-C or SIGTERM then only asks to stop, and the final
    checkpoints and summary.json are written whole (SIGTERM used to kill the process there,
    leaving a first run without its only last.pt)."""
    out = tmp_path / "run"
    args = ["run", str(CONFIGS / "linear.yaml"), "--set", "train.epochs=3", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_SAVING, sig, *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert checkpoint.load(out / "last.pt") and checkpoint.load(out / "best.pt")
    summary = (out / "summary.json").read_text()
    assert '"status": "completed"' in summary
    assert not list(out.glob(".*.tmp"))


_SIGNAL_WHILE_DRAWING = """
import os, signal, sys
from mse_train.outputs import drawer

real = drawer.Drawer.draw

def draw(self, job, *args):
    os.kill(os.getpid(), signal.SIGINT)  # the run has ended and saved; loss.png is next
    return real(self, job, *args)

drawer.Drawer.draw = draw
sys.argv = ["mse-train", *sys.argv[1:]]
from mse_train.cli.app import main
main()
"""


def test_a_ctrl_c_while_loss_png_is_drawn_says_the_run_is_complete(tmp_path):
    """The run is saved whole by then: the message says so and how to draw the picture."""
    out = tmp_path / "run"
    args = ["run", str(CONFIGS / "linear.yaml"), "--set", "train.epochs=3", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_DRAWING, *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 130, done.stderr
    assert f"interrupted while loss.png was drawn; the run itself is complete in {out}" in done.stderr
    assert f"draw loss.png again: mse-train plot {out}" in done.stderr
    assert '"status": "completed"' in (out / "summary.json").read_text()
