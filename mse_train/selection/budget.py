"""A sweep's time budget: `sweep.time_limit` holds for the whole command, its refit included.

The search stops asking for trials, and cuts the packs in flight, early enough to leave the
refit of the winner the time it needs. That time is measured, not guessed: a few batches of
each model shape trained alone, as the refit trains it, give its seconds per row and epoch
(a trial's own seconds are its share of a pack, which a model alone does not get); the
refit trains the winner's epochs on every training row, after reading the table again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from mse_train.config.schema import Config
from mse_train.data.prepare import Prepared

# The estimate's share more: a probe of a few batches, timed once at the start, is not the
# refit minutes later on a shared machine (its load went 3.4-5.3 during one 300 s sweep).
MARGIN = 1.5
WRITES = 3.0  # seconds for what the sweep writes after its search (leaderboard, best.yaml,
# sweep.png, the refit's checkpoint and loss.png), on top of reading the table again
WARM_BATCHES = 3  # not timed: the first steps of a new stack build its buffers
TIMED_BATCHES = 12
PROBE_SECONDS = 0.5  # a slow model is timed on fewer batches


def shape_key(cfg: Config) -> str:
    """What a model's cost per row depends on: its shape, optimizer, batch and precision (not
    its learning rate or penalties: trials that differ only there share one probe)."""
    return json.dumps(
        [
            cfg.model.model_dump(mode="json"),
            cfg.optimizer.name,
            cfg.train.batch_size,
            cfg.train.precision,
        ],
        sort_keys=True,
    )


def seconds_per_row(
    cfg: Config, prepared: Prepared, device: torch.device, copies: int = 1, pack: bool = True
) -> float:
    """One model of `cfg` trained alone (as `run` trains it): seconds per training row and
    epoch, timed on a few of its batches. `copies` > 1: that many, seeded apart, as the
    refit trains sweep.refit_seeds' copies (side by side in one stack where they pack)."""
    from mse_train import recipe
    from mse_train.training.stack import pack_key

    if copies > 1 and not (pack and pack_key(cfg) is not None):
        return copies * seconds_per_row(cfg, prepared, device)
    if copies > 1:
        loop = recipe.build_stack_loop([recipe.seeded(cfg, j) for j in range(copies)], prepared, device)
    else:
        loop = recipe.build_loop(cfg, prepared, device)
    batch_rows = min(cfg.train.batch_size or len(prepared.train), len(prepared.train))
    seen, timed, start = 0, 0, 0.0

    def enough() -> bool:  # called after every batch
        nonlocal seen, timed, start
        seen += 1
        if seen == WARM_BATCHES:
            start = time.perf_counter()
        elif seen > WARM_BATCHES:
            timed += 1
        return timed >= TIMED_BATCHES or (timed > 0 and time.perf_counter() - start >= PROBE_SECONDS)

    loop.run(lambda record: None, enough)
    if timed == 0:  # the training ended (early stopping, divergence) before any batch was timed
        return 0.0
    return (time.perf_counter() - start) / (timed * batch_rows)


@dataclass
class Budget:
    """When the search must stop so that the refit ends by the deadline (epoch seconds).

    `members`: 0 without a refit, 1 for the winner alone, more for sweep.ensemble's steps.
    The reserve covers the refit of the best trial told so far and, while a pack trains, of
    any of its trials at the best epoch it has reached (a refit trains the epochs its trial
    kept as best). An ensemble's refit trains the trials the selection over the trials
    scored so far chooses, one after another (`chosen`: the sum of their refits), and any
    trial of the pack in flight may join them.
    """

    deadline: float | None
    members: int = 1
    chosen: float = 0.0  # with an ensemble: seconds to refit the trials it would choose now
    copies: int = 1  # sweep.refit_seeds: each member trains this many times (per_row holds them all)
    bagged: bool = False  # the copies are the winner's bags (train.bags), each on its share of rows
    read_seconds: float = 0.0  # reading and preparing the table, as the refit does again
    per_row: dict[str, float] = field(default_factory=dict)  # by shape_key
    best: float = 0.0  # seconds to refit the best trial told so far
    live: float = 0.0  # seconds to refit a trial of the pack in flight, at its epoch so far

    @property
    def active(self) -> bool:
        return self.deadline is not None

    def refit_seconds(self, key: str, rows: int, epochs: float) -> float:
        """A refit's training of `epochs` epochs on `rows` rows, for a shape probed before."""
        return self.per_row.get(key, 0.0) * rows * epochs

    def reserve(self) -> float:
        """Seconds the refit needs after the search, should the search stop now (members 0:
        no refit, only the sweep's own files)."""
        if self.members == 0:
            return WRITES
        refit = max(self.best, self.chosen) + self.live if self.members > 1 else max(self.best, self.live)
        return MARGIN * refit + self.read_seconds + WRITES

    def left(self) -> float:
        """Seconds until the deadline (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def time_up(self) -> bool:
        """No time is left for trials: what remains is the refit's."""
        return self.deadline is not None and self.left() <= self.reserve()
