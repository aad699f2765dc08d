"""Write files so that a crash never leaves a half-written one behind, and never harm what is not ours.

Every file goes to a temporary name in the same folder, is flushed and fsynced, then
moved over the old one with `os.replace`, which is atomic on POSIX and Windows. A reader
sees the old file or the new one, never a mix. The folder is fsynced so that the rename
itself survives a power cut.

What is at the path is respected: a symlink is written through to its target (the link
stays a link), a device or FIFO is written to directly (a rename would replace the
device node itself), a read-only file is refused, a replaced file keeps its mode (and
owner, where we may set it), and a new file gets the mode the umask gives, as `open()`
would, not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from mse_train.errors import OutputError, SaveError

ZIP_MAGIC = b"PK\x03\x04"  # how a PyTorch checkpoint (a zip archive) starts


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path`; on clean exit it replaces `path` atomically."""
    target = _writable_target(path)
    existing = _stat(target)
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(target, "wb") as f:  # a device, FIFO or socket: write to it, never replace it
            yield f
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~_umask())
            if existing is not None and os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(f.fileno(), existing.st_uid, existing.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output path that `atomic_open` would refuse."""
    _writable_target(path)


def _writable_target(path: Path) -> Path:
    """The file to write for `path` (through symlinks), refusing what must not be replaced."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    parent = target.parent
    if not parent.is_dir():
        where = "does not exist" if not parent.exists() else "is not a folder"
        raise OutputError(
            f"{path}: cannot write here: the folder {parent} {where}",
            [f"create it first (mkdir -p {parent}), or choose another path"],
        )
    existing = _stat(target)
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise OutputError(f"{path}: is a folder; give a file name")
        if stat.S_ISREG(existing.st_mode) and not existing.st_mode & (
            stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        ):
            raise OutputError(
                f"{path}: is read-only; it was left as it is",
                ["choose another path, or make it writable first (chmod u+w) if it may be replaced"],
            )
    return target


def check_not_an_input(path: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output path that is one of the command's inputs, or any checkpoint file."""
    target = Path(os.path.realpath(path))
    for source in inputs:
        if target == Path(os.path.realpath(source)):
            raise OutputError(
                f"{path}: is an input of this command ({source}); writing there would destroy it",
                ["choose another output path"],
            )
    if target.is_file() and target.stat().st_size >= 4:
        with open(target, "rb") as f:
            if f.read(4) == ZIP_MAGIC:
                raise OutputError(
                    f"{path}: holds a checkpoint (or another zip archive); it was left as it is",
                    ["choose another output path"],
                )


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    fix = "free disk space or fix permissions"
    if exc.errno == errno.EFBIG:
        fix = "raise the file-size limit (`ulimit -f`) or free disk space"
    return SaveError(
        f"{path}: could not be written: {reason}",
        ["the previous version of this file, if any, is intact", f"{fix}, then run the command again"],
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
