"""Every optimizer, scheduler and init scheme the schema offers is built as named and trains."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mse_train import config
from mse_train.config import schema, yamlio
from mse_train.models import init, networks
from mse_train.training import optimizers

from conftest import read_metrics


@pytest.mark.parametrize("name", list(schema.VARIANTS["optimizer"]))
def test_every_optimizer_trains(cli, small_config, tmp_path, name):
    lr = {"sgd": 0.01, "adam": 0.01, "adamw": 0.01, "rmsprop": 0.001, "lbfgs": 1.0}[name]
    cfg = small_config(optimizer={"name": name, "lr": lr}, train={"epochs": 5})
    assert cli("run", cfg, "-q").code == 0
    losses = [float(r["train_loss"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")]
    assert losses[-1] < losses[0]
    document = yamlio.Document({"data": {"train": "x", "target": "y"}, "optimizer": {"name": name}}, {}, "t")
    resolved = config.from_document(document, tmp_path)
    kind = type(optimizers.build_optimizer([torch.nn.Parameter(torch.zeros(2))], resolved.optimizer))
    assert kind.__name__.lower() == name


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ({"name": "none"}, [0.1] * 6),
        ({"name": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        ({"name": "multistep", "milestones": [1, 4], "gamma": 0.1}, [0.1, 0.01, 0.01, 0.01, 0.001, 0.001]),
        ({"name": "exponential", "gamma": 0.5}, [0.1 * 0.5**k for k in range(6)]),
        ({"name": "cosine", "t_max": 6}, [0.05 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else "",
)
def test_every_scheduler_sets_the_lr_per_epoch(cli, small_config, tmp_path, scheduler, expected):
    cfg = small_config(optimizer={"name": "sgd", "lr": 0.1}, scheduler=scheduler, train={"epochs": 6})
    assert cli("run", cfg, "-q").code == 0
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")]
    assert lrs == pytest.approx(expected)


def test_plateau_scheduler_cuts_the_lr_when_val_loss_stalls(cli, small_config, tmp_path):
    cfg = small_config(
        optimizer={"name": "sgd", "lr": 1e-6},  # too small to improve by the 50% threshold
        scheduler={"name": "plateau", "patience": 1, "factor": 0.5, "threshold": 0.5},
        data={"val_fraction": 0.2},
        train={"epochs": 6},
    )
    assert cli("run", cfg, "-q").code == 0
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")]
    assert lrs[0] == 1e-6 and lrs[-1] < 1e-6


def _layer(scheme: dict[str, object], bias: str = "default") -> torch.nn.Linear:
    torch.manual_seed(0)
    cfg = schema.Config.model_validate(
        {"data": {"train": "x", "target": "y"}, "init": {**scheme, "bias": bias}, "model": "mlp"}
    )
    model = networks.build(cfg.model, 64, 1, 64)
    init.apply(model, cfg.init)
    layer = model.get_submodule("2")  # the 64 x 64 hidden layer
    assert isinstance(layer, torch.nn.Linear)
    return layer


def test_init_schemes_do_what_they_say():
    assert (_layer({"scheme": "zeros"}).weight == 0).all()
    assert (_layer({"scheme": "default"}, bias="zeros").bias == 0).all()
    assert (_layer({"scheme": "default"}).bias != 0).any()
    uniform = _layer({"scheme": "uniform", "a": 2.0, "b": 3.0}).weight
    assert uniform.min() >= 2.0 and uniform.max() <= 3.0
    normal = _layer({"scheme": "normal", "mean": 1.0, "std": 0.1}).weight
    assert normal.mean().item() == pytest.approx(1.0, abs=0.01) and normal.std().item() == pytest.approx(
        0.1, rel=0.05
    )
    trunc = _layer({"scheme": "trunc_normal", "std": 1.0, "a": -0.5, "b": 0.5}).weight
    assert trunc.abs().max() <= 0.5
    ortho = _layer({"scheme": "orthogonal"}).weight
    assert torch.allclose(ortho @ ortho.T, torch.eye(64), atol=1e-5)
    bound = math.sqrt(6 / (64 + 64))  # xavier_uniform, gain 1
    xavier = _layer({"scheme": "xavier_uniform"}).weight
    assert xavier.abs().max() <= bound and xavier.abs().max() > 0.9 * bound
    assert _layer({"scheme": "xavier_normal"}).weight.std().item() == pytest.approx(
        math.sqrt(2 / 128), rel=0.05
    )
    kaiming = _layer({"scheme": "kaiming_normal"}).weight
    assert kaiming.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)  # relu gain, fan_in
    kaiming_max = _layer({"scheme": "kaiming_uniform"}).weight.abs().max()
    assert 0.9 * math.sqrt(6 / 64) < kaiming_max <= math.sqrt(6 / 64)


@pytest.mark.parametrize(
    "cfg",
    [
        schema.AdamConfig(name="adam", lr=0.01, weight_decay=0.1),
        schema.AdamConfig(name="adamw", lr=0.01, weight_decay=0.1),
        schema.SGDConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True),
        schema.RMSpropConfig(name="rmsprop", lr=0.01, momentum=0.5, centered=True),
    ],
    ids=lambda cfg: cfg.name,
)
def test_the_eager_step_updates_as_torchs_step_does(cfg):
    """`optimizers.step` calls the optimizer's own step under torch's wrappers: the weights,
    the optimizer's state and its step count come out bit for bit as `optimizer.step()`'s."""

    def train(stepper):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
        opt = optimizers.build_optimizer(list(model.parameters()), cfg)
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # wraps opt.step
        assert optimizers._step_unchanged(opt)  # that wrapper is one the eager step steps past
        x, y = torch.randn(16, 3), torch.randn(16, 1)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            stepper(opt)
            assert torch.is_grad_enabled()  # the grad mode is given back
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()"
                schedule.step()
        return model.state_dict(), opt.state_dict()

    own = optimizers._own_step(type(optimizers.build_optimizer([torch.nn.Parameter(torch.ones(1))], cfg)))
    assert own is not None  # this torch's wrappers are the two it skips: the test compares something
    (weights, state), (ours, our_state) = train(lambda opt: opt.step()), train(optimizers.step)
    assert all(torch.equal(weights[name], ours[name]) for name in weights)
    for index, values in state["state"].items():
        for key, value in values.items():
            other = our_state["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_the_eager_step_leaves_step_hooks_to_torch():
    """With a step hook registered, `optimizers.step` calls `optimizer.step()`, hooks and all."""
    model = torch.nn.Linear(2, 1)
    opt = optimizers.build_optimizer(list(model.parameters()), schema.SGDConfig(name="sgd", lr=0.1))
    seen: list[str] = []
    opt.register_step_pre_hook(lambda *_: seen.append("pre"))
    opt.register_step_post_hook(lambda *_: seen.append("post"))
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.detach().clone()
    optimizers.step(opt)
    assert seen == ["pre", "post"]
    assert not torch.equal(before, model.weight)
