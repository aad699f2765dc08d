"""Rows of a memory-mapped cache entry, read in blocks: what training reads when the table's
arrays do not fit `data.memory_budget` (stream_fit.py decides, and fits the preprocessing).

The table is cut into blocks of BLOCK_ROWS consecutive rows of the file. One epoch reads
every block once, the blocks in an order drawn from the training loop's shuffle generator,
and the rows of each block in an order of their own: a permutation drawn from a numpy
generator seeded by one 63-bit number per block, all of them drawn from the shuffle
generator when the epoch starts. The batches are then consecutive slices of that stream
of rows (a batch may span the end of one block and the start of the next). This is not a
uniform shuffle of the whole table: the rows of one batch come from one or two blocks of
65,536 rows, so a file sorted by a column gives batches that each cover a narrow range of
it. Shuffle such a file once before training.

Everything an epoch draws is drawn when it starts, so resuming inside an epoch draws it
again from the stored generator state and skips the batches already done, without reading
their blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mse_train import runtime
from mse_train.data.cache import Entry
from mse_train.data.preprocess import MISSING_CATEGORY, Preprocessor
from mse_train.errors import DataError

BLOCK_ROWS = 1 << 16  # rows of the file per block: ~6 MB for 24 columns of float32


@dataclass
class Encoder:
    """`Preprocessor.features_array` / `targets_array` on cache columns: the same float32 steps."""

    pre: Preprocessor
    entry: Entry
    path: Path

    def __post_init__(self) -> None:
        pre = self.pre
        self.mean = np.array([c.mean for c in pre.numeric], dtype=np.float32)
        self.std = np.array([c.std for c in pre.numeric], dtype=np.float32)
        self.fill = np.array(
            [c.fill if c.fill is not None else np.nan for c in pre.numeric], dtype=np.float32
        )
        self.y_mean = np.array([t.mean for t in pre.targets], dtype=np.float32)
        self.y_std = np.array([t.std for t in pre.targets], dtype=np.float32)
        # Per categorical column: cache code + 1 -> position in the fitted categories (-1: none).
        self.lookups: list[np.ndarray] = []
        for col in pre.categorical:
            index = {c: i for i, c in enumerate(col.categories)}
            vocab = self.entry.vocabularies[col.name]
            empty = index.get(MISSING_CATEGORY, -1) if pre.missing in ("mean", "median") else -1
            self.lookups.append(np.array([empty, *(index.get(v, -1) for v in vocab)], dtype=np.int64))
        widths = [1 if pre.embedded else len(c.categories) for c in pre.categorical]
        self.inputs = len(pre.numeric) + sum(widths)

    def x(self, start: int, stop: int, rows: np.ndarray | None) -> np.ndarray:
        """Inputs of rows `start:stop` of the file (only those where `rows` is True)."""
        cols = self.entry.columns

        def pick(column: np.ndarray) -> np.ndarray:
            return column[start:stop] if rows is None else column[start:stop][rows]

        n = (stop - start) if rows is None else int(rows.sum())
        out = np.empty((n, self.inputs), dtype=np.float32)
        width = len(self.pre.numeric)
        block = out[:, :width]
        for j, number in enumerate(self.pre.numeric):
            block[:, j] = pick(cols[number.name])
        if self.pre.missing in ("mean", "median") and width:
            np.copyto(block, np.broadcast_to(self.fill, block.shape), where=np.isnan(block))
        if width:
            with np.errstate(over="ignore", invalid="ignore"):
                block -= self.mean
                block /= self.std
        at = width
        for col, lookup in zip(self.pre.categorical, self.lookups, strict=True):
            codes = pick(cols[col.name])
            where = lookup[codes.astype(np.int64) + 1]
            unknown = (where < 0) & (codes >= 0)
            if unknown.any() and self.pre.unknown_category == "error":
                raise DataError(
                    f"{self.path}, column `{col.name}`: rows hold categories that training never saw",
                    ["train with `data.unknown_category: ignore` (all-zero encoding)"],
                )
            if self.pre.embedded:  # the code column, as preprocess writes it: 1 + place, 0 for none
                out[:, at] = (where + 1).astype(np.float32)
                at += 1
                continue
            part = out[:, at : at + len(col.categories)]
            part[:] = 0.0
            known = np.flatnonzero(where >= 0)
            part[known, where[known]] = 1.0
            at += len(col.categories)
        return out

    def y(self, start: int, stop: int, rows: np.ndarray | None) -> np.ndarray:
        """Scaled targets of rows `start:stop` (only those where `rows` is True)."""
        cols = self.entry.columns
        names = self.pre.target_names
        y = np.empty(((stop - start) if rows is None else int(rows.sum()), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            y[:, j] = cols[name][start:stop] if rows is None else cols[name][start:stop][rows]
        with np.errstate(over="ignore", invalid="ignore"):
            y -= self.y_mean
            y /= self.y_std
        return y


class Rows:
    """Some rows of a mapped table (`mask`, or all), encoded a block at a time."""

    def __init__(self, encoder: Encoder, mask: np.ndarray | None) -> None:
        self.encoder, self.mask = encoder, mask
        total = encoder.entry.rows
        self.starts = list(range(0, total, BLOCK_ROWS))
        self.counts = np.array(
            [
                min(BLOCK_ROWS, total - s) if mask is None else int(mask[s : s + BLOCK_ROWS].sum())
                for s in self.starts
            ],
            dtype=np.int64,
        )
        self.n = int(self.counts.sum())
        runtime.hand_back_large_buffers()  # or the heap grows with every block read (runtime.py)

    def __len__(self) -> int:
        return self.n

    @property
    def inputs(self) -> int:
        return self.encoder.inputs

    @property
    def outputs(self) -> int:
        return len(self.encoder.pre.targets)

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Encoded inputs and targets of block `b`'s rows, in file order."""
        start = self.starts[b]
        stop = min(start + BLOCK_ROWS, self.encoder.entry.rows)
        rows = None if self.mask is None else self.mask[start:stop]
        return self.encoder.x(start, stop, rows), self.encoder.y(start, stop, rows)

    def places(self, b: int) -> np.ndarray:
        """The rows of block `b` as places in the file (0-based data rows), in file order."""
        start = self.starts[b]
        stop = min(start + BLOCK_ROWS, self.encoder.entry.rows)
        return np.arange(start, stop) if self.mask is None else start + np.flatnonzero(self.mask[start:stop])

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every block with rows, in file order (for scoring)."""
        for b in range(len(self.starts)):
            if self.counts[b]:
                yield self.block(b)
                runtime.release_freed_memory()

    def epoch(
        self, generator: torch.Generator | None, size: int, start_batch: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of `size` rows for one epoch, from batch `start_batch` on (see the module
        docstring for the order); `generator` None: blocks and rows in file order."""
        n_blocks = len(self.starts)
        if generator is not None:
            order = torch.randperm(n_blocks, generator=generator).tolist()
            seeds = torch.randint(0, 2**63 - 1, (n_blocks,), generator=generator, dtype=torch.int64).tolist()
        else:
            order, seeds = list(range(n_blocks)), [None] * n_blocks
        skip = start_batch * size
        rest_x = np.empty((0, self.inputs), dtype=np.float32)
        rest_y = np.empty((0, self.outputs), dtype=np.float32)
        for b, seed in zip(order, seeds, strict=True):
            count = int(self.counts[b])
            if skip >= count:  # a block wholly inside the batches already done: not read
                skip -= count
                continue
            x, y = self.block(b)
            if seed is not None:
                perm = np.random.default_rng(seed).permutation(count)
                x, y = x[perm], y[perm]
            if skip:
                x, y, skip = x[skip:], y[skip:], 0
            if len(rest_x):
                x, y = np.concatenate([rest_x, x]), np.concatenate([rest_y, y])
            whole = len(x) - len(x) % size
            for at in range(0, whole, size):
                yield x[at : at + size], y[at : at + size]
            rest_x, rest_y = x[whole:], y[whole:]
            del x, y
            runtime.release_freed_memory()  # the block's buffers, and what the steps freed
        if len(rest_x):
            yield rest_x, rest_y
