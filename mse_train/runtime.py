"""The machine a command runs on: which torch device to use, and memory hand-back.

One home for both so that `run`, `eval` and `predict` check a device the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
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
