"""How the console command ends (cli/app.py `main`): once torch is loaded it skips Python's
interpreter teardown, after running the atexit handlers and flushing its output; a
non-daemon thread still running, or an exit that is not a plain code, ends as Python does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import CONFIGS, HANG_GUARD

# Runs `main()` as the console script does, with what a library might leave for the exit.
# (Whether the teardown itself was skipped is a matter of speed: bench/startup.py.)
WRAPPER = """
import atexit, sys, tempfile, threading, time
from pathlib import Path

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
kept = tempfile.TemporaryDirectory(dir=out)  # removed by a weakref finalizer at exit
(out / "tempdir").write_text(kept.name)


if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("ran")
    threading.Thread(target=late, daemon=False).start()
sys.argv = ["mse-train", *sys.argv[3:]]
from mse_train.cli.app import main
main()
"""


def _main(tmp_path: Path, thread: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, str(tmp_path), thread, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )


def _run_args(tmp_path: Path) -> list[object]:
    return ["run", CONFIGS / "linear.yaml", "--set", "train.epochs=2", "-o", tmp_path / "run", "--json"]


def test_a_command_that_loaded_torch_skips_the_teardown_but_not_atexit_or_its_output(tmp_path):
    done = _main(tmp_path, "none", *_run_args(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("{") and done.stdout.strip().endswith("}")  # flushed whole
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not Path((tmp_path / "tempdir").read_text()).exists()  # the finalizer ran
    assert (tmp_path / "run" / "loss.png").exists()


def test_an_error_exits_with_its_code_after_atexit(tmp_path):
    done = _main(tmp_path, "none", "run", tmp_path / "missing.yaml")
    assert done.returncode == 2 and "missing.yaml" in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_non_daemon_thread_still_running_gets_pythons_own_exit(tmp_path):
    done = _main(tmp_path, "thread", *_run_args(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "thread").read_text() == "ran"  # waited for, as Python's exit does
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_command_without_torch_exits_with_its_code_and_output(tmp_path):
    done = _main(tmp_path, "none", "--version")
    assert done.returncode == 0 and done.stdout.startswith("mse-train ")
    assert (tmp_path / "atexit").read_text() == "ran"
