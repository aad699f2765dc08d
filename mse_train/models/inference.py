"""Running a model over many rows without training it: in chunks, in eval mode.

Used by the loop's validation and by `eval`/`predict`, so all of them score rows the same way.
"""

from __future__ import annotations

import torch
from torch import nn

EVAL_CHUNK = 4096  # rows per forward pass when evaluating: activations stay in cache


def per_target_sse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors per target over all rows, in chunks, in eval mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros(y.shape[1], device=x.device)
    with torch.inference_mode():
        for start in range(0, len(x), EVAL_CHUNK):
            out = model(x[start : start + EVAL_CHUNK])
            total += (out - y[start : start + EVAL_CHUNK]).pow(2).sum(0)
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
