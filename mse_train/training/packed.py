"""Many small models trained side by side as one stack: the folds of a cv, a sweep's trials.

Small tabular models leave a CPU or GPU mostly idle: at batch 64 a 64-64 MLP step is
per-operation overhead. K models of one shape (linear, or an MLP without dropout), one
optimizer family (SGD, or Adam/AdamW without amsgrad), one batch size and epoch count
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

from mse_train.config import schema
from mse_train.config.schema import Config
from mse_train.models import init, networks
from mse_train.training import optimizers, rng
from mse_train.training.loop import GROWTH_LIMIT
from mse_train.training.records import Status

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


def pack_key(cfg: Config) -> str | None:
    """Configs with equal keys can train in one stack; None: this one trains alone."""
    model, opt = cfg.model, cfg.optimizer
    if isinstance(model, schema.MLPModel) and model.dropout > 0:
        return None  # dropout masks come from the global generator: not reproducible packed
    if isinstance(opt, schema.AdamConfig) and opt.amsgrad:
        return None
    if not isinstance(opt, (schema.SGDConfig, schema.AdamConfig)):
        return None  # RMSprop, L-BFGS: one at a time
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


def _per_model(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _shaped(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] -> [K, 1, ...] to broadcast against a stacked parameter."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class _State:
    """Bookkeeping of one member, as `Loop`'s Progress keeps it."""

    n: int
    size: int
    generator: torch.Generator
    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    stop_best: float = math.inf
    stop_bad: int = 0
    first_loss: float = math.nan
    status: Status | None = None  # set when it stops: early stopped or diverged
    reason: str = ""
    batch_losses: list[torch.Tensor] = field(default_factory=list)
    batch_rows: list[int] = field(default_factory=list)


class _Stack:
    def __init__(self, members: list[Member], device: torch.device) -> None:
        self.members = members
        self.device = device
        first = members[0].cfg
        self.k = len(members)
        self.epochs = first.train.epochs
        self.reduction = first.loss.reduction
        self.sgd = isinstance(first.optimizer, schema.SGDConfig)
        self.models = [self._solo_model(m) for m in members]
        linears = [
            [layer for layer in model.modules() if isinstance(layer, nn.Linear)] for model in self.models
        ]
        with torch.no_grad():
            self.weights = [
                torch.stack([ls[i].weight for ls in linears]).to(device).requires_grad_()
                for i in range(len(linears[0]))
            ]
            self.biases = [
                torch.stack([ls[i].bias for ls in linears]).to(device).requires_grad_()
                for i in range(len(linears[0]))
            ]
        self._linears = linears
        mcfg = first.model
        self.activation: nn.Module | None = (
            networks.ACTIVATIONS[mcfg.activation]() if isinstance(mcfg, schema.MLPModel) else None
        )
        self.params = [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]
        self.best = [p.detach().clone() for p in self.params]
        self.x, self.y = self._padded([m.train for m in members])
        self.val = self._padded([m.val for m in members if m.val is not None]) if members[0].val else None
        self.val_n = [len(m.val[0]) if m.val is not None else 0 for m in members]
        self.states: list[_State] = []
        for m in members:
            n = len(m.train[0])
            generator = torch.Generator()
            generator.manual_seed(m.cfg.seed)
            self.states.append(_State(n, min(m.cfg.train.batch_size or n, n), generator))
        self._hyper(members)
        self._dummies = [self._schedule(m.cfg) for m in members]

    # ------------------------------------------------------------------ setup
    def _solo_model(self, member: Member) -> nn.Module:
        """The model `run` would build for this config: seeded, built and initialised alike."""
        cfg = member.cfg
        rng.seed_everything(cfg.seed)
        model = networks.build(cfg.model, member.train[0].shape[1], member.train[1].shape[1])
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
        opts = [m.cfg.optimizer for m in members]
        dev = self.device
        self.lr = _per_model([o.lr for o in opts], dev)
        self.wd = _per_model([float(getattr(o, "weight_decay", 0.0) or 0.0) for o in opts], dev)
        self.l1 = _per_model([m.cfg.regularization.l1 for m in members], dev)
        self.l2 = _per_model([m.cfg.regularization.l2 for m in members], dev)
        self.steps = torch.zeros(self.k, device=dev)
        self.moments = [torch.zeros_like(p) for p in self.params]
        self.squares = [torch.zeros_like(p) for p in self.params]
        if self.sgd:
            sgd = [o for o in opts if isinstance(o, schema.SGDConfig)]
            self.momentum = _per_model([o.momentum for o in sgd], dev)
            self.dampening = _per_model([o.dampening for o in sgd], dev)
            self.nesterov = torch.tensor([o.nesterov for o in sgd], device=dev)
        else:
            adam = [o for o in opts if isinstance(o, schema.AdamConfig)]
            self.beta1 = _per_model([o.betas[0] for o in adam], dev)
            self.beta2 = _per_model([o.betas[1] for o in adam], dev)
            self.eps = _per_model([o.eps for o in adam], dev)
            self.decoupled = torch.tensor([o.name == "adamw" for o in adam], device=dev)

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
        orders = []
        for s in self.states:
            batches = -(-s.n // s.size)
            if batches > 1 and self.members[0].cfg.train.shuffle:
                orders.append(torch.randperm(s.n, generator=s.generator, dtype=torch.int32).long())
            else:
                orders.append(torch.arange(s.n))
            s.batch_losses, s.batch_rows = [], []
        width = max(s.size for s in self.states)
        n_batches = max(-(-s.n // s.size) for s in self.states)
        for b in range(n_batches):
            index = torch.zeros(self.k, width, dtype=torch.long)
            mask = torch.zeros(self.k, width)
            rows = []
            for i, (s, order) in enumerate(zip(self.states, orders, strict=True)):
                part = order[b * s.size : (b + 1) * s.size] if active[i] else order[:0]
                index[i, : len(part)] = part
                mask[i, : len(part)] = 1.0
                rows.append(len(part))
            self._step(index.to(self.device), mask.to(self.device), rows)
            if should_stop():
                return False
        return True

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < last and self.activation is not None:
                h = self.activation(h)
        return h

    def _step(self, index: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> None:
        arange = torch.arange(self.k, device=self.device)[:, None]
        xb, yb = self.x[arange, index], self.y[arange, index]
        targets = yb.shape[-1]
        counts = torch.tensor(rows, dtype=torch.float32, device=self.device)
        live = counts > 0
        for p in self.params:
            p.grad = None
        sq = ((self._forward(xb) - yb) ** 2 * mask[..., None]).sum((1, 2))
        denom = counts * targets if self.reduction == "mean" else torch.ones_like(counts)
        mse = sq / denom.clamp(min=1)
        penalty = torch.zeros(self.k, device=self.device)
        for w in self.weights:
            penalty = penalty + self.l1 * w.abs().sum((1, 2)) + self.l2 * w.pow(2).sum((1, 2))
        (mse + penalty).sum().backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            self._update(live)
        detached = mse.detach()
        for i, s in enumerate(self.states):
            if rows[i]:
                s.batch_losses.append(detached[i])
                s.batch_rows.append(rows[i])

    def _update(self, live: torch.Tensor) -> None:
        """One optimizer step for the models with rows in this batch, as torch's would be."""
        self.steps += live.float()
        for j, p in enumerate(self.params):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            keep = _shaped(live, p)
            lr, wd = _shaped(self.lr, p), _shaped(self.wd, p)
            step = self._sgd if self.sgd else self._adam
            new = step(j, p, grad, lr, wd, keep)
            p.copy_(torch.where(keep, new, p))

    def _sgd(
        self,
        j: int,
        p: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        wd: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        grad = grad + wd * p
        momentum, dampening = _shaped(self.momentum, p), _shaped(self.dampening, p)
        first = _shaped(self.steps == 1, p)
        buf = torch.where(first, grad, momentum * self.moments[j] + (1 - dampening) * grad)
        self.moments[j] = torch.where(keep, buf, self.moments[j])
        with_momentum = torch.where(_shaped(self.nesterov, p), grad + momentum * buf, buf)
        direction = torch.where(momentum != 0, with_momentum, grad)
        return p - lr * direction

    def _adam(
        self,
        j: int,
        p: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        wd: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        decoupled = _shaped(self.decoupled, p)
        grad = torch.where(decoupled, grad, grad + wd * p)
        base = torch.where(decoupled, p * (1 - lr * wd), p)
        beta1, beta2, eps = _shaped(self.beta1, p), _shaped(self.beta2, p), _shaped(self.eps, p)
        m = self.moments[j] + (grad - self.moments[j]) * (1 - beta1)
        v = self.squares[j] * beta2 + (1 - beta2) * grad * grad
        self.moments[j] = torch.where(keep, m, self.moments[j])
        self.squares[j] = torch.where(keep, v, self.squares[j])
        step = _shaped(self.steps.clamp(min=1), p)
        correction1 = 1 - beta1**step
        correction2 = 1 - beta2**step
        denom = v.sqrt() / correction2.sqrt() + eps
        return base - (lr / correction1) * m / denom

    # ------------------------------------------------------------------ epoch ends
    def _score(self) -> list[float]:
        """Each model's loss on its validation rows (or its training rows), end of epoch."""
        x, y = self.val if self.val is not None else (self.x, self.y)
        counts = self.val_n if self.val is not None else [s.n for s in self.states]
        mask = torch.arange(x.shape[1], device=self.device)[None, :] < torch.tensor(counts)[:, None].to(
            self.device
        )
        with torch.no_grad():
            sq = ((self._forward(x) - y) ** 2 * mask[..., None]).sum((1, 2))
        targets = y.shape[-1]
        if self.reduction == "mean":
            sq = sq / (torch.tensor(counts, dtype=torch.float32, device=self.device) * targets)
        return [float(v) for v in sq.tolist()]

    def _finish_epoch(self, active: list[bool]) -> None:
        watched = self._score()
        norms = torch.stack([p.detach().flatten(1).abs().sum(1) for p in self.params]).sum(0).tolist()
        for i, s in enumerate(self.states):
            if not active[i]:
                continue
            train_loss = _epoch_loss(s, self.reduction)
            value = watched[i]
            if not all(math.isfinite(v) for v in (train_loss, value, norms[i])):
                s.status, s.reason = Status.DIVERGED, "the loss or a weight became NaN or infinite"
                continue
            first = value if s.epoch == 0 else s.first_loss
            if value > GROWTH_LIMIT * first:
                s.status, s.reason = Status.DIVERGED, f"the watched loss grew to {value:.3g}"
                continue
            dummy, scheduler = self._dummies[i]
            if scheduler is not None:
                dummy.step()  # no gradient: changes nothing, but the scheduler expects a step first
                optimizers.step_scheduler(scheduler, value)
                self.lr[i] = float(dummy.param_groups[0]["lr"])
            s.epoch += 1
            s.first_loss = first
            if value < s.best_loss:
                s.best_loss, s.best_epoch = value, s.epoch
                with torch.no_grad():
                    for copy, p in zip(self.best, self.params, strict=True):
                        copy[i] = p[i]
            patience = self.members[i].cfg.train.early_stopping
            if patience is not None:
                if value < s.stop_best - patience.min_delta:
                    s.stop_best, s.stop_bad = value, 0
                else:
                    s.stop_bad += 1
                    if s.stop_bad >= patience.patience:
                        s.status = Status.EARLY_STOPPED

    def _result(self, i: int) -> Trained:
        s = self.states[i]
        model = self.models[i]
        with torch.no_grad():
            for layer, w, b in zip(self._linears[i], self.best[0::2], self.best[1::2], strict=True):
                layer.weight.copy_(w[i])
                layer.bias.copy_(b[i])
        status = s.status or Status.COMPLETED
        return Trained(status, s.epoch, model.to(self.device), s.reason)


def _epoch_loss(state: _State, reduction: str) -> float:
    """The epoch's train loss as `Loop` reports it: batch losses weighted by their rows."""
    losses = torch.stack(state.batch_losses)
    if reduction == "sum":
        return float(losses.sum())
    weights = torch.tensor(state.batch_rows, dtype=torch.float32, device=losses.device) / state.n
    return float((losses * weights).sum())
