"""loss.png drawn by a process beside the command (mse_train/outputs/drawer.py): the same file
as drawing it in the command, and the command draws it itself whenever that process fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mse_train import runtime
from mse_train.errors import MseTrainError
from mse_train.outputs import drawer

from conftest import CONFIGS, HANG_GUARD

HISTORY = [
    {"epoch": 1, "train_loss": 3.0, "val_loss": 3.5, "lr": 0.01},
    {"epoch": 2, "train_loss": 1.0, "val_loss": 1.2, "lr": 0.001},
]


def _child() -> drawer.Drawer:
    """A drawer with its child, whatever this process has drawn and however many CPUs it has."""
    return drawer.Drawer(drawer.spawn())


def _spy(beside: drawer.Drawer, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each job was drawn by the child (it answered `ok`), as the jobs are handed."""
    handed: list[bool] = []
    real = beside._handed

    def spied(job: str, args: tuple[object, ...]) -> bool:
        handed.append(real(job, args))
        return handed[-1]

    monkeypatch.setattr(beside, "_handed", spied)
    return handed


def test_the_child_draws_the_same_file_as_the_command(tmp_path, monkeypatch):
    beside = _child()
    assert beside.beside
    handed = _spy(beside, monkeypatch)
    beside.draw("write_loss_plot", tmp_path / "beside.png", HISTORY, 1, "loss: MSE, target units")
    assert handed == [True]  # the child drew it and said so
    assert not beside.beside  # one job per child
    drawer.Drawer().draw("write_loss_plot", tmp_path / "here.png", HISTORY, 1, "loss: MSE, target units")
    assert (tmp_path / "beside.png").read_bytes() == (tmp_path / "here.png").read_bytes()


def test_the_child_does_not_import_from_the_current_folder(tmp_path, monkeypatch):
    """`python -c` puts the current folder first on the path: a matplotlib.py there (a user's
    script beside their data) must not be what the child imports."""
    (tmp_path / "matplotlib.py").write_text("raise SystemExit('the wrong matplotlib')\n")
    monkeypatch.chdir(tmp_path)
    beside = _child()
    handed = _spy(beside, monkeypatch)
    beside.draw("write_loss_plot", tmp_path / "loss.png", HISTORY, 1, "loss")
    assert handed == [True]


def test_a_drawing_that_fails_in_the_child_fails_here_with_the_commands_own_error(tmp_path):
    target = tmp_path / "no such folder" / "loss.png"
    with pytest.raises(MseTrainError) as here:
        drawer.Drawer().draw("write_loss_plot", target, HISTORY, 1, "loss")
    with pytest.raises(MseTrainError) as beside:
        _child().draw("write_loss_plot", target, HISTORY, 1, "loss")
    assert type(beside.value) is type(here.value) and beside.value.summary == here.value.summary


def test_a_child_that_died_leaves_the_drawing_to_the_command(tmp_path):
    beside = _child()
    assert beside._child is not None
    beside._child.kill()
    beside._child.wait(timeout=HANG_GUARD)
    beside.draw("write_loss_plot", tmp_path / "loss.png", HISTORY, 2, "loss")
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")
def test_the_child_ignores_ctrl_c_and_still_draws(tmp_path, monkeypatch):
    """Ctrl-C reaches every process of the terminal's group; a run it stops still draws loss.png."""
    beside = _child()
    assert beside._child is not None
    child = beside._child
    handed = _spy(beside, monkeypatch)
    deadline = time.monotonic() + HANG_GUARD
    while not _ignores_sigint(child.pid):  # its first step; before it, Ctrl-C ends it as any process
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGINT)
    beside.draw("write_loss_plot", tmp_path / "loss.png", HISTORY, 1, "loss")
    assert handed == [True]


def _ignores_sigint(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def test_closing_stops_a_child_that_got_no_job():
    beside = _child()
    child = beside._child
    assert child is not None
    beside.close()
    assert child.poll() is not None and not beside.beside


def test_a_child_whose_command_is_gone_ends_at_the_end_of_its_input():
    beside = _child()
    child = beside._child
    assert child is not None and child.stdin is not None
    child.stdin.close()  # as when the command dies: no job will come
    assert child.wait(timeout=HANG_GUARD) == 0
    beside.close()


def test_only_plots_jobs_are_drawn(tmp_path):
    with pytest.raises(ValueError, match="not a drawer job"):
        drawer.Drawer().draw("write_bytes", tmp_path / "x", b"")


def test_start_draws_here_where_there_is_no_second_cpu_or_the_process_has_drawn(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cpus", lambda *_: 1)
    monkeypatch.delitem(sys.modules, drawer.DRAWN, raising=False)
    assert not drawer.start(True).beside
    monkeypatch.setattr(runtime, "usable_cpus", lambda *_: 2)
    assert not drawer.start(False).beside
    monkeypatch.setenv(drawer.ENVIRONMENT, "0")
    assert not drawer.start(True).beside
    monkeypatch.delenv(drawer.ENVIRONMENT)
    with drawer.beside(True) as beside:
        assert beside.beside
    assert not beside.beside
    monkeypatch.setitem(sys.modules, drawer.DRAWN, sys)
    assert not drawer.start(True).beside


@pytest.mark.parametrize("beside", ["1", "0"])
def test_a_run_draws_loss_png_beside_without_importing_matplotlib(tmp_path, beside):
    """With a second CPU the command imports no matplotlib: the child draws loss.png."""
    code = (
        "import sys\n"
        "from mse_train import runtime\n"
        "runtime.usable_cpus = lambda *_: 2\n"
        "from mse_train.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('matplotlib' in sys.modules)"
    )
    out = tmp_path / "out"
    args = ["run", CONFIGS / "linear.yaml", "--set", "train.epochs=3", "-o", out]
    env = {**os.environ, drawer.ENVIRONMENT: beside}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert done.stdout.strip().splitlines()[-1] == str(beside == "0")
    assert "loss.png" in done.stderr + done.stdout
