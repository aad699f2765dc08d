"""K small models of one shape held as one stack of tensors and stepped together.

One of the loop's two model axes (the other is training/module.py): a linear model, or
an MLP without dropout, with or without a numeric embedding (embeddings.py), trained with
SGD, Adam or AdamW, K >= 1 at a time. `run` trains such a config as a stack of one; `cv`
and `sweep` stack the folds of a cv and the trials that share a `pack_key` (__init__.py).

Small tabular models leave a CPU or GPU mostly idle: at batch 64 a 64-64 MLP step is
per-operation overhead. Every model's parameters sit side by side in one flat [K, P]
leaf; the forward pass is batched matmuls, the backward pass is written out (the same
formulas autograd applies, in the same order, without the engine's per-node cost), and the
optimizer's update is a handful of elementwise operations, however deep the model.

Each model keeps the module and the torch optimizer and scheduler `run` would build for it
alone: they seed and initialise its weights, drive its learning rate, and give its
checkpoint the very format a module's run writes (so last.pt resumes either way). Its
learning rate lives in that torch optimizer (optimizer.py keeps a float32 column of it);
its weight decay, momentum or betas and L1/L2 are [K, 1] columns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mse_train.config import schema
from mse_train.models import blocks, networks
from mse_train.models.inference import EVAL_CHUNK
from mse_train.training import optimizers
from mse_train.training.records import Batch, Built, StepResult
from mse_train.training.stack import embeddings as stack_embeddings
from mse_train.training.stack.optimizer import StackedOptimizer

# (gradient at the output, input, output) -> gradient at the input: the backward kernels
# autograd itself calls for each activation (one fused pass over the activations).
Backward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_aten = torch.ops.aten

BACKWARDS: dict[str, Backward] = {
    "none": lambda g, z, h: g,  # a linear model: one layer, never called
    "relu": lambda g, z, h: _aten.threshold_backward(g, h, 0),
    "tanh": lambda g, z, h: _aten.tanh_backward(g, h),
    "sigmoid": lambda g, z, h: _aten.sigmoid_backward(g, h),
    "leaky_relu": lambda g, z, h: _aten.leaky_relu_backward(g, z, 0.01, False),
    "elu": lambda g, z, h: _aten.elu_backward(g, 1.0, 1, 1, False, z),
}

# Activations whose gradient the stack leaves to autograd on purpose (through its batched
# forward): any other activation of models/networks.py must have a kernel above, or
# building a stack of it fails (a test walks ACTIVATIONS and checks every gradient).
AUTOGRAD_ONLY = frozenset({"gelu"})
_STEP_FIRST = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"  # torch's warning


class Stack:
    k: int

    def __init__(self, builts: Sequence[Built], device: torch.device) -> None:
        self.builts = list(builts)
        self.k = len(builts)
        self.device = device
        first = builts[0].cfg
        self.reduction = first.loss.reduction
        # The flat parameters hold each module's parameters in its own order, so that they
        # map one to one onto the module and its torch optimizer's state.
        self._params = [list(s.model.parameters()) for s in builts]
        model = builts[0].model
        where = {id(p): j for j, p in enumerate(self._params[0])}
        self.shapes = [tuple(p.shape) for p in self._params[0]]
        self._layers = [
            (where[id(m.weight)], where[id(m.bias)]) for m in model.modules() if isinstance(m, nn.Linear)
        ]
        self._embedding(builts, where, device)
        with torch.no_grad():
            rows = [torch.cat([t.reshape(-1) for t in self._params[i]]) for i in range(self.k)]
            self.flat = torch.stack(rows).to(device)
        self.flat.requires_grad_()
        self._param_views = self._views(self.flat)  # made once; they follow the in-place updates
        penalized = {id(p) for p in networks.penalized_weights(model)}  # as `run` penalizes
        self.is_weight = torch.cat(
            [torch.full((math.prod(p.shape),), id(p) in penalized) for p in self._params[0]]
        ).to(device)
        mcfg = first.model
        self.activation: nn.Module | None = (
            networks.ACTIVATIONS[mcfg.activation]() if isinstance(mcfg, schema.MLPModel) else None
        )
        # The activation's backward pass, for the backward pass by hand; None (GELU) leaves
        # the whole backward pass to autograd.
        name = mcfg.activation if isinstance(mcfg, schema.MLPModel) else "none"
        if name not in BACKWARDS and name not in AUTOGRAD_ONLY:
            raise NotImplementedError(
                f"activation {name!r} has no stacked backward: add its kernel to BACKWARDS in "
                "training/stack/stacked.py, or its name to AUTOGRAD_ONLY (tests/test_stack_gradients.py)"
            )
        self.derivative = BACKWARDS.get(name)
        self._reads_input = name in ("leaky_relu", "elu")
        self.best = self.flat.detach().clone()
        self._has_best = [False] * self.k
        self._penalties([s.cfg for s in builts])
        scheduled = any(s.cfg.scheduler.name != "none" for s in builts)
        self.update = StackedOptimizer(
            [s.cfg.optimizer for s in builts], [s.optimizer for s in builts], self.flat, scheduled, device
        )
        self._kept: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ setup
    def _embedding(self, builts: Sequence[Built], where: dict[int, int], device: torch.device) -> None:
        """A numeric embedding before the layers (embeddings.py), each model's own."""
        modules = [s.model for s in builts]
        first = modules[0]
        self._numeric = 0
        self._embedded: stack_embeddings.Stacked | None = None
        if not isinstance(first, blocks.Embedded) or first.embedding is None:  # (no numeric inputs)
            assert len(self._layers) * 2 == len(self.shapes), "a stack holds linear layers only"
            return
        assert first.categorical is None, "a stack has no categorical embedding tables"
        parts = [m.embedding for m in modules if isinstance(m, blocks.Embedded) and m.embedding is not None]
        self._embedded = stack_embeddings.build(parts, where, device)
        self._numeric = first.n_numeric
        assert len(self._layers) * 2 + len(list(first.embedding.parameters())) == len(self.shapes)

    def _penalties(self, cfgs: list[schema.Config]) -> None:
        """Each model's L1 and L2 factors, [K]."""
        self.l1 = torch.tensor([c.regularization.l1 for c in cfgs], device=self.device)
        self.l2 = torch.tensor([c.regularization.l2 for c in cfgs], device=self.device)
        self.penalized = bool(self.l1.any()) or bool(self.l2.any())

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Weights and biases of every layer, [K, ...], as views of flat parameters."""
        out, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            out.append(flat[:, offset : offset + size].view(flat.shape[0], *shape))
            offset += size
        return out

    # ------------------------------------------------------------------ steps
    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        batch: Batch | None = None,
        divisor: float | None = None,
        wb: torch.Tensor | None = None,
    ) -> StepResult:
        """One update of every model with rows in the batch (a model that stopped has none).
        `xb` is [K, rows, inputs], or [rows, inputs] for K = 1; `batch` is None when every
        model has all the rows of the batch; `wb`, the rows' sample weights ([K, rows], or
        [rows]), None when each weighs 1. (No dropout or normalisation: no training mode.)"""
        assert divisor is None, "a stack trains in one process"
        one = xb.dim() == 2
        if one:
            xb, yb = xb.unsqueeze(0), yb.unsqueeze(0)
            wb = None if wb is None else wb.unsqueeze(0)
        if batch is None:
            mask, counts, full = None, torch.full((self.k,), float(xb.shape[1]), device=self.device), True
        else:
            mask, counts, full = batch.mask, batch.counts.float(), batch.full
        # Sample weights take the mask's place: a row's squared error counts its weight times
        # (padding 0), and the rows of a batch count as their weights' sum.
        weight, amount = mask, counts
        if wb is not None:
            weight = wb if mask is None else wb * mask
            amount = weight.sum(1)
        pen = self._penalty() if self.penalized else None
        if self.derivative is not None:
            with torch.no_grad():
                out, mse = self._by_hand(xb, yb, weight, amount, wb is not None)
        else:
            out, mse = self._autograd(xb, yb, weight, amount)
        with torch.no_grad():
            self.update.step(self.flat, (counts > 0)[:, None], full)
        return StepResult(out[0] if one else out, mse, pen)

    def _penalty(self) -> torch.Tensor:
        """The penalty as a number to report, [K] (no graph)."""
        with torch.no_grad():
            return self._penalty_of(self.flat)

    def _penalty_of(self, flat: torch.Tensor) -> torch.Tensor:
        """Each model's l1 * sum|w| + l2 * sum w^2 over its weights (biases are left free, as
        `run` leaves them), [K]; its gradient by hand is in `_by_hand`."""
        weights = flat * self.is_weight
        return self.l1 * weights.abs().sum(1) + self.l2 * weights.pow(2).sum(1)

    def _forward(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        views = self._param_views if flat is None else self._views(flat)
        h = self._embed(x, views)[0] if self._embedded is not None else x
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            h = torch.baddbmm(views[b].unsqueeze(1), h, views[w].transpose(1, 2))
            if i < last and self.activation is not None:
                h = self.activation(h)
        return h

    def _embed(
        self, x: torch.Tensor, views: list[torch.Tensor]
    ) -> tuple[torch.Tensor, stack_embeddings.Saved]:
        """The layers' input: each model's embedding of the numeric inputs, then the other
        inputs; and what the embedding's backward pass reads."""
        assert self._embedded is not None
        embedded, saved = self._embedded.forward(x[..., : self._numeric, None], views)
        return torch.cat([embedded.flatten(2), x[..., self._numeric :]], -1), saved

    def _denominator(self, counts: torch.Tensor, targets: int) -> torch.Tensor:
        """Rows (or their weights' sum) times targets for a mean, 1 for a sum; 1 where a model
        has nothing in the batch (its loss is 0 then, not 0 / 0)."""
        if self.reduction != "mean":
            return torch.ones_like(counts)
        amount = counts * targets
        return torch.where(amount > 0, amount, torch.ones_like(amount))

    def _autograd(
        self, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor | None, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.flat.grad = None
        out = self._forward(xb)
        err = (out - yb) ** 2
        sq = (err if mask is None else err * mask[..., None]).sum((1, 2))
        mse = sq / self._denominator(counts, yb.shape[-1])
        total = mse.sum()
        if self.penalized:
            total = total + self._penalty_of(self.flat).sum()
        total.backward()  # type: ignore[no-untyped-call]
        return out.detach(), mse.detach()

    def _by_hand(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        mask: torch.Tensor | None,
        counts: torch.Tensor,
        weighted: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradients of the stack without the autograd engine: for an MLP the
        backward pass is a few batched matmuls, and the engine's per-node cost is most of
        a small model's step. The same formulas autograd applies, in the same order."""
        assert self.derivative is not None
        views = self._param_views
        layers = len(self._layers)
        saved: stack_embeddings.Saved = ()
        if self._embedded is not None:
            h, saved = self._embed(xb, views)
        else:
            h = xb
        inputs, before = [h], []
        for i, (w, b) in enumerate(self._layers):
            z = torch.baddbmm(views[b].unsqueeze(1), h, views[w].transpose(1, 2))
            if i < layers - 1:
                h = self.activation(z) if self.activation is not None else z
                # Keep the pre-activation only where its backward reads it (as autograd keeps
                # it): on a large batch each is as big as the layer's output.
                before.append(z if self._reads_input else h)
                inputs.append(h)
                del z  # (not held to the next layer's output)
            else:
                h = z
        diff = h - yb
        denom = self._denominator(counts, yb.shape[-1])
        if weighted:  # `mask` holds sample weights: sum(w * diff^2), gradient 2 * w * diff
            assert mask is not None
            scaled = diff * mask[..., None]
            mse = (scaled * diff).sum((1, 2)) / denom
            grad_out = scaled * (2 / denom)[:, None, None]
        else:
            if mask is not None:
                diff = diff * mask[..., None]
            mse = (diff * diff).sum((1, 2)) / denom
            grad_out = diff * (2 / denom)[:, None, None]
        grads: list[torch.Tensor] = [torch.empty(0)] * len(views)
        for i in reversed(range(layers)):
            # Each layer's saved tensors are let go once used, as autograd lets go of them:
            # on a large full batch they are most of the step's memory.
            w, b = self._layers[i]
            layer_input = inputs.pop()
            grads[w] = torch.bmm(grad_out.transpose(1, 2), layer_input)
            grads[b] = grad_out.sum(1)
            if i > 0:
                grad_out = self.derivative(torch.bmm(grad_out, views[w]), before.pop(), layer_input)
            del layer_input
        if self._embedded is not None:  # on through the first layer into the embedding
            into = torch.bmm(grad_out, views[self._layers[0][0]])[..., : self._numeric * self._embedded.size]
            into = into.reshape(*into.shape[:2], self._numeric, self._embedded.size)  # [K, rows, F, size]
            self._embedded.backward(into, saved, views, grads)
        grad = torch.cat([g.reshape(self.k, -1) for g in grads], dim=1)
        if self.penalized:
            weights = self.flat * self.is_weight  # biases are left free, as `run` leaves them
            grad = grad + self.l1[:, None] * torch.sign(weights) + (2 * self.l2)[:, None] * weights
        self.flat.grad = grad
        return h, mse

    # ------------------------------------------------------------------ epoch ends
    def sse(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        counts: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each model's sum of squared errors per target, [K, targets], in chunks of rows;
        each row's times its sample weight in `w` ([K, rows], 0 on padding) when given.

        `x` is [K, rows, inputs] (rows past each model's `counts` are padding), or
        [rows, inputs] for K = 1.
        """
        if x.dim() == 2:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
            w = None if w is None else w.unsqueeze(0)
        total = torch.zeros(self.k, y.shape[-1], device=self.device)
        with torch.no_grad():
            for start in range(0, x.shape[1], EVAL_CHUNK):
                err = (
                    self._forward(x[:, start : start + EVAL_CHUNK]) - y[:, start : start + EVAL_CHUNK]
                ) ** 2
                if w is not None:
                    err = err * w[:, start : start + EVAL_CHUNK, None]
                elif counts is not None:
                    rows = torch.arange(start, start + err.shape[1], device=self.device)
                    err = err * (rows[None, :] < counts[:, None]).to(err.dtype)[..., None]
                total += err.sum(1)
        return total

    def norms(self) -> torch.Tensor:
        """Each model's sum of |weights|: not finite once a weight is not."""
        return self.flat.detach().abs().sum(1)

    def schedule(self, i: int, watched: float) -> float:
        """Model i's lr this epoch, where it lives: in its own (never stepped) torch optimizer,
        whose scheduler then moves it (the update reads it from there: `follow_lr`)."""
        solo = self.builts[i]
        lr = float(solo.optimizer.param_groups[0]["lr"])
        if solo.scheduler is not None:
            with warnings.catch_warnings():
                # the torch optimizer never steps (the stack updates the weights), which the
                # scheduler's first step warns of; a step without gradients would change nothing,
                # but import torch._dynamo (1.7 s: training/optimizers.py, `_eager_only`)
                warnings.filterwarnings("ignore", _STEP_FIRST, UserWarning)
                optimizers.step_scheduler(solo.scheduler, watched)
            self.update.follow_lr(i)
        return lr

    def keep_best(self, i: int) -> None:
        with torch.no_grad():
            self.best[i] = self.flat[i]
        self._has_best[i] = True

    def best_state(self, i: int) -> dict[str, torch.Tensor] | None:
        """Model i's best weights by the solo module's names; None before one is kept."""
        return self._named(i, self.best) if self._has_best[i] else None

    def best_model(self, i: int) -> nn.Module:
        """Model i's module holding the weights of its best epoch."""
        self._write_solo(i, self.best)
        return self.builts[i].model

    def _named(self, i: int, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        self._write_solo(i, flat)
        return {name: t.detach().clone() for name, t in self.builts[i].model.state_dict().items()}

    def _write_solo(self, i: int, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for param, view in zip(self._params[i], self._views(flat[i : i + 1]), strict=True):
                param.copy_(view[0])

    # ------------------------------------------------------------------ state (K = 1: a run)
    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer and scheduler state in the format a solo run writes (K = 1)."""
        assert self.k == 1, "a stack of several models is not checkpointed (cv and sweep restart a trial)"
        solo = self.builts[0]
        model = self._named(0, self.flat.detach())
        self.update.to_torch(solo.optimizer, self._params[0], self._views)
        return {
            "model": model,
            "optimizer": solo.optimizer.state_dict(),
            "scheduler": solo.scheduler.state_dict() if solo.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From `state_dict()`'s output, or what a solo run of the same config wrote."""
        solo = self.builts[0]
        solo.model.load_state_dict(state["model"])
        solo.optimizer.load_state_dict(state["optimizer"])
        if solo.scheduler is not None and state.get("scheduler") is not None:
            solo.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad():
            self.flat[0] = torch.cat([t.reshape(-1) for t in self._params[0]]).to(self.device)
        self.update.from_torch(solo.optimizer, self._params[0], self._views)

    def capture(self) -> None:
        """Keep the weights, optimizer and schedulers as they are (the last finite epoch)."""
        schedulers = [s.scheduler.state_dict() if s.scheduler is not None else None for s in self.builts]
        with torch.no_grad():
            tensors = [t.detach().clone() for t in (self.flat, *self.update.state())]
        lrs = [b.optimizer.param_groups[0]["lr"] for b in self.builts]
        self._kept = (tensors, [_copied(s) for s in schedulers], lrs)

    def restore(self) -> None:
        assert self._kept is not None, "capture() runs before the first epoch"
        tensors, schedulers, lrs = self._kept
        with torch.no_grad():
            for target, saved in zip((self.flat, *self.update.state()), tensors, strict=True):
                target.copy_(saved)
        for i, (solo, saved) in enumerate(zip(self.builts, schedulers, strict=True)):
            if solo.scheduler is not None and (state := _copied(saved)) is not None:
                solo.scheduler.load_state_dict(state)
            solo.optimizer.param_groups[0]["lr"] = lrs[i]
        self.update.follow_lr()


def _copied(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}
