"""Torch modules trained side by side in forked processes: bags and folds that do not stack.

A config that does not stack (TabM, ResNet, dropout, L-BFGS) trains one torch module at a
time, with one CPU thread, and leaves the other CPUs idle. Its bags (`run`) and its folds
(`cv`, init's race) are independent trainings, so `map` runs them in processes of their
own, forked from the command (the children share its rows copy-on-write and import
nothing), up to `workers` at once, and hands back what each returns, in order. What a
child `tell`s on the way (a bag's epoch records) reaches the command while it waits, so
its progress is shown as it happens, not when the training has ended.

A training's result does not depend on where it runs: a fold builds and trains in one
call, in a child as in the parent; a bag trains from `rng.torch_state`, the global torch
generator (dropout's) as its own build left it, so bag j draws the same masks whichever
bags trained before it or beside it.

Forked only from a process that runs torch with one thread (a fork after OpenMP ran
several is not safe) and no other Python thread (MLflow's, TensorBoard's: a lock one of
them held would stay locked in the child) but those made `fork_safe`, on Linux (on macOS a
fork after torch's libraries loaded is not safe either), on a CPU; `train.processes` caps
the count (1: one after another). The one other thread such a process has is the
allocator's (pyarrow's jemalloc), which prepares itself for a fork.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from mse_train import runtime
from mse_train.training import rng
from mse_train.training.loop import Loop
from mse_train.training.records import Status

T = TypeVar("T")
ORPHAN_POLL = 0.2  # seconds between a child's checks that the command is still there


def workers(setting: int | str, tasks: int, device: torch.device) -> int:
    """How many processes run `tasks` trainings: `train.processes` (auto: one per usable
    CPU), at most one per task; 1 where forking is not safe (see the module's docstring)."""
    if tasks < 2 or device.type != "cpu" or not sys.platform.startswith("linux"):
        return 1
    if torch.get_num_threads() != 1 or any(t not in _FORK_SAFE for t in _other_threads()):
        return 1
    count = runtime.usable_cpus() if setting == "auto" else int(setting)
    return max(1, min(tasks, count))


def fork_safe(thread: threading.Thread) -> None:
    """Let `map` fork beside `thread`: one that prepares itself for a fork (it takes a lock
    that `os.register_at_fork` takes before any fork, so no fork lands in the middle of its
    work) and whose state no child touches (the sweep's heartbeat, selection/storage.py)."""
    _FORK_SAFE.add(thread)


_FORK_SAFE: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def _other_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.current_thread()]


def map(
    work: Callable[[int], T],
    tasks: int,
    count: int,
    should_stop: Callable[[], bool],
    heard: Callable[[int, Any], None] | None = None,
) -> Generator[T, None, None]:
    """`work(0)`, ..., `work(tasks - 1)`, each in a forked process, `count` at a time; yields
    what each returned (it must pickle), in order, as soon as it is ready. `should_stop` is
    polled while waiting: when it says so, nothing more is yielded. Closing the generator
    (or leaving it early) kills the processes still running. A task that raises fails the
    command, with the child's traceback. `heard(j, message)` gets what task j `tell`s, in
    the order told, while the command waits, and all of it before task j's result."""
    global _WORK, _TOLD
    context = multiprocessing.get_context("fork")
    _WORK = work
    _TOLD = context.SimpleQueue() if heard is not None else None
    told = _TOLD

    def listen() -> None:
        while told is not None and heard is not None and not told.empty():
            heard(*told.get())

    with warnings.catch_warnings():  # Python 3.12+ warns of any other OS thread (see the docstring)
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pool = context.Pool(count, initializer=_child_signals)
    try:
        pending = [pool.apply_async(_child, (j,)) for j in range(tasks)]
        for result in pending:
            while not result.ready():
                listen()
                if should_stop():
                    return
                result.wait(0.1)
            kind, value = result.get()
            listen()  # a child tells before it returns: all it told is here by now
            if kind == "error":
                raise RuntimeError(f"a training in a process of its own failed:\n{value}")
            yield value
    finally:
        try:
            pool.terminate()
            pool.join()
        except AssertionError:
            # CPython's Pool refuses to terminate when its result thread has ended with
            # results pending ("Cannot have cache with result_hander not alive"; seen once,
            # in CI, on an interrupted bagged run): end its processes directly.
            for child in multiprocessing.active_children():
                child.kill()
                child.join()
        if told is not None:
            told.close()
        _WORK = _TOLD = None


def tell(message: Any) -> None:
    """In a task of `map`: hand `message` (it must pickle) to the command's `heard` now;
    anywhere else, nothing."""
    if _TOLD is not None and _TASK is not None:
        _TOLD.put((_TASK, message))


_WORK: Callable[[int], Any] | None = None  # set before the fork; the children call it
_TOLD: Any = None  # the queue to the command, made before the fork
_TASK: int | None = None  # in a child: the task it runs


def _child_signals() -> None:
    """A child leaves Ctrl-C to the command (which kills it), dies at SIGTERM (the pool's),
    and ends itself, quietly, once the command is gone: killed by SIGKILL, the command
    terminates no pool, and a child would train its task to the end, then print a
    BrokenPipeError traceback from its pool's result pipe into the user's terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    command = os.getppid()
    threading.Thread(target=_end_with, args=(command,), name="apart-command-watch", daemon=True).start()


def _end_with(command: int) -> None:
    """End this process once its parent, `command`, is gone (it is then another's child)."""
    while os.getppid() == command:
        time.sleep(ORPHAN_POLL)
    os._exit(1)


def _child(j: int) -> tuple[str, Any]:
    global _TASK
    _TASK = j
    try:
        assert _WORK is not None
        return "ok", _WORK(j)
    except BaseException:  # shown by the command as a bug, with this traceback
        return "error", traceback.format_exc()
    finally:
        _TASK = None


# ------------------------------------------------------------------ bags
@dataclass
class Trained:
    """How one model of a loop ended, with its best weights (state_dict) where it trained apart."""

    status: Status
    epochs: int
    reason: str
    best_epoch: int
    best_loss: float
    history: list[dict[str, Any]]
    weights: dict[str, torch.Tensor] | None = None


@dataclass
class Outcome:
    """One loop's run in a process: each model's record (its epoch records were told)."""

    models: list[Trained]


def trained(loop: Loop, i: int) -> Trained:
    """Model i of a loop that has run, as it ended (its weights stay in the loop)."""
    status, epochs, reason = loop.status_of(i)
    return Trained(status, epochs, reason, loop.best_epoch_of(i), loop.best_loss_of(i), loop.history_of(i))


def train_loop(loop: Loop, start: rng.Torch) -> Outcome:
    """In a child: train `loop` from `start`, torch's generators right after the loop was
    built (`rng.torch_state`), telling each epoch's record as it ends; its outcome, with each
    model's best weights (a diverged model has none: it fails the run)."""
    rng.set_torch_state(start, torch.device("cpu"))  # children train on the CPU only (`workers`)
    loop.run(tell)  # each epoch's record, shown by the command as the epoch ends
    models = []
    for i in range(loop.k):
        model = trained(loop, i)
        if model.status is not Status.DIVERGED:
            model.weights = {k: v.clone() for k, v in loop.models.best_model(i).state_dict().items()}
        models.append(model)
    return Outcome(models)
