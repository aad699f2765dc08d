"""A run's loss.png drawn by a process beside the command, so that importing matplotlib and a
first drawing (about 0.6 s of a small run's start-up, bench/startup.py) overlap with importing
torch and training instead of following them.

`beside(True)` starts a child Python where a second CPU is free for it. The child ignores
Ctrl-C, imports plots.py, draws a throwaway loss figure into memory (the fonts and the Agg
renderer are then ready), and waits on stdin for one job: the name of a plots.py `write_*`
function and its arguments, pickled and prefixed by their length (the pipe joins two
processes of this same program; the length, not an end of file, ends the job, since a
process forked from the command holds the pipe open too). It writes the file as that function
does (atomically), answers `ok` on stdout and exits. The command kills a child it gives no
job; one whose command is gone exits at the end of its stdin.

Whatever goes wrong on that path (one CPU, MSE_TRAIN_DRAWER=0, a child that does not start,
dies or hangs, an error while drawing), the command draws the figure itself, as it did before
the drawer: the same file, the same messages and errors (a drawing error is thus met twice;
it is rare).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import mse_train
from mse_train import runtime

# The plots.py functions a drawer draws.
JOBS: Final = ("write_loss_plot",)
WAIT: Final = 60.0  # seconds to wait for the child's answer before drawing the figure here
OK: Final = b"ok"
ENVIRONMENT: Final = "MSE_TRAIN_DRAWER"  # "0": draw in the command's process
_LENGTH: Final = struct.Struct("<Q")
DRAWN: Final = "matplotlib.backends.backend_agg"  # imported by a process's first PNG drawing
# The child's path: this mse_train's folder first, and not the current folder (which `-c`
# puts first, where a stray matplotlib.py would be imported).
_CHILD: Final = (
    "import sys; sys.path[:] = [sys.argv[1], *filter(None, sys.path)]; "
    "from mse_train.outputs import drawer; drawer.main()"
)


# What handing a job over can raise: a pipe gone (the child died), arguments that do not
# pickle, no answer within WAIT.
_UNANSWERED: Final = (
    OSError,
    ValueError,
    TypeError,
    AttributeError,
    pickle.PicklingError,
    subprocess.SubprocessError,
)


class Drawer:
    """Draws plots.py figures: in the process beside the command when one is ready, else here."""

    def __init__(self, child: subprocess.Popen[bytes] | None = None) -> None:
        self._child = child

    @property
    def beside(self) -> bool:
        """Whether a process beside the command takes the next job."""
        return self._child is not None

    def draw(self, job: str, *args: Any) -> None:
        """plots.<job>(*args): by the child when it answers `ok`, else here."""
        if job not in JOBS:
            raise ValueError(f"not a drawer job: {job}")
        if not self._handed(job, args):
            from mse_train.outputs import plots  # matplotlib: imported only when plotting here

            getattr(plots, job)(*args)

    def _handed(self, job: str, args: tuple[Any, ...]) -> bool:
        child, self._child = self._child, None  # one job per child
        if child is None:
            return False
        try:
            payload = pickle.dumps((job, args), protocol=pickle.HIGHEST_PROTOCOL)
            answer, _ = child.communicate(_LENGTH.pack(len(payload)) + payload, timeout=WAIT)
        except _UNANSWERED:
            answer = b""
        finally:  # a Ctrl-C while waiting leaves no child behind either
            _end(child)
        return answer == OK

    def close(self) -> None:
        """Stop a child that got no job."""
        child, self._child = self._child, None
        if child is not None:
            _end(child)


def _end(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=WAIT)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def start(enabled: bool) -> Drawer:
    """A drawer with a child beside the command when `enabled`, this process has drawn nothing
    yet (after its first drawing another costs ~0.15 s here), a second CPU is free for it and
    MSE_TRAIN_DRAWER is not "0"; else one that draws in the command's process."""
    if not enabled or DRAWN in sys.modules or os.environ.get(ENVIRONMENT, "1") == "0":
        return Drawer()
    if runtime.usable_cpus() < 2:
        return Drawer()
    try:
        return Drawer(spawn())
    except (OSError, ValueError, subprocess.SubprocessError):
        return Drawer()


def spawn() -> subprocess.Popen[bytes]:
    """The child, importing this same mse_train wherever the command found it."""
    root = str(Path(mse_train.__path__[0]).resolve().parent)
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def beside(enabled: bool) -> Iterator[Drawer]:
    """`start(enabled)`, closed at the end of the block whatever happens."""
    drawer = start(enabled)
    try:
        yield drawer
    finally:
        drawer.close()


def _warm(plots: Any) -> None:
    """Draw a throwaway loss figure: a process's first drawing loads the fonts and sets up the
    renderer, which the job then finds done."""
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.5 / e, "lr": 0.01} for e in (1, 2, 3)]
    plots.loss_figure(history, 2, "loss").savefig(io.BytesIO(), format="png")


def _read(stream: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return b""  # the command is gone
        data += chunk
    return data


def main() -> None:
    """The child: warm up, take one job from stdin, draw it, answer `ok`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the command, which ends us
    from mse_train.outputs import plots

    _warm(plots)
    header = _read(sys.stdin.buffer, _LENGTH.size)
    if not header:
        sys.exit(0)
    (size,) = _LENGTH.unpack(header)
    job, args = pickle.loads(_read(sys.stdin.buffer, size))
    if job not in JOBS:
        sys.exit(1)
    getattr(plots, job)(*args)
    sys.stdout.buffer.write(OK)
    sys.stdout.buffer.flush()
    os._exit(0)  # the file is written and synced: skip the teardown that the command would wait for
