"""The rows of K models side by side, for a stack whose models each have their own rows.

The folds of a cv hold different rows (and maybe different counts); a sweep's trials the
same. Each model's rows sit in a [K, rows, columns] tensor padded to the longest; each
epoch every model draws its own permutation from its own generator (the very draw `run`
makes for that model alone), its rows are gathered once, and batches are slices, with a
mask where a model's batch is short or it has no rows left (a frozen model has none).
Sample weights (`data.weight`), when the models have them, sit in a [K, rows] tensor,
0 on padding, and are gathered with their rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mse_train.training.records import Batch

Tensors = tuple[torch.Tensor, torch.Tensor]


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
