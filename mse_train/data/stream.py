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

import numpy as np
import torch

from mse_train import runtime
from mse_train.data.preprocess import Encoder

BLOCK_ROWS = 1 << 16  # rows of the file per block: ~6 MB for 24 columns of float32


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
