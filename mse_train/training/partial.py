"""The unfinished epoch's per-batch numbers: collected on the device, kept in `Progress` when
an interrupt stops the epoch, and summed over the ranks under torchrun."""

from __future__ import annotations

import torch

from mse_train.training import distributed
from mse_train.training.distributed import World
from mse_train.training.records import PARTIAL, Progress


class EpochLosses:
    """The per-batch numbers of the epoch under way, as lists of device tensors."""

    def __init__(self, progress: Progress) -> None:
        # Each batch's losses and penalties are [K] (K = 1 here; a checkpoint may hold scalars).
        losses, penalties, sq = self._tensors(progress)
        self.lists = [
            list(t.reshape(len(t), -1).unbind()) if t is not None else [] for t in (losses, penalties)
        ] + [list(sq.unbind()) if sq is not None else []]
        self.reduced = len(self.lists[0])  # numbers from a checkpoint are already global sums

    @staticmethod
    def _tensors(progress: Progress) -> list[torch.Tensor | None]:
        return [getattr(progress, name) for name in PARTIAL]

    def store(self, progress: Progress, world: World | None = None) -> None:
        """Stack what was collected into the progress (the one place partial state is made).

        Under torchrun, this rank's shares of the losses and squared errors collected since
        the epoch (re)started are first summed over the ranks, in one all-reduce.
        """
        if world is not None:
            self._sum_over_ranks()
        for name, values in zip(PARTIAL, self.lists, strict=True):
            setattr(progress, name, torch.stack(values) if values else None)

    def _sum_over_ranks(self) -> None:
        losses, _penalties, sq = self.lists  # penalties: the same on every rank, not shares
        new = [torch.stack(losses[self.reduced :]).reshape(-1, 1)] if len(losses) > self.reduced else []
        if not new:
            return
        if sq:
            new.append(torch.stack(sq[self.reduced :]))
        summed = distributed.sum_(torch.cat(new, dim=1))
        losses[self.reduced :] = list(summed[:, :1].unbind())
        if sq:
            sq[self.reduced :] = list(summed[:, 1:].unbind())
        self.reduced = len(losses)
