"""Many small models trained side by side as one stack: the folds of a cv, a sweep's trials.

Small tabular models leave a CPU or GPU mostly idle: at batch 64 a 64-64 MLP step is
per-operation overhead. K models of one shape (linear, or an MLP without dropout or a
numeric embedding; resnet and tabm train one at a time), one optimizer family (SGD, or
Adam/AdamW without amsgrad), one batch size and epoch count
are held as stacked tensors [K, ...] and stepped together with batched matmuls. Each
keeps its own rows, init and seed, learning rate and schedule, weight decay, momentum or
betas, L1/L2, early stopping and best epoch, and follows the arithmetic of training it
alone with `Loop` (the same initial weights, the same shuffled order, the same update
rule), so its result matches a solo run up to float rounding (a test holds it to that).
A model that stops early or diverges is frozen while the others go on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import adam as torch_adam

from mse_train.config import schema
from mse_train.config.schema import Config
from mse_train.models import init, networks
from mse_train.training import optimizers, rng, tracking
from mse_train.training.records import Progress, Status
from mse_train.training.tracking import EarlyStopping

Rows = tuple[torch.Tensor, torch.Tensor]  # x [n, inputs], y [n, targets], float32


@dataclass
class Member:
    """One model to train: its config and its rows (validation rows choose its best epoch)."""

    cfg: Config
    train: Rows
    val: Rows | None


@dataclass
class Trained:
    """How one member's training ended, and the weights of its best epoch (solo names)."""

    status: Status
    epochs: int
    model: nn.Module  # holding the best epoch's weights
    reason: str = ""


def why_alone(cfg: Config) -> str | None:
    """Why `cfg` trains one model at a time instead of in a stack; None when it can stack."""
    model, opt = cfg.model, cfg.optimizer
    if not isinstance(model, (schema.LinearModel, schema.MLPModel)):
        return f"model.type {model.type}: the stack holds linear layers and activations only"
    if isinstance(model, schema.MLPModel) and model.numeric_embedding != "none":
        return f"model.numeric_embedding {model.numeric_embedding}: the stack has no embedding layers"
    if cfg.data.categorical_encoding == "embedding":
        return "data.categorical_encoding embedding: the stack has no embedding tables"
    if isinstance(model, schema.MLPModel) and model.dropout > 0:
        return "model.dropout above 0: its masks come from one global generator, not one per model"
    if isinstance(opt, schema.AdamConfig) and opt.amsgrad:
        return "optimizer.amsgrad: the stack's Adam has no amsgrad"
    if not isinstance(opt, (schema.SGDConfig, schema.AdamConfig)):
        return f"optimizer.name {opt.name}: the stack steps SGD, Adam and AdamW only"
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
            cfg.loss.reduction,
            validated,
        ],
        sort_keys=True,
    )


def train(
    members: list[Member], device: torch.device, should_stop: Callable[[], bool]
) -> list[Trained] | None:
    """Train every member to the end; None when asked to stop (nothing is kept)."""
    return _Stack(members, device).run(should_stop)


Derivative = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input, output) -> d out / d in

_DERIVATIVES: dict[str, Derivative] = {
    "none": lambda z, h: torch.ones_like(z),  # a linear model: one layer, never called
    "relu": lambda z, h: (h > 0).to(z.dtype),
    "tanh": lambda z, h: 1 - h * h,
    "sigmoid": lambda z, h: h * (1 - h),
    "leaky_relu": lambda z, h: torch.where(z > 0, 1.0, 0.01).to(z.dtype),
    "elu": lambda z, h: torch.where(z > 0, torch.ones_like(h), h + 1),
}


@dataclass
class _State:
    """Bookkeeping of one member, as `Loop`'s Progress keeps it."""

    n: int
    size: int
    generator: torch.Generator
    stopping: EarlyStopping
    progress: Progress = field(default_factory=Progress)  # best, early stopping, as `Loop` keeps them
    status: Status | None = None  # set when it stops: early stopped or diverged
    reason: str = ""


class _Stack:
    def __init__(self, members: list[Member], device: torch.device) -> None:
        self.members = members
        self.device = device
        first = members[0].cfg
        self.k = len(members)
        self.epochs = first.train.epochs
        self.reduction = first.loss.reduction
        self.shuffle = first.train.shuffle
        self.sgd = isinstance(first.optimizer, schema.SGDConfig)
        self.models = [self._solo_model(m) for m in members]
        self._linears = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in self.models]
        # Every model's parameters side by side in one flat [K, P] leaf: the optimizer's
        # update is a handful of elementwise operations, however deep the model.
        self.shapes = [tuple(t.shape) for layer in self._linears[0] for t in (layer.weight, layer.bias)]
        with torch.no_grad():
            rows = [
                torch.cat([t.reshape(-1) for m in ls for t in (m.weight, m.bias)]) for ls in self._linears
            ]
            self.flat = torch.stack(rows).to(device)
        self.flat.requires_grad_()
        self._param_views = self._views(self.flat)  # made once; they follow the in-place updates
        self.is_weight = torch.cat([torch.full((math.prod(sh),), len(sh) > 1) for sh in self.shapes]).to(
            device
        )
        mcfg = first.model
        self.activation: nn.Module | None = (
            networks.ACTIVATIONS[mcfg.activation]() if isinstance(mcfg, schema.MLPModel) else None
        )
        self.best = self.flat.detach().clone()
        # The activation's derivative from its input and output, for the backward pass by
        # hand; None (GELU) leaves the backward pass to autograd.
        name = mcfg.activation if isinstance(mcfg, schema.MLPModel) else "none"
        self.derivative = _DERIVATIVES.get(name)
        self.x, self.y = self._padded([m.train for m in members])
        self.val = self._padded([m.val for m in members]) if members[0].val is not None else None
        self.val_n = [len(m.val[0]) if m.val is not None else 0 for m in members]
        self.states: list[_State] = []
        for m in members:
            n = len(m.train[0])
            generator = torch.Generator()
            generator.manual_seed(m.cfg.seed)
            stop = m.cfg.train.early_stopping
            stopping = EarlyStopping(stop.patience if stop else None, stop.min_delta if stop else 0.0)
            self.states.append(_State(n, min(m.cfg.train.batch_size or n, n), generator, stopping))
        self._hyper(members)
        self._dummies = [self._schedule(m.cfg) for m in members]
        self._losses = torch.zeros(self.k, 1)
        self._rows = torch.zeros(self.k, 1)

    # ------------------------------------------------------------------ setup
    def _solo_model(self, member: Member) -> nn.Module:
        """The model `run` would build for this config: seeded, built and initialised alike."""
        cfg = member.cfg
        rng.seed_everything(cfg.seed)
        n_inputs = member.train[0].shape[1]  # packed models read no numeric embedding (pack_key)
        model = networks.build(cfg.model, n_inputs, member.train[1].shape[1], n_inputs)
        init.apply(model, cfg.init)
        return model

    def _padded(self, rows: list[Rows | None]) -> Rows:
        present = [r for r in rows if r is not None]
        n_max = max(len(x) for x, _ in present)
        x = torch.zeros(self.k, n_max, present[0][0].shape[1], device=self.device)
        y = torch.zeros(self.k, n_max, present[0][1].shape[1], device=self.device)
        for i, r in enumerate(rows):
            if r is not None:
                x[i, : len(r[0])] = r[0].to(self.device)
                y[i, : len(r[1])] = r[1].to(self.device)
        return x, y

    def _hyper(self, members: list[Member]) -> None:
        """Per-model settings as [K, 1] columns that broadcast over the flat parameters."""
        opts = [m.cfg.optimizer for m in members]

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device)[:, None]

        self.lr = column([o.lr for o in opts])
        self.wd = column([float(getattr(o, "weight_decay", 0.0) or 0.0) for o in opts])
        self.any_decay = bool(self.wd.any())
        self.l1 = column([m.cfg.regularization.l1 for m in members])[:, 0]
        self.l2 = column([m.cfg.regularization.l2 for m in members])[:, 0]
        self.penalized = bool(self.l1.any()) or bool(self.l2.any())
        self.steps = torch.zeros(self.k, 1, device=self.device)
        self.moments = torch.zeros_like(self.flat)
        self.squares = torch.zeros_like(self.flat)
        if self.sgd:
            sgd = [o for o in opts if isinstance(o, schema.SGDConfig)]
            self.momentum = column([o.momentum for o in sgd])
            self.dampening = column([o.dampening for o in sgd])
            self.nesterov = column([float(o.nesterov) for o in sgd]) > 0
        else:
            adam = [o for o in opts if isinstance(o, schema.AdamConfig)]
            self.beta1 = column([o.betas[0] for o in adam])
            self.beta2 = column([o.betas[1] for o in adam])
            self.eps = column([o.eps for o in adam])
            self.decoupled = column([float(o.name == "adamw") for o in adam]) > 0
        # Members with one and the same Adam setting (the folds of a cv) and no schedule that
        # moves their lr apart use torch's fused Adam; per-model settings the written-out rule.
        settings = {o.model_dump_json() for o in opts}
        scheduled = any(m.cfg.scheduler.name != "none" for m in members)
        first = opts[0]
        self.uniform = (
            first
            if isinstance(first, schema.AdamConfig)
            and len(settings) == 1
            and not scheduled
            and self.device.type == "cpu"
            else None
        )
        self._step_counts = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in members]

    def _schedule(self, cfg: Config) -> tuple[torch.optim.Optimizer, optimizers.Scheduler | None]:
        """A one-number optimizer that the real scheduler drives: its lr is this member's."""
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr)
        return dummy, optimizers.build_scheduler(dummy, cfg.scheduler)

    # ------------------------------------------------------------------ the loop
    def run(self, should_stop: Callable[[], bool]) -> list[Trained] | None:
        for _ in range(self.epochs):
            active = [s.status is None for s in self.states]
            if not any(active):
                break
            if not self._epoch(active, should_stop):
                return None
            self._finish_epoch(active)
        return [self._result(i) for i in range(self.k)]

    def _epoch(self, active: list[bool], should_stop: Callable[[], bool]) -> bool:
        """One epoch: each model's shuffled order, its rows gathered once, batches as slices."""
        width = max(s.size for s in self.states)
        n_batches = max(-(-s.n // s.size) for s in self.states)
        index = torch.zeros(self.k, n_batches, width, dtype=torch.long)
        rows = torch.zeros(self.k, n_batches, dtype=torch.long)
        for i, s in enumerate(self.states):
            if not active[i]:
                continue  # frozen: no rows, no updates
            batches = -(-s.n // s.size)
            if batches > 1 and self.shuffle:  # the same draw `Loop` makes for this model alone
                order = torch.randperm(s.n, generator=s.generator, dtype=torch.int32).long()
            else:
                order = torch.arange(s.n)
            padded = torch.zeros(batches * s.size, dtype=torch.long)
            padded[: s.n] = order
            index[i, :batches, : s.size] = padded.view(batches, s.size)
            rows[i, :batches] = s.size
            rows[i, batches - 1] = s.n - s.size * (batches - 1)
        index, rows = index.to(self.device), rows.to(self.device)
        arange = torch.arange(self.k, device=self.device)[:, None]
        flat_index = index.view(self.k, -1)
        xs = self.x[arange, flat_index].view(self.k, n_batches, width, -1)
        ys = self.y[arange, flat_index].view(self.k, n_batches, width, -1)
        mask = (torch.arange(width, device=self.device)[None, None, :] < rows[:, :, None]).float()
        live = rows.cpu()
        full = live.gt(0).all(0).tolist()  # batches where every model has rows
        whole = live.eq(width).all(0).tolist()  # ... and every row of the batch is real
        losses = []
        for b in range(n_batches):
            batch_mask = None if whole[b] else mask[:, b]
            losses.append(self._step(xs[:, b], ys[:, b], batch_mask, rows[:, b], bool(full[b])))
            if should_stop():
                return False
        self._losses = torch.stack(losses, dim=1)  # [K, batches]
        self._rows = rows
        return True

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Weights and biases of every layer, [K, ...], as views of flat parameters."""
        out, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            out.append(flat[:, offset : offset + size].view(self.k, *shape))
            offset += size
        return out

    def _forward(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        views = self._param_views if flat is None else self._views(flat)
        layers = len(views) // 2
        h = x
        for i in range(layers):
            w, b = views[2 * i], views[2 * i + 1]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < layers - 1 and self.activation is not None:
                h = self.activation(h)
        return h

    def _step(
        self, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, full: bool
    ) -> torch.Tensor:
        counts = rows.float()
        if self.derivative is not None:
            with torch.no_grad():
                mse = self._by_hand(xb, yb, mask, counts)
                self._update((counts > 0)[:, None], full)
            return mse
        self.flat.grad = None
        err = (self._forward(xb) - yb) ** 2
        sq = (err if mask is None else err * mask[..., None]).sum((1, 2))
        denom = counts * yb.shape[-1] if self.reduction == "mean" else torch.ones_like(counts)
        mse = sq / denom.clamp(min=1)
        total = mse.sum()
        if bool(self.l1.any()) or bool(self.l2.any()):
            weights = self.flat * self.is_weight  # biases are left free, as `Loop` leaves them
            total = total + (self.l1 * weights.abs().sum(1) + self.l2 * weights.pow(2).sum(1)).sum()
        total.backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            self._update((counts > 0)[:, None], full)
        return mse.detach()

    def _by_hand(
        self, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor | None, counts: torch.Tensor
    ) -> torch.Tensor:
        """Loss and gradients of the stack without the autograd engine: for an MLP the
        backward pass is a few batched matmuls, and the engine's per-node cost is most of
        a small model's step. The same formulas autograd applies, in the same order."""
        assert self.derivative is not None
        views = self._param_views
        layers = len(views) // 2
        inputs, before = [xb], []
        h = xb
        for i in range(layers):
            z = torch.baddbmm(views[2 * i + 1].unsqueeze(1), h, views[2 * i].transpose(1, 2))
            if i < layers - 1:
                before.append(z)
                h = self.activation(z) if self.activation is not None else z
                inputs.append(h)
            else:
                h = z
        diff = h - yb
        if mask is not None:
            diff = diff * mask[..., None]
        denom = (counts * yb.shape[-1] if self.reduction == "mean" else torch.ones_like(counts)).clamp(min=1)
        mse = (diff * diff).sum((1, 2)) / denom
        grad_out = diff * (2 / denom)[:, None, None]
        grads: list[torch.Tensor] = [torch.empty(0)] * len(views)
        for i in reversed(range(layers)):
            grads[2 * i] = torch.bmm(grad_out.transpose(1, 2), inputs[i])
            grads[2 * i + 1] = grad_out.sum(1)
            if i > 0:
                grad_out = torch.bmm(grad_out, views[2 * i]) * self.derivative(before[i - 1], inputs[i])
        grad = torch.cat([g.reshape(self.k, -1) for g in grads], dim=1)
        if self.penalized:
            weights = self.flat * self.is_weight  # biases are left free, as `Loop` leaves them
            grad = grad + self.l1[:, None] * torch.sign(weights) + (2 * self.l2)[:, None] * weights
        self.flat.grad = grad
        return mse

    def _update(self, live: torch.Tensor, full: bool) -> None:
        """One optimizer step for the models with rows in this batch, as torch's would be."""
        if self.uniform is not None:  # one Adam setting for all: torch's own fused kernel
            self._fused_adam(live)
            return
        self.steps += live
        p = self.flat
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if self.sgd:
            new, moments = self._sgd(p, grad)
        else:
            new, moments, squares = self._adam(p, grad)
            self.squares = squares if full else torch.where(live, squares, self.squares)
        self.moments = moments if full else torch.where(live, moments, self.moments)
        p.copy_(new if full else torch.where(live, new, p))

    def _fused_adam(self, live: torch.Tensor) -> None:
        """torch.optim.adam's fused kernel over the live models' rows of the flat parameters,
        each with its own step count: the very arithmetic of each model's solo optimizer."""
        assert self.uniform is not None and self.flat.grad is not None
        rows = [i for i, on in enumerate(live[:, 0].tolist()) if on]
        if not rows:
            return
        flat, grad = self.flat.detach(), self.flat.grad
        torch_adam.adam(
            [flat[i] for i in rows],
            [grad[i] for i in rows],
            [self.moments[i] for i in rows],
            [self.squares[i] for i in rows],
            [],
            [self._step_counts[i] for i in rows],
            fused=True,
            decoupled_weight_decay=self.uniform.name == "adamw",
            amsgrad=False,
            beta1=self.uniform.betas[0],
            beta2=self.uniform.betas[1],
            lr=self.uniform.lr,
            weight_decay=float(self.uniform.weight_decay or 0.0),
            eps=self.uniform.eps,
            maximize=False,
        )

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad = grad + self.wd * p
        buf = torch.where(self.steps == 1, grad, self.momentum * self.moments + (1 - self.dampening) * grad)
        with_momentum = torch.where(self.nesterov, grad + self.momentum * buf, buf)
        direction = torch.where(self.momentum != 0, with_momentum, grad)
        return p - self.lr * direction, buf

    def _adam(self, p: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        base = p
        if self.any_decay:
            grad = torch.where(self.decoupled, grad, grad + self.wd * p)
            base = torch.where(self.decoupled, p * (1 - self.lr * self.wd), p)
        m = self.moments + (grad - self.moments) * (1 - self.beta1)
        v = self.squares * self.beta2 + (1 - self.beta2) * grad * grad
        step = self.steps.clamp(min=1)
        correction1 = 1 - self.beta1**step
        correction2 = 1 - self.beta2**step
        denom = v.sqrt() / correction2.sqrt() + self.eps
        return base - (self.lr / correction1) * m / denom, m, v

    # ------------------------------------------------------------------ epoch ends
    def _score(self) -> list[float]:
        """Each model's loss on its validation rows (or its training rows), end of epoch."""
        x, y = self.val if self.val is not None else (self.x, self.y)
        counts = torch.tensor(self.val_n if self.val is not None else [s.n for s in self.states])
        mask = torch.arange(x.shape[1])[None, :] < counts[:, None]
        with torch.no_grad():
            sq = ((self._forward(x) - y) ** 2 * mask.to(self.device)[..., None]).sum((1, 2))
        if self.reduction == "mean":
            sq = sq / (counts.to(self.device).float() * y.shape[-1])
        return [float(v) for v in sq.tolist()]

    def _epoch_losses(self) -> list[float]:
        """Each model's train loss as `Loop` reports it: batch losses weighted by their rows."""
        losses, rows = self._losses, self._rows.float()
        if self.reduction == "sum":
            return [float(v) for v in (losses * (rows > 0)).sum(1).tolist()]
        n = torch.tensor([s.n for s in self.states], dtype=torch.float32, device=self.device)
        return [float(v) for v in ((losses * rows).sum(1) / n).tolist()]

    def _finish_epoch(self, active: list[bool]) -> None:
        watched = self._score()
        norms = self.flat.detach().abs().sum(1).tolist()
        losses = self._epoch_losses()
        for i, s in enumerate(self.states):
            if not active[i]:
                continue
            value, p = watched[i], s.progress
            name = "val_loss" if self.val is not None else "train_end_loss"
            s.reason = tracking.why_diverged([losses[i], value, norms[i]], value, p, name)
            if s.reason:
                s.status = Status.DIVERGED
                continue
            dummy, scheduler = self._dummies[i]
            if scheduler is not None:
                dummy.step()  # no gradient: changes nothing, but the scheduler expects a step first
                optimizers.step_scheduler(scheduler, value)
                self.lr[i] = float(dummy.param_groups[0]["lr"])
            tracking.end_epoch(p, value)
            if tracking.improved(p, value):
                with torch.no_grad():
                    self.best[i] = self.flat[i]
            s.stopping.update(p, value)
            if p.stopped_early:
                s.status = Status.EARLY_STOPPED

    def _result(self, i: int) -> Trained:
        s = self.states[i]
        views = self._views(self.best)
        with torch.no_grad():
            for layer, w, b in zip(self._linears[i], views[0::2], views[1::2], strict=True):
                layer.weight.copy_(w[i])
                layer.bias.copy_(b[i])
        return Trained(
            s.status or Status.COMPLETED, s.progress.epoch, self.models[i].to(self.device), s.reason
        )
