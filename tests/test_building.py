"""Every optimizer, scheduler and init scheme the schema offers is built as named and trains."""

from __future__ import annotations

import math

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
