"""Optimizers and learning-rate schedules, built by name from registries.

To add an optimizer (or a scheduler): a schema class in config/schema.py with its `name`
Literal, defaults and one-line description, a builder here, and an entry in OPTIMIZERS
(SCHEDULERS). A test fails when a registry and the schema disagree.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.optim import optimizer as _optim_module

from mse_train.config import schema
from mse_train.config.registry import Choice

# Both are stepped once per epoch; they share no useful base class.
Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau
Params = list[nn.Parameter]


def _sgd(cfg: schema.SGDConfig, params: Params) -> torch.optim.Optimizer:
    return _fused_if_possible(
        torch.optim.SGD,
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _adam(cfg: schema.AdamConfig, params: Params) -> torch.optim.Optimizer:
    return _fused_if_possible(
        torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW,
        params,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        amsgrad=cfg.amsgrad,
    )


def _rmsprop(cfg: schema.RMSpropConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        params,
        lr=cfg.lr,
        alpha=cfg.alpha,
        eps=cfg.eps,
        momentum=cfg.momentum,
        centered=cfg.centered,
        weight_decay=cfg.weight_decay,
    )


def _lbfgs(cfg: schema.LBFGSConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.LBFGS(
        params,
        lr=cfg.lr,
        max_iter=cfg.max_iter,
        history_size=cfg.history_size,
        line_search_fn=None if cfg.line_search == "none" else cfg.line_search,
        tolerance_grad=cfg.tolerance_grad,
        tolerance_change=cfg.tolerance_change,
    )


def _fused_if_possible(cls: Any, params: Params, **settings: Any) -> torch.optim.Optimizer:
    """PyTorch's fused kernel where it exists: one kernel for all parameters instead of
    several per tensor, 20-30% off a small model's step on CPU, with the same update rule."""
    try:
        optimizer: torch.optim.Optimizer = cls(params, fused=True, **settings)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the kernel
        optimizer = cls(params, **settings)
    return optimizer


OPTIMIZERS: dict[str, Choice[Any, torch.optim.Optimizer]] = {
    "sgd": Choice(schema.SGDConfig, _sgd),
    "adam": Choice(schema.AdamConfig, _adam),
    "adamw": Choice(schema.AdamConfig, _adam),
    "rmsprop": Choice(schema.RMSpropConfig, _rmsprop),
    "lbfgs": Choice(schema.LBFGSConfig, _lbfgs),
}


def build_optimizer(params: Params, cfg: schema.OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name`, with its own settings."""
    _eager_only()
    optimizer: torch.optim.Optimizer = OPTIMIZERS[cfg.name].build(cfg, params)
    return optimizer


# torch.optim.Optimizer's methods that torch wraps in `torch._disable_dynamo` (torch/_compile.py)
_NOT_COMPILED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_CACHE = "__dynamo_disable"  # the attribute torch/_compile.py's wrapper caches the marked function in


def _eager_only() -> None:
    """Keep `torch._dynamo` unimported where nothing compiles. torch wraps the optimizer
    methods in _NOT_COMPILED in `torch._disable_dynamo`, whose wrapper imports torch._dynamo
    (sympy, torch.fx: 1.7 s of a 4 s run on this machine) at its first call, only to mark the
    method as one that compiled code must not trace; it caches the marked method on the
    original function (`__dynamo_disable`) and calls that from then on. mse-train never
    compiles, so the method itself is cached here: the call is the same in eager mode, and
    the import is skipped. (`step`'s own wrapper imports torch._dynamo without a cache: the
    stack calls no optimizer's `step`, and a module steps through `step` below.) Where the
    wrapper or its cache is not there (another torch), nothing is changed; once
    torch._dynamo is loaded, neither."""
    if "torch._dynamo" in sys.modules:
        return
    for name in _NOT_COMPILED:
        original = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if callable(original) and not hasattr(original, _CACHE):
            setattr(original, _CACHE, original)


SCHEDULERS: dict[str, Choice[Any, Scheduler | None]] = {
    "none": Choice(schema.NoScheduler, lambda c, o: None),
    "step": Choice(
        schema.StepScheduler, lambda c, o: lr_scheduler.StepLR(o, step_size=c.step_size, gamma=c.gamma)
    ),
    "multistep": Choice(
        schema.MultiStepScheduler,
        lambda c, o: lr_scheduler.MultiStepLR(o, milestones=list(c.milestones), gamma=c.gamma),
    ),
    "exponential": Choice(
        schema.ExponentialScheduler, lambda c, o: lr_scheduler.ExponentialLR(o, gamma=c.gamma)
    ),
    "cosine": Choice(
        schema.CosineScheduler,
        lambda c, o: lr_scheduler.CosineAnnealingLR(o, T_max=c.t_max, eta_min=c.eta_min),
    ),
    "plateau": Choice(
        schema.PlateauScheduler,
        lambda c, o: lr_scheduler.ReduceLROnPlateau(
            o, mode="min", factor=c.factor, patience=c.patience, threshold=c.threshold, min_lr=c.min_lr
        ),
    ),
}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: schema.SchedulerConfig) -> Scheduler | None:
    """The scheduler named by `cfg.name`, stepped once per epoch; None for `none`."""
    scheduler: Scheduler | None = SCHEDULERS[cfg.name].build(cfg, optimizer)
    return scheduler


def step_scheduler(scheduler: Scheduler, watched: float) -> None:
    """One step at the end of an epoch; plateau watches the epoch's loss."""
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(watched)
    else:
        scheduler.step()


def step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()`, without importing `torch._dynamo` where nothing compiles.

    torch wraps every optimizer's `step` twice: in `Optimizer.profile_hook_step` (a profiler
    label and the step hooks) and, for Adam, AdamW, SGD and RMSprop, in
    `_use_grad_for_differentiable`, which imports torch._dynamo on every call (1.2-1.7 s at
    the first, the same cost as in `_eager_only`) only to mark graph breaks for the compiler,
    and steps with grad mode set to the optimizer's `differentiable` flag. Where no hook is
    registered, no profiler runs, nothing compiles and the optimizer is not differentiable,
    this calls the optimizer's own step under `torch.no_grad()`, as that wrapper does in eager
    mode. In any other case (hooks, a profiler, torch.compile, another torch whose wrappers
    differ) it calls `optimizer.step()` as it is."""
    own = _own_step(type(optimizer))
    if (
        own is None
        or not _step_unchanged(optimizer)
        or torch.compiler.is_compiling()
        or optimizer.defaults.get("differentiable", False)
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _optim_module._global_optimizer_pre_hooks
        or _optim_module._global_optimizer_post_hooks
        or torch.autograd.profiler._is_profiler_enabled
    ):
        optimizer.step()
        return
    with torch.no_grad():
        own(optimizer)
    optimizer._optimizer_step_code()  # the profiler's step marker, as torch's wrapper calls it
    optimizer._opt_called = True  # type: ignore[attr-defined]  # as a scheduler's wrapper marks it


def _step_unchanged(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step` is its class's, or a learning-rate scheduler's wrapper of it
    (torch's LRScheduler wraps the instance's `step` to mark `_opt_called`, which it checks
    to warn about a scheduler stepped before its optimizer: `step` marks it likewise)."""
    bound = vars(optimizer).get("step")
    if bound is None:
        return True
    return bool(getattr(bound, "_wrapped_by_lr_sched", False)) and (
        getattr(bound, "__wrapped__", None) is type(optimizer).step
    )


_OWN_STEPS: dict[type, Any] = {}


def _own_step(cls: type) -> Any:
    """The class's own `step` under torch's two wrappers, or None when the wrappers are not
    the two this torch's `Optimizer.profile_hook_step` and `_use_grad_for_differentiable`
    make (compared by their code objects, so no other wrapper is ever skipped)."""
    if cls not in _OWN_STEPS:
        outer = getattr(cls, "step", None)
        middle = getattr(outer, "__wrapped__", None)
        own = getattr(middle, "__wrapped__", None)
        profiled = getattr(torch.optim.Optimizer, "profile_hook_step", None)
        use_grad = getattr(_optim_module, "_use_grad_for_differentiable", None)
        matches = (
            callable(own)
            and callable(profiled)
            and callable(use_grad)
            and getattr(outer, "__code__", None) is profiled(_noop).__code__
            and getattr(middle, "__code__", None) is use_grad(_noop).__code__
        )
        _OWN_STEPS[cls] = own if matches else None
    return _OWN_STEPS[cls]


def _noop() -> None:
    """A function to wrap, to read the code object of torch's wrappers."""
