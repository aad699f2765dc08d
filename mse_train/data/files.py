"""What kind of thing a path names, so that only regular files are read as input.

A FIFO, a device or a socket reports a size of 0 and opening one can block forever
waiting for a writer: every reader of input files (CSV tables, checkpoints, metrics.csv)
asks here first and says plainly what the path is instead.
"""

from __future__ import annotations

import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def irregular_kind(path: Path) -> str | None:
    """None for a regular file (or a symlink to one, or a missing path); else what it is."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # missing or unreadable: the caller's open() says which
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular_message(path: Path, kind: str) -> str:
    """The one summary line for an input path that is not a regular file."""
    return f"{path}: is {kind}, not a regular file"
