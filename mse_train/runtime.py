"""The machine a command runs on: which torch device to use, its free memory, memory hand-back.

One home for both so that `run`, `eval` and `predict` check a device the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mse_train.errors import EnvironmentProblem, UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device that exists on this machine.

    `setting` names where the value came from (a config key or a command-line option),
    so the message points at what to change.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise UserError(f"{setting} is {name!r}, which is not a device", [f"use {DEVICE_CHOICES}"])
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"{setting} is {name!r} but no CUDA GPU is available to torch {torch.__version__}",
                ["use `auto` or `cpu`, or install a CUDA build of torch"],
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EnvironmentProblem(
                f"{setting} is {name!r} but only {torch.cuda.device_count()} GPU(s) exist",
                [f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}, or `auto`"],
            )
    return device


def release_freed_memory() -> None:
    """Hand memory freed by pandas' parser threads back to the OS.

    glibc keeps freed blocks in per-thread arenas; without this, the parse buffers of a
    large table stay in the process's resident size for the whole run (~2x the table).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
STREAM_MMAP_THRESHOLD = 1 << 19


def hand_back_large_buffers() -> None:
    """Serve every allocation of 512 KiB or more by its own mmap, returned to the OS when freed.

    For a streamed table (data/stream.py). glibc otherwise raises its mmap threshold as
    large buffers are freed (up to 32 MiB) and then carves the multi-megabyte block buffers
    out of its heap, between small objects that live for the whole epoch (the per-batch
    losses), and it cannot reuse or return those holes: measured on 2M rows x 24 columns,
    the process's anonymous memory grew by 230 MB in one streamed epoch (linear in rows),
    11 MB with a fixed 64 KiB threshold. 64 KiB also sent the training step's ~256 KiB
    activations to fresh mmaps, one page-faulted allocation each, which made a streamed
    epoch ~1.7x slower; 512 KiB keeps those in the heap, as fast as no setting, with the
    same flat memory. Idempotent; Linux (glibc) only.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, STREAM_MMAP_THRESHOLD)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (None when it cannot be told).

    On the CPU: the kernel's MemAvailable, lowered to what a cgroup memory limit leaves.
    """
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    found: list[int] = []
    with (
        contextlib.suppress(OSError, ValueError, StopIteration),
        open("/proc/meminfo", encoding="ascii") as lines,
    ):
        kib = next(line for line in lines if line.startswith("MemAvailable:")).split()[1]
        found.append(int(kib) * 1024)
    for limit_file, usage_file in _cgroup_files():
        with (
            contextlib.suppress(OSError, ValueError),
            open(limit_file, encoding="ascii") as f,
            open(usage_file, encoding="ascii") as g,
        ):
            limit = f.read().strip()
            if limit != "max" and int(limit) < 2**60:
                used = int(g.read()) - _reclaimable(Path(usage_file).parent)
                found.append(max(0, int(limit) - used))
    return min(found) if found else None


def _cgroup_files() -> list[tuple[str, str]]:
    """(limit, usage) files of the memory cgroups that hold this process: the root ones, and
    the process's own group from /proc/self/cgroup (a limit set on a child group, as
    `cgexec` or systemd make, is only seen there)."""
    files = [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ]
    with contextlib.suppress(OSError), open("/proc/self/cgroup", encoding="utf-8") as lines:
        for line in lines:
            _, controllers, group = line.rstrip("\n").split(":", 2)
            if group in ("", "/"):
                continue
            if controllers == "":
                files.append((f"/sys/fs/cgroup{group}/memory.max", f"/sys/fs/cgroup{group}/memory.current"))
            elif "memory" in controllers.split(","):
                base = f"/sys/fs/cgroup/memory{group}"
                files.append((f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes"))
    return files


def _reclaimable(folder: Path) -> int:
    """Page cache the kernel drops before it fails an allocation (inactive file pages), which a
    cgroup's usage counts: reading a memory-mapped table fills it (docker's `stats` does the same)."""
    with contextlib.suppress(OSError, ValueError), open(folder / "memory.stat", encoding="ascii") as lines:
        stats = dict(line.split() for line in lines if line.count(" ") == 1)
        return int(stats.get("total_inactive_file", stats.get("inactive_file", 0)))
    return 0
