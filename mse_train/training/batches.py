"""The loop's one batch source: each model's training rows, shuffled and batched per epoch,
and the rows its weights are scored on at the epoch's end.

`source` picks its form by how many models train. One model (`OneTable`, a run): each
epoch draws one permutation from the model's seeded generator, gathers the table once
into buffers reused every epoch, and takes batches as slices; full-batch training does no
indexing at all. A streamed table (data/stream.py) gives its batches a block at a time.
Under torchrun each batch is this rank's slice of the global batch, with the divisor that
makes its loss a share (module.py). K models (`SideBySide`, the folds of a cv, the trials
of a sweep): each model's rows sit in a [K, rows, columns] tensor padded to the longest;
each epoch every model draws its own permutation from its own generator (the very draw
`run` makes for that model alone), its rows are gathered once, and batches are slices,
with a mask (`Batch`) where a model's batch is short or it has no rows left: a model that
stopped (early, diverged, pruned) gets none, so it is no longer updated. Sample weights
(`data.weight`), when given, travel with their rows (0 on padding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from mse_train.data.stream import Rows
from mse_train.errors import ConfigError
from mse_train.training.distributed import World
from mse_train.training.records import Batch, Member

Tensors = tuple[torch.Tensor, torch.Tensor]
# (x, y, sample weights or None, the stack's mask or None, the divisor under torchrun or None)
Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Batch | None, float | None]


class Scored(Protocol):
    """What the source scores at an epoch's end: the loop's model axis (`Models.sse`)."""

    def sse(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        counts: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class Source(Protocol):
    n_batches: int  # the most batches any model has in an epoch

    def epoch(
        self, orders: Sequence[torch.Generator | None], active: Sequence[bool], start: int
    ) -> Iterator[Item]:
        """An epoch's batches from batch `start` on, model i's rows in the order `orders[i]`
        draws (None: in order); a model not `active` has no rows."""

    def score(self, models: Scored) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each model's watched loss [K]: the MSE (or SSE) of its weights now on its
        validation rows, else its training rows; and (one model) the per-target SSE."""


def source(
    members: Sequence[Member], sizes: Sequence[int], world: World | None, device: torch.device
) -> Source:
    """The batch source of these models' rows, `sizes[i]` rows a batch for model i."""
    if len(members) == 1:
        return OneTable(members[0], sizes[0], world, device)
    return SideBySide(members, sizes, device)


class OneTable:
    """One model's rows, in memory or streamed, whole or this rank's slices."""

    def __init__(self, member: Member, size: int, world: World | None, device: torch.device) -> None:
        train, w = member.train, member.train_w
        self.val, self.val_w = member.val, member.val_w
        self.size = size
        self.reduction = member.settings.reduction
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
        self.n_batches = -(-self.n // size)
        self._gathered: Tensors | None = None
        self._gathered_w: torch.Tensor | None = None

    def epoch(
        self,
        orders: Sequence[torch.Generator | None],
        active: Sequence[bool],
        start: int,
    ) -> Iterator[Item]:
        """The epoch's batches from batch `start` on, in the order `orders[0]` draws (None:
        in order); each with its rows' sample weights (None without them) and its divisor
        under torchrun, else None."""
        shuffle, size, n_batches = orders[0], self.size, self.n_batches
        if self.rows is not None:
            generator = shuffle if n_batches > 1 else None
            for xb, yb in self.rows.epoch(generator, size, start):
                yield (
                    torch.from_numpy(xb).to(self.device),
                    torch.from_numpy(yb).to(self.device),
                    None,
                    None,
                    None,
                )
            return
        x, y, w = self.x, self.y, self.w
        if n_batches > 1 and shuffle is not None:
            # int32 indices: half the work of the default int64 for the same permutation size
            order = torch.randperm(self.n, generator=shuffle, dtype=torch.int32)
            x, y, w = self._shuffled(order.to(self.device, non_blocking=True))
        x_batches, y_batches = torch.split(x, size), torch.split(y, size)  # views, made in one call
        w_batches: Sequence[torch.Tensor | None] = [None] * n_batches if w is None else torch.split(w, size)
        if self.world is not None:
            xs, ys, ws, divisors = self._my_slices(x_batches, y_batches, w_batches, self.reduction)
            for b in range(start, n_batches):
                yield xs[b], ys[b], ws[b], None, divisors[b]
            return
        for b in range(start, n_batches):
            yield x_batches[b], y_batches[b], w_batches[b], None, None

    def score(self, models: Scored) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The watched loss of the model's weights now (eval mode), [1], and its per-target
        SSE: on the validation rows, else on the training rows."""
        rows = (
            self.val if self.val is not None else (self.rows if self.rows is not None else (self.x, self.y))
        )
        w = self.val_w if self.val is not None else self.w
        if isinstance(rows, Rows):  # streamed: summed block by block
            sq = torch.zeros(rows.outputs, device=self.device)
            for xb, yb in rows.blocks():
                sq += models.sse(torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device))[
                    0
                ]
            numel = len(rows) * rows.outputs
        else:
            sq = models.sse(*rows, None, w)[0]
            numel = int(rows[1].numel())
            if w is not None:  # the rows count as their weights' sum
                amount = w.sum() * rows[1].shape[1]
                loss = sq.sum() if self.reduction == "sum" else sq.sum() / amount
                return loss.reshape(1), sq
        loss = sq.sum() if self.reduction == "sum" else sq.sum() / numel
        return loss.reshape(1), sq

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


class SideBySide:
    """K models' own rows side by side (all in memory: a stack of several is not streamed)."""

    def __init__(self, members: Sequence[Member], sizes: Sequence[int], device: torch.device) -> None:
        self.sizes = list(sizes)
        self.reduction = members[0].settings.reduction
        self.table, self.counts = pad([_in_memory(m.train) for m in members], device)
        self._n = self.counts.tolist()
        self.n_batches = max(-(-n // size) for n, size in zip(self._n, sizes, strict=True))
        self.table_w = pad_weights([m.train_w for m in members], self._n, device)
        vals = [m.val for m in members]
        self.val_table: tuple[Tensors, torch.Tensor] | None = None
        self.val_table_w: torch.Tensor | None = None
        if all(v is not None for v in vals):
            self.val_table = pad([_in_memory(v) for v in vals], device)
            val_counts = [len(_in_memory(v)[0]) for v in vals]
            self.val_table_w = pad_weights([m.val_w for m in members], val_counts, device)

    def epoch(
        self,
        orders: Sequence[torch.Generator | None],
        active: Sequence[bool],
        start: int,
    ) -> Iterator[Item]:
        assert start == 0, "a stack of several models starts its epochs over (cv and sweep restart a trial)"
        for xb, yb, wb, batch in epoch(self.table, self.sizes, self._n, orders, active, self.table_w):
            yield xb, yb, wb, batch, None

    def score(self, models: Scored) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each model's watched loss [K] (eval mode): on its validation rows, else its
        training rows; padding does not count."""
        (x, y), counts = self.val_table if self.val_table is not None else (self.table, self.counts)
        w = self.val_table_w if self.val_table is not None else self.table_w
        sq = models.sse(x, y, counts, w)
        amount = counts if w is None else w.sum(1)
        return (sq.sum(1) if self.reduction == "sum" else sq.sum(1) / (amount * y.shape[-1])), None


def _in_memory(data: Tensors | Rows | None) -> Tensors:
    assert data is not None and not isinstance(data, Rows), "a stack of several models trains in memory"
    return data


def pad(rows: Sequence[Tensors], device: torch.device) -> tuple[Tensors, torch.Tensor]:
    """Each model's (x, y) in [K, longest, columns] tensors, and each one's row count [K]."""
    k = len(rows)
    n_max = max(len(x) for x, _ in rows)
    x = torch.zeros(k, n_max, rows[0][0].shape[1], device=device)
    y = torch.zeros(k, n_max, rows[0][1].shape[1], device=device)
    for i, (xi, yi) in enumerate(rows):
        x[i, : len(xi)] = xi.to(device)
        y[i, : len(yi)] = yi.to(device)
    return (x, y), torch.tensor([len(xi) for xi, _ in rows], device=device)


def pad_weights(
    weights: Sequence[torch.Tensor | None], counts: Sequence[int], device: torch.device
) -> torch.Tensor | None:
    """Each model's sample weights in a [K, longest] tensor, 0 on padding (a model without
    them weighs each row 1); None when no model has any."""
    if all(w is None for w in weights):
        return None
    out = torch.zeros(len(weights), max(counts), device=device)
    for i, (w, n) in enumerate(zip(weights, counts, strict=True)):
        out[i, :n] = 1.0 if w is None else w.to(device)
    return out


def epoch(
    table: Tensors,
    sizes: Sequence[int],
    counts: Sequence[int],
    generators: Sequence[torch.Generator | None],
    active: Sequence[bool],
    weights: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Batch | None]]:
    """One epoch's batches: model i's rows in its own order (None: in order), `sizes[i]` at
    a time, with their sample weights [K, rows] when `weights` holds them (else None); a
    batch is None-masked where every model has all its rows."""
    x, y = table
    k, device = len(sizes), x.device
    width = max(sizes)
    n_batches = max(-(-n // size) for n, size in zip(counts, sizes, strict=True))
    index = torch.zeros(k, n_batches, width, dtype=torch.long)
    rows = torch.zeros(k, n_batches, dtype=torch.long)
    for i, (n, size, generator) in enumerate(zip(counts, sizes, generators, strict=True)):
        if not active[i]:
            continue  # frozen: no rows, no updates
        batches = -(-n // size)
        if generator is not None and batches > 1:
            order = torch.randperm(n, generator=generator, dtype=torch.int32).long()
        else:
            order = torch.arange(n)
        padded = torch.zeros(batches * size, dtype=torch.long)
        padded[:n] = order
        index[i, :batches, :size] = padded.view(batches, size)
        rows[i, :batches] = size
        rows[i, batches - 1] = n - size * (batches - 1)
    arange = torch.arange(k, device=device)[:, None]
    flat_index = index.to(device).view(k, -1)
    xs = x[arange, flat_index].view(k, n_batches, width, -1)
    ys = y[arange, flat_index].view(k, n_batches, width, -1)
    ws = None if weights is None else weights[arange, flat_index].view(k, n_batches, width)
    on_device = rows.to(device)
    mask = (torch.arange(width, device=device)[None, None, :] < on_device[:, :, None]).float()
    full = rows.gt(0).all(0).tolist()  # batches where every model has rows
    whole = rows.eq(width).all(0).tolist()  # ... and every row of the batch is real
    for b in range(n_batches):
        batch = None if whole[b] else Batch(mask[:, b], on_device[:, b], bool(full[b]))
        yield xs[:, b], ys[:, b], None if ws is None else ws[:, b], batch


def batch_weights(counts: Sequence[int], sizes: Sequence[int], reduction: str) -> torch.Tensor:
    """[batches, K]: what each batch's loss weighs in its model's epoch loss, as a model
    alone reports it (its rows over all its rows; 1 for a summed loss; 0 past its batches)."""
    n_batches = max(-(-n // size) for n, size in zip(counts, sizes, strict=True))
    weights = torch.zeros(n_batches, len(counts))
    for i, (n, size) in enumerate(zip(counts, sizes, strict=True)):
        batches = -(-n // size)
        if reduction == "sum":
            weights[:batches, i] = 1.0
        else:
            weights[:batches, i] = size / n
            weights[batches - 1, i] = (n - size * (batches - 1)) / n
    return weights
