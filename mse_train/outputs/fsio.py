"""Write files so that a crash never leaves a half-written one behind.

Every file goes to a temporary name in the same folder, is flushed and fsynced, then
moved over the old one with `os.replace`, which is atomic on POSIX and Windows. A reader
sees the old file or the new one, never a mix. The folder is fsynced so that the rename
itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mse_train.errors import OutputError, SaveError


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path`; on clean exit it replaces `path` atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files a killed process left behind (they were never complete)."""
    for stale in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, turning OS errors into a SaveError."""
    try:
        with atomic_open(path) as f:
            f.write(data)
    except OSError as exc:
        raise save_error(path, exc) from None


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_error(path: Path, exc: OSError) -> SaveError:
    reason = exc.strerror or str(exc)
    return SaveError(
        f"{path}: could not be written: {reason}",
        [
            "the previous version of this file, if any, is intact",
            "free disk space or fix permissions, then rerun (with --resume to continue)",
        ],
    )


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_writable_dir(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written there, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(
            f"{folder}: the output folder cannot be written: {exc.strerror or exc}",
            ["choose another folder with `--output-dir` or `output.dir`, or fix its permissions"],
        ) from None
