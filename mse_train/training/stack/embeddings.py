"""Numeric embeddings with a model axis, for the stack (stacked.py): forward and backward by hand.

The formulas of models/embeddings.py, each model with its own parameters (views of the
stack's flat tensor) and, for piecewise-linear, its own bins (from its own training rows).
Numbers come in as [K, rows, F, 1]; each embeds to [K, rows, F, size]. The backward pass
takes the gradient at that output and fills the gradients of the embedding's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from mse_train.models import embeddings

Saved = tuple[torch.Tensor, ...]


class Stacked(Protocol):
    size: int  # each feature's output width

    def forward(self, numbers: torch.Tensor, views: list[torch.Tensor]) -> tuple[torch.Tensor, Saved]: ...

    def backward(
        self, grad: torch.Tensor, saved: Saved, views: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None: ...


def build(parts: Sequence[nn.Module], where: dict[int, int], device: torch.device) -> Stacked:
    """The stacked form of K models' embeddings (all of one kind); `where` places each
    parameter (by identity) in the stack's flat parameters."""
    first = parts[0]
    if isinstance(first, embeddings.PiecewiseLinearEmbedding):
        return _Piecewise(
            [p for p in parts if isinstance(p, embeddings.PiecewiseLinearEmbedding)], where, device
        )
    if isinstance(first, embeddings.PeriodicEmbedding):
        return _Periodic([p for p in parts if isinstance(p, embeddings.PeriodicEmbedding)], where)
    raise TypeError(f"a stack does not embed {type(first).__name__}")


class _Piecewise:
    """Piecewise-linear encoding of each model's own bins, then a linear map per feature."""

    def __init__(
        self, parts: list[embeddings.PiecewiseLinearEmbedding], where: dict[int, int], device: torch.device
    ) -> None:
        first = parts[0]
        self.linear_weight = where[id(first.linear_weight)]
        self.linear_bias = where[id(first.linear_bias)]
        self.weight = where[id(first.weight)]
        self.size = first.weight.shape[-1]
        self.scale = torch.stack([p.scale for p in parts]).to(device)[:, None]  # [K, 1, F, bins]
        self.shift = torch.stack([p.shift for p in parts]).to(device)[:, None]
        self.single = torch.stack([p.single for p in parts]).to(device)[:, None]

    def forward(self, numbers: torch.Tensor, views: list[torch.Tensor]) -> tuple[torch.Tensor, Saved]:
        z = torch.addcmul(self.shift, self.scale, numbers)  # [K, rows, F, bins]
        last = z[..., -1:]
        last = torch.where(self.single > 0, last, last.clamp_min(0.0))
        z = torch.cat([z[..., :1].clamp_max(1.0), z[..., 1:-1].clamp(0.0, 1.0), last], -1)
        encoded = torch.einsum("kbfi,kfio->kbfo", z, views[self.weight])
        linear = torch.addcmul(
            views[self.linear_bias].unsqueeze(1), views[self.linear_weight].unsqueeze(1), numbers
        )
        return linear + encoded, (numbers, z)

    def backward(
        self, grad: torch.Tensor, saved: Saved, views: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        numbers, z = saved
        grads[self.weight] = torch.einsum("kbfi,kbfo->kfio", z, grad)
        grads[self.linear_weight] = (grad * numbers).sum(1)
        grads[self.linear_bias] = grad.sum(1)


class _Periodic:
    """ReLU(Linear([cos(2 pi c x), sin(2 pi c x)])): one linear map per feature, or one shared
    by all features (`lite`)."""

    def __init__(self, parts: list[embeddings.PeriodicEmbedding], where: dict[int, int]) -> None:
        first = parts[0]
        self.frequency = where[id(first.frequency)]
        self.weight = where[id(first.weight)]
        self.bias = where[id(first.bias)]
        self.lite = first.weight.dim() == 2
        self.size = first.bias.shape[-1]

    def forward(self, numbers: torch.Tensor, views: list[torch.Tensor]) -> tuple[torch.Tensor, Saved]:
        v = 2 * math.pi * views[self.frequency].unsqueeze(1) * numbers  # [K, rows, F, k]
        z = torch.cat([torch.cos(v), torch.sin(v)], -1)  # [K, rows, F, 2k]
        weight = views[self.weight]
        z_out = z @ weight.unsqueeze(1) if self.lite else torch.einsum("kbfi,kfio->kbfo", z, weight)
        bias = views[self.bias]
        out = torch.relu(z_out + (bias[:, None, None] if self.lite else bias.unsqueeze(1)))
        return out, (numbers, v, z, out)

    def backward(
        self, grad: torch.Tensor, saved: Saved, views: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        numbers, v, z, out = saved
        grad = torch.ops.aten.threshold_backward(grad, out, 0)  # through the ReLU
        weight = views[self.weight]
        if self.lite:
            grads[self.bias] = grad.sum((1, 2))
            grads[self.weight] = torch.einsum("kbfi,kbfo->kio", z, grad)
            into = grad @ weight.transpose(1, 2).unsqueeze(1)
        else:
            grads[self.bias] = grad.sum(1)
            grads[self.weight] = torch.einsum("kbfi,kbfo->kfio", z, grad)
            into = torch.einsum("kbfo,kfio->kbfi", grad, weight)
        k = v.shape[-1]
        into_v = into[..., k:] * torch.cos(v) - into[..., :k] * torch.sin(v)
        grads[self.frequency] = (into_v * numbers).sum(1) * (2 * math.pi)
