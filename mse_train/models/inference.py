"""Running a model over many rows without training it: in chunks, in eval mode.

Used by the loop's validation and by `eval`/`predict`, so all of them score rows the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EVAL_CHUNK = 4096  # rows per forward pass when evaluating: activations stay in cache


def per_target_sse(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of squared errors per target over all rows, in chunks, in eval mode; each row's
    times its sample weight in `w` when given."""
    was_training = model.training
    model.eval()
    total = torch.zeros(y.shape[1], device=x.device)
    with torch.inference_mode():
        for start in range(0, len(x), EVAL_CHUNK):
            out = model(x[start : start + EVAL_CHUNK])
            sq = (out - y[start : start + EVAL_CHUNK]).pow(2)
            if w is not None:
                sq = sq * w[start : start + EVAL_CHUNK, None]
            total += sq.sum(0)
    model.train(was_training)
    return total


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs for all rows, in chunks, in eval mode."""
    model.eval()
    with torch.inference_mode():
        if not len(x):
            out: torch.Tensor = model(x)
            return out
        return torch.cat([model(x[s : s + EVAL_CHUNK]) for s in range(0, len(x), EVAL_CHUNK)])


def rounding_scale(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per row and output, how far float32 rounding can move the output (see `_rounding_scale`),
    in chunks of EVAL_CHUNK rows, so that the activations kept for the gradients stay small."""
    if len(x) <= EVAL_CHUNK:
        return _rounding_scale(model, x)
    return torch.cat([_rounding_scale(model, x[s : s + EVAL_CHUNK]) for s in range(0, len(x), EVAL_CHUNK)])


def _rounding_scale(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per row and output, how far float32 rounding can move the output: [rows, outputs].

    Another float32 implementation of the same network (onnxruntime, another summation
    order) rounds each intermediate value differently, by a few units in the last place of
    that value's scale. To first order, a change d in an intermediate value moves the output
    by grad * d, so the output can move by about eps32 * sum over intermediates of
    |grad| * scale. The scale of a Linear's output is |W| |x| + |b|, not |Wx + b|: its sum
    rounds at the size of its terms, however much they cancel; of every other module's
    output and of the input, the value itself (an input of 1e6 is rounded at 1e6 wherever
    it is shifted, scaled or multiplied by a frequency). Multiply by eps32 and a few ulps.
    """
    model.eval()
    found: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return
        if isinstance(module, nn.Linear):
            scale = inputs[0].detach().abs() @ module.weight.detach().abs().T
            if module.bias is not None:
                scale = scale + module.bias.detach().abs()
        else:
            scale = out.detach().abs()
        found.append((out, scale))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.enable_grad():
            given = x.detach().clone().requires_grad_(True)
            out = model(given)
            values = [given, *(value for value, _ in found)]
            scales = [given.detach().abs(), *(scale for _, scale in found)]
            columns = []
            for k in range(out.shape[1]):
                grads = torch.autograd.grad(out[:, k].sum(), values, retain_graph=True, allow_unused=True)
                total = torch.zeros(len(x), dtype=torch.float64)
                for grad, scale in zip(grads, scales, strict=True):
                    if grad is not None:
                        total += (grad.abs() * scale).reshape(len(x), -1).sum(1).double()
                columns.append(total)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(columns, dim=1) if columns else torch.zeros(len(x), 0, dtype=torch.float64)
