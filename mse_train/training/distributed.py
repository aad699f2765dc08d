"""Several processes under torchrun: who we are, the process group, and the few collectives.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 a run is distributed.
The batch stays global: every rank holds the same rows, draws the same permutation and
trains on its own contiguous slice of each global batch. Each rank's loss is its share
of the global batch loss, scaled by the world size for DistributedDataParallel's averaging
all-reduce, so the gradients add up to those of the global batch and the update is the one
a single process would make.

Nothing here is touched when WORLD_SIZE is unset or 1: one process runs no collectives.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from mse_train.config import Config
from mse_train.errors import ConfigError, EnvironmentProblem, MseTrainError, PeerLost

# How long a rank waits for the others (rendezvous, a collective) before it fails instead
# of hanging: long enough for rank 0 to write a large checkpoint while the others wait.
TIMEOUT = timedelta(seconds=float(os.environ.get("MSE_TRAIN_DIST_TIMEOUT", "1800")))


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun processes."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes outputs and shows progress."""
        return self.rank == 0


def from_environment() -> World | None:
    """The World torchrun describes, or None for a single process (WORLD_SIZE unset or 1)."""
    raw = {name: os.environ.get(name) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if raw["WORLD_SIZE"] in (None, "", "1"):
        return None
    try:
        size, rank, local = (int(raw[name] or "") for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise EnvironmentProblem(
            f"WORLD_SIZE={raw['WORLD_SIZE']}, RANK={raw['RANK']}, LOCAL_RANK={raw['LOCAL_RANK']} "
            "do not describe a torchrun process",
            ["start several processes with torchrun, or unset WORLD_SIZE to run one"],
        ) from None
    if not 0 <= rank < size or local < 0:
        raise EnvironmentProblem(f"RANK={rank} is not within WORLD_SIZE={size}")
    return World(rank, size, local)


def check_config(cfg: Config, world: World) -> None:
    """What a distributed run cannot do exactly: every problem in one ConfigError."""
    problems = []
    batch = cfg.train.batch_size
    if batch is not None and batch % world.size:
        problems.append(
            f"train.batch_size is {batch}, which {world.size} processes cannot share evenly: "
            f"the batch is global, each process takes batch_size / {world.size} rows; "
            f"use a multiple of {world.size} (e.g. {max(world.size, batch // world.size * world.size)})"
        )
    if cfg.optimizer.name == "lbfgs":
        problems.append(
            "optimizer.name is lbfgs, which mse-train does not run under torchrun "
            "(its line search would need every closure call all-reduced); "
            "run it in one process, or choose adam or sgd"
        )
    if getattr(cfg.model, "norm", None) == "batch_norm":
        problems.append(
            "model.norm is batch_norm, whose batch statistics each process would take over its "
            "own rows only (so the run would not be the one-process run); "
            "use model.norm: layer_norm under torchrun"
        )
    if cfg.train.bags > 1:
        problems.append(
            f"train.bags is {cfg.train.bags}, and a bagged run trains in one process (its bags "
            "side by side); run it without torchrun, or set train.bags: 1"
        )
    if problems:
        raise ConfigError(f"this config cannot train in {world.size} processes", problems)


def device_for(device: torch.device, world: World) -> torch.device:
    """One GPU per LOCAL_RANK (cuda:LOCAL_RANK); the CPU stays the CPU."""
    if device.type != "cuda":
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise EnvironmentProblem(
            f"LOCAL_RANK {world.local_rank} has no GPU: only {torch.cuda.device_count()} on this machine",
            ["start at most one process per GPU (torchrun --nproc-per-node)"],
        )
    return torch.device("cuda", world.local_rank)


_JOINED: list[bool] = []  # one True once this process has joined a process group


def joined() -> bool:
    """Whether this process joined a process group (so gloo's threads may still run)."""
    return bool(_JOINED)


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The default process group for the run (nccl on CUDA, gloo on CPU), destroyed after."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
        _JOINED.append(True)
    except (RuntimeError, ValueError) as exc:
        raise EnvironmentProblem(
            f"cannot join the other processes ({backend}): {(str(exc).splitlines() or ['?'])[0]}",
            ["check the torchrun --rdzv-endpoint and that every node can reach it"],
        ) from None
    try:
        yield
    except PeerLost:
        raise  # nobody is left to wait for
    except MseTrainError:  # decided alike on every rank (interrupted, diverged): leave together
        _leave_together()
        raise
    except RuntimeError as exc:
        if not peer_lost(exc):
            raise
        raise lost_peer(exc) from None
    else:
        # Rank 0 saves after the loop while the others are done; a rank that tears its gloo
        # connections down while a peer still holds them can abort at exit (SIGABRT,
        # "terminate called without an active exception"), so all ranks leave together.
        _leave_together()
    finally:
        dist.destroy_process_group()


def _leave_together() -> None:
    try:
        dist.barrier()
    except RuntimeError as exc:
        if not peer_lost(exc):
            raise
        raise lost_peer(exc) from None


# What a collective raises when a peer process is gone (killed, out of memory, its machine
# down) or stops answering: gloo's socket errors and timeouts arrive as plain RuntimeErrors
# ("[gloo] Connection reset by peer", "Connection closed by peer", "Timed out waiting ...
# for recv operation"), newer torch raises DistError subclasses, NCCL names itself.
_PEER_GONE = ("connection", "broken pipe", "timed out", "[gloo]", "gloo/transport", "nccl")


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc`, raised in a collective, means another process of the job is gone."""
    if isinstance(exc, PeerLost | getattr(dist, "DistError", PeerLost)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _PEER_GONE)


def lost_peer(exc: BaseException, problems: list[str] | None = None) -> PeerLost:
    """The error to report for `exc` (see `peer_lost`): what happened, not a traceback."""
    if isinstance(exc, PeerLost):
        exc.problems.extend(problems or [])
        return exc
    rank = dist.get_rank() if dist.is_initialized() else os.environ.get("RANK", "?")
    # gloo's text: "[.../pair.cc:537] Read error [127.0.0.1]:15237: Connection reset by peer. This is ..."
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". ")[0].rstrip(".")
    return PeerLost(
        f"another process of this torchrun job died or stopped answering, so rank {rank} "
        f"stopped too ({detail})",
        [
            *(problems or []),
            "torchrun's report names the process that failed and why (killed, out of memory, ...)",
        ],
    )


def barrier() -> None:
    """Wait until every rank is here (so rank 0 writes only after all have read)."""
    dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel, with DDP's own C++ all-reduce (an average).

    No Python comm hook: a hook's tensors and callbacks would be freed by gloo's worker
    threads, which then need the GIL, and at interpreter exit that aborts the process
    (see _KEPT). Step scales each rank's loss by the world size, so the average is a sum.
    """
    ids = [device.index] if device.type == "cuda" else None
    # No buffers to keep in step (MLPs), so no per-forward sync; the flag was renamed in torch 2.13.
    ddp_class = nn.parallel.DistributedDataParallel
    renamed = "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters
    if renamed:
        ddp = ddp_class(model, device_ids=ids, forward_sync_buffers=False)
    else:
        ddp = ddp_class(model, device_ids=ids, broadcast_buffers=False)
    return ddp


# Every tensor handed to a collective stays referenced from Python until the process ends.
# A gloo worker thread drops its own reference when it destroys the finished work, which
# can happen after the main thread has returned from the collective (a barrier keeps
# earlier works alive until it is destroyed itself). Were Python's reference gone by then,
# that thread would need the GIL to free the tensor's Python object; if the main thread is
# already finalizing the interpreter, CPython ends the thread (cpython#87135) in the middle
# of a noexcept C++ destructor and the process aborts: "terminate called without an active
# exception", SIGABRT, seen 1 run in 40 under load before this list existed. Per batch the
# stop flag reuses one tensor; the per-epoch metric tensors are a few floats each.
_KEPT: list[torch.Tensor] = []
_FLAGS: dict[torch.device, torch.Tensor] = {}


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (returned for chaining)."""
    _KEPT.append(tensor)
    dist.all_reduce(tensor)
    return tensor


def from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's `tensor` on every rank, in place: one set of numbers decides for all."""
    _KEPT.append(tensor)
    dist.broadcast(tensor, src=0)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any (a stop request seen by one rank)."""
    value = _FLAGS.setdefault(device, torch.zeros(1, device=device))
    value.fill_(1.0 if flag else 0.0)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
