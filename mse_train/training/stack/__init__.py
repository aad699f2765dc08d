"""The stack: an accelerator that trains many small models of one shape at once.

Entered only through this module (tests/test_layout.py holds every other module to it): a
reader who does not care about speed never opens the rest. The loop (training/loop.py)
steps a `Stack` as it steps a torch module (training/module.py); `why_alone` and
`pack_key` below say which configs it holds and which of them can share one.

  stacked.py     `Stack`: K models' parameters side by side in one flat [K, P] tensor,
                 the forward pass as batched matmuls, the backward pass written out
                 (`BACKWARDS`: each activation's kernel; `AUTOGRAD_ONLY`: left to autograd)
  embeddings.py  the numeric embeddings with a model axis, backward by hand
  optimizer.py   SGD, Adam and AdamW for K models at once, as torch steps them

A stack holds K models of one shape (linear, or an MLP without dropout, with or without a
numeric embedding; resnet and tabm train as a module), one optimizer
family (SGD, or Adam/AdamW without amsgrad), one batch size and epoch count. Each keeps
its own rows, init and seed, bins, learning rate and schedule, weight decay, momentum or
betas, L1/L2, early stopping and best epoch, and follows the arithmetic of training it as
a module (the same initial weights, the same shuffled order, the same update rule), so its
result matches up to float rounding (a test holds it to that).
"""

from __future__ import annotations

import json

from mse_train.config import schema
from mse_train.config.schema import Config
from mse_train.training.stack.stacked import AUTOGRAD_ONLY, BACKWARDS, Stack

__all__ = ["AUTOGRAD_ONLY", "BACKWARDS", "Stack", "pack_key", "why_alone"]


def why_alone(cfg: Config) -> str | None:
    """Why `cfg` trains one model at a time instead of in a stack; None when it can stack."""
    model, opt = cfg.model, cfg.optimizer
    if not isinstance(model, (schema.LinearModel, schema.MLPModel)):
        return f"model.type {model.type}: the stack holds linear layers and activations only"
    if cfg.data.categorical_encoding == "embedding":
        return "data.categorical_encoding embedding: the stack has no embedding tables"
    if isinstance(model, schema.MLPModel) and model.dropout > 0:
        return "model.dropout above 0: its masks come from one global generator, not one per model"
    if isinstance(opt, schema.AdamConfig) and opt.amsgrad:
        return "optimizer.amsgrad: the stack's Adam has no amsgrad"
    if not isinstance(opt, (schema.SGDConfig, schema.AdamConfig)):
        return f"optimizer.name {opt.name}: the stack steps SGD, Adam and AdamW only"
    if cfg.train.precision == "bf16":
        return "train.precision bf16: the stack's backward pass by hand is float32 (a module autocasts)"
    return None


def pack_key(cfg: Config) -> str | None:
    """Configs with equal keys can train in one stack; None: this one trains alone (why_alone)."""
    if why_alone(cfg) is not None:
        return None
    model, opt = cfg.model, cfg.optimizer
    shape = model.model_dump(mode="json")
    family = "sgd" if isinstance(opt, schema.SGDConfig) else "adam"
    train = cfg.train
    validated = cfg.data.val is not None or cfg.data.val_fraction > 0
    return json.dumps(
        [
            shape,
            family,
            train.batch_size,
            train.epochs,
            train.shuffle,
            train.device,
            train.precision,
            cfg.loss.reduction,
            validated,
        ],
        sort_keys=True,
    )
