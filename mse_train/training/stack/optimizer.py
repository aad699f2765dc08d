"""The optimizer of a stack (stacked.py): SGD, Adam and AdamW for K models at once.

Each model's settings (learning rate, weight decay, momentum, dampening, nesterov, betas,
eps) are [K, 1] columns that broadcast over the stack's flat [K, P] parameters, so one
update is a handful of elementwise operations however deep the models are. The rules are
torch's own, step for step; models with one and the same Adam setting and no schedule (the
folds of a cv, a run) go through torch's fused Adam kernel itself. A model's state maps
one to one onto its torch optimizer's, which is what a checkpoint holds (`to_torch`,
`from_torch`).

A model's learning rate lives in one place: its own torch optimizer's param group, which
its scheduler moves and its checkpoint holds. The [K, 1] column the update multiplies by
is that number in float32, refreshed by `follow_lr` whenever the param group changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.optim import adam as torch_adam

from mse_train.config import schema

Views = Callable[[torch.Tensor], list[torch.Tensor]]  # flat [K, P] -> each parameter [K, ...]


class StackedOptimizer:
    def __init__(
        self,
        opts: list[schema.OptimizerConfig],
        optimizers: list[torch.optim.Optimizer],
        flat: torch.Tensor,
        scheduled: bool,
        device: torch.device,
    ) -> None:
        """`opts`: each model's optimizer settings; `optimizers`: each one's (never stepped)
        torch optimizer, where its lr lives; `scheduled`: some model's lr follows a schedule."""
        self.k = len(opts)
        self.device = device
        self.sgd = isinstance(opts[0], schema.SGDConfig)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        self.optimizers = optimizers
        self.lr = column([self._lr(i) for i in range(self.k)])  # float32 copies: see follow_lr
        self.wd = column([float(getattr(o, "weight_decay", 0.0) or 0.0) for o in opts])
        self.any_decay = bool(self.wd.any())
        self.steps = torch.zeros(self.k, 1, device=device)
        # Views of `steps`, one per model: torch's fused Adam counts each model's steps in them.
        self._step_counts = list(self.steps[:, 0].unbind())
        self.moments = torch.zeros_like(flat)
        self.squares = torch.zeros_like(flat)
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
        # Models with one and the same Adam setting and no schedule that moves their lr apart
        # use torch's fused Adam; per-model settings the written-out rule.
        settings = {o.model_dump_json() for o in opts}
        head = opts[0]
        self.uniform = (
            head
            if isinstance(head, schema.AdamConfig)
            and len(settings) == 1
            and not scheduled
            and device.type == "cpu"
            else None
        )

    def state(self) -> tuple[torch.Tensor, ...]:
        """The tensors that hold the optimizer's state (the current ones: updates replace them);
        the lr is not among them: it lives in the torch optimizers."""
        return (self.moments, self.squares, self.steps)

    def _lr(self, i: int) -> float:
        return float(self.optimizers[i].param_groups[0]["lr"])

    def follow_lr(self, i: int | None = None) -> None:
        """Model i's (None: every model's) lr column from its torch optimizer, after its
        scheduler, a restore or a checkpoint changed it there."""
        with torch.no_grad():
            for j in range(self.k) if i is None else (i,):
                self.lr[j] = self._lr(j)

    def step(self, p: torch.Tensor, live: torch.Tensor, full: bool) -> None:
        """One optimizer step for the models with rows in this batch, as torch's would be."""
        if self.uniform is not None:  # one Adam setting for all: torch's own fused kernel
            self._fused_adam(p, live)
            return
        self.steps += live
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if self.sgd:
            new, moments = self._sgd(p, grad)
        else:
            new, moments, squares = self._adam(p, grad)
            self.squares = squares if full else torch.where(live, squares, self.squares)
        self.moments = moments if full else torch.where(live, moments, self.moments)
        p.copy_(new if full else torch.where(live, new, p))

    def _fused_adam(self, p: torch.Tensor, live: torch.Tensor) -> None:
        """torch.optim.adam's fused kernel over the live models' rows of the flat parameters,
        each with its own step count: the very arithmetic of each model's solo optimizer."""
        assert self.uniform is not None and p.grad is not None
        rows = [i for i, on in enumerate(live[:, 0].tolist()) if on] if self.k > 1 else [0]
        if not rows:
            return
        flat, grad = p.detach(), p.grad
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
            lr=self._lr(rows[0]),  # one setting, no schedule: every model's lr is this one
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

    # ------------------------------------------------------------------ as torch keeps it (K = 1)
    def to_torch(
        self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], views: Views
    ) -> None:
        """Model 0's state into its torch optimizer's, by parameter, as torch's SGD or Adam keeps it."""
        optimizer.state.clear()
        if float(self.steps[0, 0]) == 0:
            return
        for param, m, v in zip(params, views(self.moments), views(self.squares), strict=True):
            if self.sgd:
                if float(self.momentum[0]) != 0:
                    optimizer.state[param] = {"momentum_buffer": m[0].clone()}
            else:
                step = self.steps[0, 0].detach().clone().cpu()
                optimizer.state[param] = {"step": step, "exp_avg": m[0].clone(), "exp_avg_sq": v[0].clone()}

    def from_torch(
        self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], views: Views
    ) -> None:
        """Model 0's state from its torch optimizer's (loaded from a checkpoint), then cleared there."""
        with torch.no_grad():
            self.moments.zero_()
            self.squares.zero_()
            self.steps.zero_()
            first = optimizer.state.get(params[0], {})
            if first:
                self.steps[0, 0] = float(first["step"]) if "step" in first else 1.0
                for param, m, v in zip(params, views(self.moments), views(self.squares), strict=True):
                    kept = optimizer.state[param]
                    m[0].copy_(kept["momentum_buffer" if self.sgd else "exp_avg"])
                    if not self.sgd:
                        v[0].copy_(kept["exp_avg_sq"])
        self.follow_lr(0)
        optimizer.state.clear()
