"""`mse-train init`'s race: the starter's candidate configs scored by K-fold CV on the table.

Each candidate is the config `init` would write, cross-validated as `mse-train cv` does it
(cv.py: each fold's preprocessing fitted on its own rows, the folds packed into one stack
where the config packs), on at most MAX_ROWS rows (a seeded sample of larger tables). All
candidates share one time budget: a candidate still training when it runs out is stopped
at the next batch and reported as not finished, and those after it do not start.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mse_train.config.schema import Config
from mse_train.data import prepare
from mse_train.errors import UserError
from mse_train.selection import cv
from mse_train.training.records import Status
from mse_train.training.stack import pack_key

MAX_ROWS = 4000  # rows raced on (a seeded sample of larger tables)
FOLDS = 5


def clock() -> float:
    """The race's clock, in seconds (tests replace it to make the budget run out)."""
    return time.perf_counter()


@dataclass(frozen=True)
class Entry:
    """One candidate's result: mean CV R² over the folds, or why there is none."""

    name: str
    r2: float | None  # None: it did not finish (see `note`)
    seconds: float
    packed: bool  # its folds trained side by side as one stack
    note: str = ""  # "not finished in the budget", "diverged: ...", ...


def sample(loaded: prepare.Loaded, rows: int, seed: int) -> prepare.Loaded:
    """`loaded` with at most `rows` of its rows, drawn with `seed` (kept in file order)."""
    n = loaded.table.n_rows
    if n <= rows:
        return loaded
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:rows])
    frame = loaded.table.frame.iloc[keep]
    return dataclasses.replace(loaded, table=loaded.table.with_frame(frame))


def run(
    candidates: Sequence[tuple[str, Config]],
    loaded: prepare.Loaded,
    budget: float,
    device: torch.device,
) -> list[Entry]:
    """Cross-validate each candidate on `loaded`, in order, within `budget` seconds in all."""
    deadline = clock() + budget

    def out_of_time() -> bool:
        return clock() >= deadline

    entries = []
    for name, cfg in candidates:
        together = pack_key(cfg) is not None
        if out_of_time():
            entries.append(Entry(name, None, 0.0, together, "not started: the budget was spent"))
            continue
        started = clock()
        try:
            result = cv.cross_validate(cfg, FOLDS, device, should_stop=out_of_time, loaded=loaded)
        except UserError as exc:  # e.g. a fold too small to hold out validation rows
            entries.append(Entry(name, None, clock() - started, together, f"failed: {exc.summary}"))
            continue
        seconds = clock() - started
        if result.status is Status.INTERRUPTED:
            entries.append(Entry(name, None, seconds, together, "not finished in the budget"))
        elif result.status is Status.DIVERGED:
            entries.append(Entry(name, None, seconds, together, f"diverged: {result.reason}"))
        else:
            r2 = cv.mean_std(result.per_fold)["r2"]["mean"]
            note = "" if r2 is not None else "no R²: a fold's target is constant"
            entries.append(Entry(name, r2, seconds, together, note))
    return entries


def winner(entries: Sequence[Entry]) -> Entry | None:
    """The finished candidate with the highest CV R² (the first of equals); None if none finished."""
    finished = [e for e in entries if e.r2 is not None]
    return max(finished, key=lambda e: e.r2 or 0.0) if finished else None
