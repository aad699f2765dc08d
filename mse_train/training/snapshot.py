"""In-memory copies of a model and its optimizer, cheap enough to take every epoch.

The loop keeps the state of the last finite epoch so that a divergence can roll back to
it, and the weights of the best epoch so far. Copies go into tensors allocated once and
refreshed with one foreach kernel; `state_dict()` calls and deep copies are avoided
because on small tables they would cost more than the epoch itself.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class _Buffers:
    """Copies of a list of tensors, reallocated only when the list changes."""

    def __init__(self) -> None:
        self.sources: list[torch.Tensor] = []
        self.copies: list[torch.Tensor] = []

    def capture(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            if _same(tensors, self.sources) and tensors:
                torch._foreach_copy_(self.copies, tensors)
            elif not _same(tensors, self.sources):
                self.copies = [t.detach().clone() for t in tensors]
        self.sources = tensors


class ModelCopy:
    """The parameters and buffers of a model, as of the last `capture()`."""

    def __init__(self, model: nn.Module) -> None:
        self._named = list(model.state_dict(keep_vars=True).items())
        self._buffers = _Buffers()
        self.captured = False

    def capture(self) -> None:
        self._buffers.capture([t for _, t in self._named])
        self.captured = True

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The captured weights by name (this copy's tensors: read them before the next capture)."""
        if not self.captured:
            return None
        return {name: t for (name, _), t in zip(self._named, self._buffers.copies, strict=True)}

    def restore(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_([t for _, t in self._named], self._buffers.copies)


class OptimizerCopy:
    """An optimizer's per-parameter state and hyper-parameters, as of the last `capture()`.

    SGD, Adam and RMSprop keep only tensors, updated in place: those are copied into
    buffers. An optimizer that keeps other values (L-BFGS: counters, lists of tensors) is
    deep-copied instead; it runs few, long epochs, so the cost does not show.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._keys: list[tuple[Any, str]] = []
        self._buffers = _Buffers()
        self._deep: dict[str, Any] | None = None
        self._groups: list[dict[str, Any]] = []

    def capture(self) -> None:
        keys, tensors = [], []
        simple = True
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    simple = False
                keys.append((param, key))
                tensors.append(value)
        if simple:
            self._keys = keys
            self._buffers.capture(tensors)
            self._deep = None
        else:
            self._deep = copy.deepcopy(self.optimizer.state_dict())
        self._groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]

    def restore(self) -> None:
        if self._deep is not None:
            self.optimizer.load_state_dict(self._deep)
            return
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for (param, key), saved in zip(self._keys, self._buffers.copies, strict=True):
            state[param][key] = saved.clone()
        self.optimizer.state = state
        for group, saved_group in zip(self.optimizer.param_groups, self._groups, strict=True):
            group.update(saved_group)
