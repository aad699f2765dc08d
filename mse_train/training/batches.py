"""One model's training rows and the batches of an epoch (padded.py does K models' own rows).

The data path is the fast one: each epoch draws one permutation from the model's seeded
generator, gathers the table once into buffers reused every epoch, and takes batches as
slices; full-batch training does no indexing at all. A streamed table (data/stream.py)
gives its batches a block at a time. Under torchrun each batch is this rank's slice of
the global batch, with the divisor that makes its loss a share (step.py). Sample weights
(`data.weight`), when given, travel with their rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mse_train.data.stream import Rows
from mse_train.errors import ConfigError
from mse_train.training.distributed import World

Tensors = tuple[torch.Tensor, torch.Tensor]


class OneTable:
    def __init__(
        self, train: Tensors | Rows, world: World | None, device: torch.device, w: torch.Tensor | None = None
    ) -> None:
        self.world = world
        self.device = device
        self.rows = train if isinstance(train, Rows) else None
        self.w = w  # each row's sample weight, or None
        assert w is None or self.rows is None, "a streamed table has no sample weights (stream_fit refuses)"
        if self.rows is not None and world is not None:
            raise ConfigError(
                "this table is streamed (larger than data.memory_budget), which mse-train does "
                "not do under torchrun yet",
                ["raise data.memory_budget so the table is held in memory, or train in one process"],
            )
        empty = torch.empty((0, 0), device=device)  # stands for a streamed table's tensors
        self.x, self.y = (empty, empty) if isinstance(train, Rows) else train
        self.n = len(train) if isinstance(train, Rows) else len(self.x)
        self._gathered: Tensors | None = None
        self._gathered_w: torch.Tensor | None = None

    def scoring(self) -> Tensors | Rows:
        """The rows to score the weights on when there are no validation rows."""
        return self.rows if self.rows is not None else (self.x, self.y)

    def epoch(
        self, shuffle: torch.Generator | None, size: int, start: int, reduction: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float | None]]:
        """The epoch's batches of `size` rows from batch `start` on, in the order `shuffle`
        draws (None: in order); each with its rows' sample weights (None without them) and
        its divisor under torchrun, else None."""
        n_batches = -(-self.n // size)
        if self.rows is not None:
            generator = shuffle if n_batches > 1 else None
            for xb, yb in self.rows.epoch(generator, size, start):
                yield torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device), None, None
            return
        x, y, w = self.x, self.y, self.w
        if n_batches > 1 and shuffle is not None:
            # int32 indices: half the work of the default int64 for the same permutation size
            order = torch.randperm(self.n, generator=shuffle, dtype=torch.int32)
            x, y, w = self._shuffled(order.to(self.device, non_blocking=True))
        x_batches, y_batches = torch.split(x, size), torch.split(y, size)  # views, made in one call
        w_batches: Sequence[torch.Tensor | None] = [None] * n_batches if w is None else torch.split(w, size)
        if self.world is not None:
            xs, ys, ws, divisors = self._my_slices(x_batches, y_batches, w_batches, reduction)
            for b in range(start, n_batches):
                yield xs[b], ys[b], ws[b], divisors[b]
            return
        for b in range(start, n_batches):
            yield x_batches[b], y_batches[b], w_batches[b], None

    def _shuffled(self, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The training table in `order`, gathered into buffers reused every epoch."""
        if self._gathered is None:
            self._gathered = (torch.empty_like(self.x), torch.empty_like(self.y))
            self._gathered_w = None if self.w is None else torch.empty_like(self.w)
        x, y = self._gathered
        torch.index_select(self.x, 0, order, out=x)
        torch.index_select(self.y, 0, order, out=y)
        if self.w is not None and self._gathered_w is not None:
            torch.index_select(self.w, 0, order, out=self._gathered_w)
        return x, y, self._gathered_w

    def _my_slices(
        self,
        x_batches: Sequence[torch.Tensor],
        y_batches: Sequence[torch.Tensor],
        w_batches: Sequence[torch.Tensor | None],
        reduction: str,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None], list[float]]:
        """This rank's contiguous slice of each global batch, and what its SSE is divided by.

        A batch the ranks cannot split evenly (the epoch's short last one) gives the first
        ranks one row more; the divisor is the global batch's rows x targets (mean) or 1
        (sum), so the shares add up to the one-process loss of that batch. With sample
        weights the rows are counted by their weights (read once per epoch, in one sync).
        """
        assert self.world is not None
        rank, ranks = self.world.rank, self.world.size
        xs = [xb.tensor_split(ranks)[rank] for xb in x_batches]
        ys = [yb.tensor_split(ranks)[rank] for yb in y_batches]
        ws = [None if wb is None else wb.tensor_split(ranks)[rank] for wb in w_batches]
        if reduction == "sum":
            return xs, ys, ws, [1.0] * len(ys)
        targets = y_batches[0].shape[1] if y_batches else 1
        if self.w is not None:
            sums = torch.stack([wb.sum() for wb in w_batches if wb is not None]).tolist()
            # A global batch whose weights are all 0 adds 0 to the loss: any divisor will do.
            return xs, ys, ws, [max(s * targets, 1e-30) for s in sums]
        return xs, ys, ws, [float(yb.numel()) for yb in y_batches]
