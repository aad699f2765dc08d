"""The machine a command runs on: which torch device to use, its free memory, memory hand-back,
and how many CPU threads torch may use.

One home for each so that every command checks a device and sizes its threads the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from collections.abc import Iterator
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


# ------------------------------------------------------------------- threads
THREADS_ENV = "MSE_TRAIN_THREADS"
MAX_THREADS = 1024  # far above any machine's cores; torch crashes on counts like 100,000
THREADS_CHOICES = f"auto or a whole number from 1 to {MAX_THREADS}"
# `auto` never asks for more intra-op threads than this. On an idle 2-core machine a second
# thread trained the models mse-train ships (MLPs up to 128-128) level at batches of 64-256
# and 1.2-1.6x faster at 1024; with a busy process on each core it was 21-45x slower
# (bench/threads.py, bench/results.md "Threads"): one descheduled thread stalls every
# operation. The loss under load is far larger than the gain when idle, so 1 is the default.
AUTO_MAX_THREADS = 1
CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_threads(value: object, setting: str, fix: str = f"use {THREADS_CHOICES}") -> int | None:
    """`auto` -> None, a whole number from 1 to MAX_THREADS (or its digits) -> itself;
    UserError naming `setting` otherwise."""
    if value == "auto":
        return None
    count = _digits(value) if isinstance(value, str) else value
    if type(count) is int and 1 <= count <= MAX_THREADS:
        return count
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + "...'"
    raise UserError(f"{setting} is {shown}, which is not a thread count", [fix])


def _digits(text: str) -> int | None:
    """`"12"` -> 12; None for anything but a few ASCII digits (int() refuses 4,300 and more)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None


def resolve_threads(setting: int | str = "auto", where: str = "train.threads") -> int:
    """The thread count a command uses, first found of:

    1. the environment variable MSE_TRAIN_THREADS, for every command (`auto` or a number);
    2. an explicit `setting` (`train.threads: 4`);
    3. for `auto`, the user's OMP_NUM_THREADS or MKL_NUM_THREADS, as torch itself reads them
       (torchrun sets OMP_NUM_THREADS=1 for its ranks when it is unset);
    4. `auto_threads()`.
    """
    env = os.environ.get(THREADS_ENV, "")
    if env != "":
        fix = f"set {THREADS_ENV} to {THREADS_CHOICES}, or unset it (`unset {THREADS_ENV}`)"
        count = parse_threads(env, f"the environment variable {THREADS_ENV}", fix)
    else:
        count = parse_threads(setting, where)
    if count is not None:
        return count
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        count = _digits(os.environ.get(name, "").strip())
        if count is not None and 1 <= count <= MAX_THREADS:
            return count
    return auto_threads()


def auto_threads(root: Path = CGROUP_ROOT) -> int:
    """This process's share of the CPUs it may use, at most AUTO_MAX_THREADS: the CPUs of its
    affinity and its cgroup's CPU quota, divided among the processes torchrun started on
    this machine (LOCAL_WORLD_SIZE)."""
    ranks = max(1, _digits(os.environ.get("LOCAL_WORLD_SIZE", "1")) or 1)
    return max(1, min(AUTO_MAX_THREADS, usable_cpus(root) // ranks))


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (its affinity), lowered to its cgroup's CPU quota, rounded up."""
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS or Windows
    cpus = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cpu_quota(root: Path = CGROUP_ROOT, own: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup quota allows (1.5 = 150 ms per 100 ms), None without one.

    cgroup v2 `cpu.max` ("max 100000" or "150000 100000") and v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us` (-1 = none), read at `root` and in the process's own group from
    `own` (/proc/self/cgroup), which is where docker and systemd put a limit.
    """
    v2 = [root]
    v1 = [root / "cpu", root / "cpu,cpuacct"]
    with contextlib.suppress(OSError), open(own, encoding="utf-8") as lines:
        for line in lines:
            _, controllers, group = line.rstrip("\n").split(":", 2)
            if group in ("", "/"):
                continue
            if controllers == "":
                v2.append(root / group.lstrip("/"))
            elif "cpu" in controllers.split(","):
                v1 += [folder / group.lstrip("/") for folder in v1[:2]]
    found: list[float] = []
    for folder in v2:
        with contextlib.suppress(OSError, ValueError):
            quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()
            if quota != "max" and int(period) > 0:
                found.append(int(quota) / int(period))
    for folder in v1:
        with contextlib.suppress(OSError, ValueError):
            quota_us = int((folder / "cpu.cfs_quota_us").read_text(encoding="ascii"))
            period_us = int((folder / "cpu.cfs_period_us").read_text(encoding="ascii"))
            if quota_us > 0 and period_us > 0:
                found.append(quota_us / period_us)
    return min(found) if found else None


_found: list[bool] = []  # the mode that `zero_denormals` found, while it is to be put back


def zero_denormals() -> None:
    """Compute floats below float32's normal range (~1.2e-38) as zero from now on
    (torch.set_flush_denormal: the CPU's flush-to-zero and denormals-are-zero modes), noting
    the mode found for `restore_denormals`. Arithmetic on such numbers runs many times
    slower on x86, and a long training reaches them: a bagged run's epochs went from 0.075 s
    to 0.43 s after its 95th (bench/results.md, "Denormal numbers"). Called before torch's
    worker threads start, it holds for them too: a thread's floating-point environment is
    its creator's."""
    import torch

    if not _found:
        _found.append(bool((torch.tensor([1e-39]) * 1.0).item() == 0.0))  # flushed already
    torch.set_flush_denormal(True)  # False where the CPU cannot: nothing changes then


def restore_denormals() -> None:
    """After a command or a Python API call: the floating-point mode `zero_denormals` found
    put back (a command's process ends anyway; a test's, or the API's caller's, goes on with
    its own mode)."""
    if _found and not _found.pop():
        import torch

        torch.set_flush_denormal(False)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal numbers computed as zero inside, as every command computes them, and the
    caller's mode put back after: the Python API trains as the commands do (the same
    weights) without changing its caller's floating-point environment."""
    zero_denormals()
    try:
        yield
    finally:
        restore_denormals()


def use_threads(
    setting: int | str = "auto", where: str = "train.threads", flush_denormals: bool = True
) -> int:
    """Resolve the thread count (`resolve_threads`) and give it to torch, before any work.

    torch's inter-op pool can only be sized before its first parallel work; where that has
    happened (a second call in one process) it keeps its size and only the intra-op count
    changes.

    `flush_denormals` (every command; the Python API passes False and flushes only while
    it trains): denormal numbers are computed as zero (`zero_denormals`), before any work.
    """
    import torch

    if flush_denormals:
        zero_denormals()
    count = resolve_threads(setting, where)
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # "cannot set number of interop threads after ..."
        torch.set_num_interop_threads(count)
    return count
