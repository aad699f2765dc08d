"""Files and folders: never destroy what is not ours (issue 14).

One run per folder at a time; output paths respected (links, devices, read-only files,
inputs, checkpoints, modes); --overwrite that cannot lose a good run to a bad one; no
system folder as a run folder; advice that works when followed.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import HANG_GUARD, linear_rows, read_json, run_process, start_process, write_config, write_csv


@pytest.fixture
def trained(cli, small_config, tmp_path: Path) -> Path:
    """A finished run in tmp_path/run; returns the folder."""
    assert cli("run", small_config(), "-q").code == 0
    return tmp_path / "run"


def _slow_config(tmp_path: Path, out: Path) -> Path:
    header, values = linear_rows(4000)
    table = write_csv(tmp_path / "slow.csv", header, values.round(5).tolist())
    return write_config(
        tmp_path / "slow.yaml",
        {
            "data": {"train": str(table), "target": "y"},
            "optimizer": {"name": "adam", "lr": 0.001},
            "train": {"epochs": 100000, "batch_size": 8},
            "output": {"dir": str(out), "plot": False, "checkpoint_every": 1},
        },
    )


def test_a_second_run_into_a_busy_folder_is_refused(cli, tmp_path):
    out = tmp_path / "busy"
    cfg = _slow_config(tmp_path, out)
    first = start_process("run", cfg, "-q")
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not (out / "last.pt").exists():  # the first run is training
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = cli("run", cfg, "-q", *extra)
            assert second.code == 2, second
            assert str(out) in second.stderr and "another mse-train run is using this folder" in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=HANG_GUARD)
    assert first.returncode == 130
    assert read_json(out / "summary.json")["status"] == "interrupted"  # the first run's own files
    assert cli("run", cfg, "-q", "--resume", "--set", "train.epochs=1").code in (0, 2)  # lock released


_HOLD = """
import sys, time
from pathlib import Path
from mse_train.outputs import run_folder
with run_folder.lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_dies_with_its_process(tmp_path):
    from mse_train.errors import OutputError
    from mse_train.outputs import run_folder

    out = tmp_path / "held"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(OutputError, match="another mse-train run is using this folder"),
            run_folder.lock(out),
        ):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own runs
        holder.communicate(timeout=60)
    # The lock file is still there, its lock is not; a second holder in this process is refused too.
    with (
        run_folder.lock(out),
        pytest.raises(OutputError, match="another mse-train run"),
        run_folder.lock(out),
    ):
        pass
    with run_folder.lock(out):  # released on leaving
        pass


def test_run_cv_and_sweep_start_where_there_is_no_fcntl():
    """fcntl is Unix only: the commands that lock a folder must import without it (Windows)."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import mse_train.recipe, mse_train.selection.cv, mse_train.selection.sweep, mse_train.cli.app\n"
        "print('imported')"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


def test_predict_writes_through_a_symlink(cli, trained, table, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert cli("predict", trained / "best.pt", table, "-o", link).code == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("x0,x1,x2,y,y_pred\n")


def test_predict_writes_to_a_device_without_replacing_it(cli, trained, table):
    before = os.stat("/dev/null")
    assert cli("predict", trained / "best.pt", table, "-o", "/dev/null").code == 0
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


@pytest.mark.parametrize("which", ["input", "checkpoint", "other checkpoint"])
def test_predict_refuses_to_write_over_its_input_or_a_checkpoint(cli, trained, table, which):
    targets = {"input": table, "checkpoint": trained / "best.pt", "other checkpoint": trained / "last.pt"}
    target = targets[which]
    before = target.read_bytes()
    result = cli("predict", trained / "best.pt", table, "-o", target)
    assert result.code == 2, result
    assert str(target) in result.stderr
    assert target.read_bytes() == before


def test_plot_refuses_to_write_over_metrics_csv(cli, trained):
    before = (trained / "metrics.csv").read_bytes()
    result = cli("plot", trained, "-o", trained / "metrics.csv")
    assert result.code == 2, result
    assert (trained / "metrics.csv").read_bytes() == before


def test_a_read_only_output_is_not_replaced(cli, trained, table, tmp_path):
    target = tmp_path / "kept.csv"
    target.write_text("precious\n")
    target.chmod(0o444)
    result = cli("predict", trained / "best.pt", table, "-o", target)
    assert result.code == 2, result
    assert "read-only" in result.stderr
    assert target.read_text() == "precious\n" and stat.S_IMODE(target.stat().st_mode) == 0o444


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(cli, small_config, table, tmp_path):
    old = os.umask(0o027)
    try:
        assert cli("run", small_config(), "-q").code == 0
        run = tmp_path / "run"
        for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "summary.json"):
            assert stat.S_IMODE((run / name).stat().st_mode) == 0o640, name
        target = tmp_path / "pred.csv"
        target.write_text("old\n")
        target.chmod(0o604)
        assert cli("predict", run / "best.pt", table, "-o", target).code == 0
        assert stat.S_IMODE(target.stat().st_mode) == 0o604
        assert target.read_text().startswith("x0,")
    finally:
        os.umask(old)


@pytest.mark.parametrize("command", ["predict", "plot", "init"])
def test_a_missing_parent_folder_is_named_not_blamed_on_the_disk(cli, trained, table, tmp_path, command):
    out = tmp_path / "no" / "such" / "folder" / "file"
    args = {
        "predict": ["predict", trained / "best.pt", table, "-o", out],
        "plot": ["plot", trained, "-o", out],
        "init": ["init", table, "--target", "y", "-o", out],
    }[command]
    result = cli(*args)
    assert result.code == 2, result
    assert "does not exist" in result.stderr and str(tmp_path / "no" / "such" / "folder") in result.stderr
    assert "disk" not in result.stderr


def test_overwrite_by_a_diverging_run_keeps_the_good_run(cli, small_config, tmp_path):
    good = small_config()
    assert cli("run", good, "-q").code == 0
    run = tmp_path / "run"
    kept = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.csv", "summary.json")}
    bad = small_config("bad.yaml", optimizer={"name": "sgd", "lr": 1.0e6}, train={"epochs": 5})
    result = cli("run", bad, "-q", "--overwrite")
    assert result.code == 1, result
    assert "diverged" in result.stderr and "put the previous run back" in result.stderr
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert not (run / ".previous-run").exists()


def test_overwrite_by_a_finished_run_replaces_the_old_one(cli, small_config, tmp_path):
    assert cli("run", small_config(), "-q").code == 0
    assert cli("run", small_config(train={"epochs": 2}), "-q", "--overwrite").code == 0
    run = tmp_path / "run"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    assert not (run / ".previous-run").exists()


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr/lib/x", "/proc/self", "HOME"])
def test_system_folders_are_not_run_folders(cli, small_config, folder):
    folder = str(Path.home()) if folder == "HOME" else folder
    before = sorted(os.listdir(folder)) if folder != "/proc/self" and os.path.isdir(folder) else None
    result = cli("run", small_config(), "-q", "--output-dir", folder)
    assert result.code == 2, result
    assert "system" in result.stderr or "home" in result.stderr
    if before is not None:
        assert sorted(os.listdir(folder)) == before


def test_after_a_failed_write_the_advice_works_when_followed(cli, small_config):
    """`ulimit -f`: a checkpoint cannot be written; the message says what to run next, and it works."""
    import resource

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # config.yaml fits, best.pt does not

    cfg = small_config()
    first = run_process("run", cfg, "-q", preexec_fn=limit_file_size)
    assert first.returncode == 1, first.stderr
    assert "could not be written" in first.stderr and "ulimit -f" in first.stderr
    assert "to start again: " in first.stderr, first.stderr
    advice = shlex.split(first.stderr.split("to start again: ", 1)[1].splitlines()[0])
    assert advice[:2] == ["mse-train", "run"] and advice[-1] == "--overwrite"
    assert cli(*advice[1:], "-q").code == 0  # the command as printed
