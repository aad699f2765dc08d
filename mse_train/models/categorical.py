"""Embeddings of categorical columns (`data.categorical_encoding: embedding`): one learned
table per column in place of its one-hot block.

The model's input row holds the standardised numeric features, then one column per
categorical feature with its integer code as a float32 (exact below 2**24; data/preprocess.py
refuses more categories than that). Code 0 is reserved for "no known category" (an unseen
value under `data.unknown_category: ignore`): its row is zeros and never trained, the same
meaning as one-hot's all-zeros row. Known categories are codes 1..n in vocabulary order.

Default width, as fastai's `emb_sz_rule` (Howard & Gugger, "fastai: A Layered API for Deep
Learning", 2020): round(1.6 * n ** 0.56) for n rows (categories plus the reserved one),
capped here at 16, the default width of a piecewise-linear numeric embedding, so that no
categorical column is wider in the network than a numeric one. Weights start U(+-1/sqrt(d)),
as rtdl's `CategoricalEmbeddings` (Gorishniy et al. 2021); init schemes leave them alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MAX_DEFAULT_WIDTH = 16
RESERVED = 0  # the code of an unseen category: a fixed zero row


def default_width(n_categories: int) -> int:
    """fastai's rule on the table's rows (categories + the reserved one), at most 16."""
    return max(1, min(MAX_DEFAULT_WIDTH, round(1.6 * math.pow(n_categories + 1, 0.56))))


def widths(counts: Sequence[int], size: int | None) -> list[int]:
    """Each column's embedding width: `size` when given, else the default rule."""
    return [size if size is not None else default_width(n) for n in counts]


class CategoricalEmbeddings(nn.Module):
    """(rows, columns) float codes -> (rows, sum of widths): each column's table row, side by side."""

    def __init__(self, counts: Sequence[int], sizes: Sequence[int]) -> None:
        super().__init__()
        self.tables = nn.ModuleList(
            nn.Embedding(n + 1, d, padding_idx=RESERVED) for n, d in zip(counts, sizes, strict=True)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for table in self.tables:
            assert isinstance(table, nn.Embedding)
            bound = table.embedding_dim**-0.5
            nn.init.uniform_(table.weight, -bound, bound)
            table.weight[RESERVED].zero_()  # padding_idx keeps its gradient at zero from here on

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        index = codes.long()
        return torch.cat([table(index[:, i]) for i, table in enumerate(self.tables)], 1)

    def width(self) -> int:
        return sum(int(t.embedding_dim) for t in self.tables if isinstance(t, nn.Embedding))

    def row_width(self) -> int:
        """Activations held per row (for the memory estimate)."""
        return self.width()


def stored_problems(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> list[str]:
    """A reserved row that is not zeros: `CategoricalEmbeddings` never writes one (edited by hand)."""
    problems = []
    for name, module in model.named_modules():
        if not isinstance(module, CategoricalEmbeddings):
            continue
        for i in range(len(module.tables)):
            key = f"{name}.tables.{i}.weight" if name else f"tables.{i}.weight"
            if bool(weights[key][RESERVED].any()):
                problems.append(
                    f"`{where}.{key}` row {RESERVED} (the unseen-category row) must be zeros: "
                    "the embedding was edited"
                )
    return problems
