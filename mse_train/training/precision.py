"""`train.precision`: how a CUDA device does the training's arithmetic.

fp32 (the default, and the only choice on a CPU): float32 throughout. tf32: float32
tensors, with matrix products on TensorFloat-32 tensor cores (10-bit mantissa inputs,
float32 sums), set through torch's `allow_tf32` switches. bf16: the forward pass under
`torch.autocast` in bfloat16 (matrix products on bf16 tensor cores; softmax, norms and
sums stay float32, as autocast's op lists say), while the weights, their optimizer state
(the "master copy") and the loss stay float32: the output is cast to float32 before the
loss, and backward runs outside the autocast region. bfloat16 has float32's range, so no
loss scaling is needed (torch's AMP recipe uses GradScaler for float16 only).

Validation, eval and predict always score in float32 (no autocast).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mse_train.errors import ConfigError

CHOICES = ("fp32", "tf32", "bf16")


def prepare(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot give; set the TF32 switches for this training."""
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(
            f"train.precision: {precision} needs a CUDA device, and this training runs on {device}",
            [
                "set `train.precision: fp32` (a CPU trains in float32), or train on a machine with "
                "a GPU (`train.device: cuda`)",
            ],
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision: bf16 needs a GPU with bfloat16 support, and {device} has none",
            ["set `train.precision: tf32` or `fp32`"],
        )
    if device.type == "cuda":
        fast = precision in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast


@contextlib.contextmanager
def forward(precision: str, device: torch.device) -> Iterator[None]:
    """The region of a training step's forward pass: autocast to bfloat16 for bf16."""
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
