"""Ctrl-C and SIGTERM: ask the loop to stop after the current batch, so the run can be saved;
and let a command's report of how it ended be written whole, with its exit code, under a SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class StopFlag:
    def __init__(self) -> None:
        self.flag = False

    def requested(self) -> bool:
        return self.flag


@contextmanager
def on_signals(second_stops: bool = True) -> Iterator[StopFlag]:
    """First SIGINT/SIGTERM: finish the batch and save. A second SIGINT stops at once.

    Under torchrun (`second_stops` False) a Ctrl-C reaches each rank twice, from the
    terminal and forwarded by torchrun; stopping at the second would abort a rank in the
    middle of a collective or while rank 0 saves, so every signal only asks to stop.
    """
    stop = StopFlag()
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.flag and signum == signal.SIGINT and second_stops:
            raise KeyboardInterrupt
        stop.flag = True

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def report_first() -> Iterator[None]:
    """For a process's last words: a SIGTERM that arrives in the block waits until it ends,
    and is then let go, as the caller exits right after with the command's own exit code.

    When one torchrun process dies, torchrun's agent sends SIGTERM to the others at about the
    moment they find out themselves; a survivor ended between two lines of its report would
    leave out the lines that matter (which checkpoint is intact, how to resume), and one
    ended by the signal would exit -15 where its exit code says what happened (3: another
    process died). So a rank of a torchrun job (WORLD_SIZE > 1) keeps ignoring SIGTERM
    after the block too, up to its exit (the agent's SIGKILL still ends one that hangs):
    one arriving between the report and the exit (the exit's cleanup) made a survivor exit
    -15 in CI. In the main thread only (elsewhere the block runs as is).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
            signal.signal(signal.SIGTERM, previous)
