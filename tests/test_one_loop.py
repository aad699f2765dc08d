"""One loop, two model axes: a run trains as a stack of one (training/stack/) where its
config can stack, and as a torch module (training/module.py) otherwise or with --no-pack.
The two must give the same run: the same epochs, losses and weights up to float rounding,
and a last.pt that either one can resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mse_train import config, recipe
from mse_train.errors import TrainingInterrupted
from mse_train.training import module, stack
from mse_train.training.stack import why_alone

from conftest import read_metrics, signal_at_step, write_config, write_csv

REL = 1e-4


@pytest.fixture
def curved(tmp_path: Path) -> Path:
    """Two targets, a bend and noise: enough rows for several shuffled batches."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 3))
    y1 = x @ [1.0, -2.0, 0.5] + np.tanh(2 * x[:, 0]) + 0.1 * rng.normal(size=600)
    y2 = x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=600)
    rows = np.column_stack([x, y1, y2]).round(6).tolist()
    return write_csv(tmp_path / "curved.csv", ["a", "b", "c", "y1", "y2"], rows)


SETTINGS: dict[str, dict[str, Any]] = {
    "sgd-nesterov-steplr-l1-l2": {
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        "scheduler": {"name": "step", "step_size": 2, "gamma": 0.5},
        "regularization": {"l1": 1e-4, "l2": 1e-3},
    },
    "adam-plateau-early-stop": {
        "optimizer": {"name": "adam", "lr": 0.01},
        "scheduler": {"name": "plateau", "patience": 1, "factor": 0.5},
        "train": {"early_stopping": {"patience": 2, "min_delta": 0.3}},
    },
    "adamw-tanh-sum": {
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1},
        "model": {"type": "mlp", "hidden": [16, 8], "activation": "tanh"},
        "loss": {"reduction": "sum"},
    },
    "gelu-autograd": {"model": {"type": "mlp", "hidden": [8], "activation": "gelu"}},
    "linear-full-batch": {"model": {"type": "linear"}, "train": {"batch_size": None}},
    "periodic-embedding-sgd": {
        "model": {"type": "mlp", "hidden": [16], "numeric_embedding": "periodic", "frequencies": 4},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    },
    "piecewise-embedding-l1": {
        "model": {"type": "mlp", "hidden": [16], "numeric_embedding": "piecewise_linear", "bins": 8},
        "regularization": {"l1": 1e-3},
    },
}


def settings(table: Path, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 7,
        "data": {"train": str(table), "target": ["y1", "y2"], "val_fraction": 0.25},
        "model": {"type": "mlp", "hidden": [16, 16]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 8, "batch_size": 64},
        "output": {"dir": str(out), "plot": False},
    }
    for key, value in extra.items():  # a model section replaces the default one
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) and key != "model" else value
    return cfg


def numbers(run: Path) -> list[dict[str, float]]:
    rows = read_metrics(run / "metrics.csv")
    return [{k: float(v) for k, v in r.items() if v not in ("", None) and k != "seconds"} for r in rows]


def assert_close_runs(a: Path, b: Path) -> None:
    ra, rb = numbers(a), numbers(b)
    assert len(ra) == len(rb) and len(ra) > 0
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert math.isclose(x[key], y[key], rel_tol=REL, abs_tol=1e-7), (key, x, y)
    wa = torch.load(a / "best.pt", weights_only=True)["weights"]
    wb = torch.load(b / "best.pt", weights_only=True)["weights"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_a_stack_of_one_trains_as_the_module_does(cli, tmp_path, curved, name):
    cfg = write_config(tmp_path / "cfg.yaml", settings(curved, tmp_path / "x", SETTINGS[name]))
    assert why_alone(config.load(cfg)) is None  # this config does train as a stack
    for folder, extra in (("stacked", []), ("module", ["--no-pack"])):
        result = cli("run", cfg, "-q", "-o", tmp_path / folder, *extra)
        assert result.code == 0, result
    assert_close_runs(tmp_path / "stacked", tmp_path / "module")
    if name == "sgd-nesterov-steplr-l1-l2":  # the schedule halves the lr every 2 epochs, as torch's does
        lrs = [r["lr"] for r in numbers(tmp_path / "stacked")]
        assert lrs == pytest.approx([0.02, 0.02, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025], rel=1e-12)
    if name == "adam-plateau-early-stop":
        assert len(numbers(tmp_path / "stacked")) < 8  # it did stop early, at the same epoch


def test_run_builds_the_axis_its_config_allows(tmp_path, curved):
    """A stack where the config can stack; a module for dropout, or when asked with --no-pack."""
    from mse_train.data import stream_fit

    def axis(extra: dict[str, Any], stacked: bool = True) -> type:
        cfg = config.load(write_config(tmp_path / "c.yaml", settings(curved, tmp_path / "o", extra)))
        prepared = stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, cfg.train.batch_size)
        return type(recipe.build_loop(cfg, prepared, torch.device("cpu"), stack=stacked).models)

    assert axis({}) is stack.Stack
    assert axis({}, stacked=False) is module.Module
    assert axis({"model": {"type": "mlp", "hidden": [8], "dropout": 0.1}}) is module.Module
    assert axis({"optimizer": {"name": "rmsprop", "lr": 0.01}}) is module.Module


@pytest.mark.parametrize(
    "first, then", [("--no-pack", None), (None, "--no-pack")], ids=["module-then-stack", "stack-then-module"]
)
def test_last_pt_of_either_axis_resumes_in_the_other(cli, tmp_path, curved, first, then):
    """The stack's checkpoint is in the module's format (optimizer state by parameter), so a
    run continues whichever way its last.pt was written, to the result of one straight run."""
    cfg = write_config(
        tmp_path / "cfg.yaml", settings(curved, tmp_path / "x", SETTINGS["sgd-nesterov-steplr-l1-l2"])
    )
    assert cli("run", cfg, "-q", "-o", tmp_path / "straight").code == 0
    flags = [first] if first else []
    assert cli("run", cfg, "-q", "-o", tmp_path / "split", "--set", "train.epochs=3", *flags).code == 0
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["training"]
    assert state["optimizer"]["state"], "momentum buffers are saved by parameter, as torch's SGD keeps them"
    again = [then] if then else []
    result = cli("run", cfg, "-q", "-o", tmp_path / "split", "--resume", *again)
    assert result.code == 0, result
    assert_close_runs(tmp_path / "straight", tmp_path / "split")


def test_a_mid_epoch_last_pt_from_before_the_model_axis_still_resumes(tmp_path, curved, monkeypatch):
    """Checkpoints written before the model axis held each batch's loss as a scalar, not [1]."""
    cfg = config.load(write_config(tmp_path / "c.yaml", settings(curved, tmp_path / "a", {})))
    restore = signal_at_step(monkeypatch, 10)  # 8 batches per epoch: inside epoch 2
    with pytest.raises(TrainingInterrupted):
        recipe.run(cfg, recipe.Options(), recipe.Silent())
    restore()
    path = tmp_path / "a" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    progress = ckpt["training"]["progress"]
    assert progress["batch"] == 2 and progress["partial_losses"].shape == (2, 1)
    progress["partial_losses"] = progress["partial_losses"].reshape(-1)  # the old layout
    torch.save(ckpt, path)
    recipe.run(cfg, recipe.Options(resume=True), recipe.Silent())
    cfg.output.dir = str(tmp_path / "b")
    recipe.run(cfg, recipe.Options(), recipe.Silent())
    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")


def test_a_stack_of_one_that_diverges_rolls_back_like_a_module(cli, tmp_path, curved):
    extra = {"optimizer": {"name": "sgd", "lr": 5.0}, "data": {"standardize": False}}
    cfg = write_config(tmp_path / "cfg.yaml", settings(curved, tmp_path / "x", extra))
    epochs = []
    for folder, flags in (("stacked", []), ("module", ["--no-pack"])):
        result = cli("run", cfg, "-q", "-o", tmp_path / folder, *flags)
        assert result.code == 1 and "diverged" in result.stderr, result
        last = torch.load(tmp_path / folder / "last.pt", weights_only=True)
        assert all(torch.isfinite(w).all() for w in last["weights"].values())
        epochs.append(last["epoch"])
    assert epochs[0] == epochs[1]


@pytest.mark.parametrize("numbers", [2, 0], ids=["numbers-and-categories", "categories-only"])
def test_a_piecewise_embedding_with_one_hot_columns_stacks_as_the_module_trains(cli, tmp_path, numbers):
    """The embedding reads the numeric inputs; the one-hot columns pass beside it."""
    rng = np.random.default_rng(1)
    colour = rng.choice(["red", "green", "blue"], size=300)
    x = rng.normal(size=(300, 2))
    y = x[:, 0] ** 2 + x[:, 1] + (colour == "red") * 1.5 + 0.1 * rng.normal(size=300)
    header = [*["a", "b"][:numbers], "colour", "y"]
    rows = [
        [*map(float, xi[:numbers]), c, float(v)]
        for xi, c, v in zip(x.round(5), colour, y.round(5), strict=True)
    ]
    table = write_csv(tmp_path / "mixed.csv", header, rows)
    extra = {"model": {"type": "mlp", "hidden": [8], "numeric_embedding": "piecewise_linear", "bins": 4}}
    body = settings(table, tmp_path / "x", extra)
    body["data"] = {"train": str(table), "target": "y", "val_fraction": 0.25}
    cfg = write_config(tmp_path / "cfg.yaml", body)
    assert why_alone(config.load(cfg)) is None
    for folder, flags in (("stacked", []), ("module", ["--no-pack"])):
        result = cli("run", cfg, "-q", "-o", tmp_path / folder, *flags)
        assert result.code == 0, result
    assert_close_runs(tmp_path / "stacked", tmp_path / "module")


@pytest.mark.parametrize(
    "edit",
    [
        lambda state: state[0].update(exp_avg=torch.zeros(3, 3)),  # the wrong shape
        lambda state: state[0].update(step="many"),
        lambda state: state[0].pop("exp_avg_sq"),
        lambda state: state[0].update(exp_avg=torch.full_like(state[0]["exp_avg"], math.nan)),
    ],
    ids=["moment-shape", "step-text", "moment-missing", "moment-nan"],
)
def test_an_edited_optimizer_state_is_refused_when_a_stack_resumes(cli, tmp_path, curved, edit):
    cfg = write_config(tmp_path / "cfg.yaml", settings(curved, tmp_path / "run", {}))
    assert cli("run", cfg, "-q", "--set", "train.epochs=2").code == 0
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    edit(ckpt["training"]["optimizer"]["state"])
    torch.save(ckpt, last)
    result = cli("run", cfg, "-q", "--resume")
    assert result.code == 2, result
    assert "last.pt: its training state does not fit" in result.stderr or (
        "`training.optimizer.state.0.exp_avg` holds NaN or infinite values" in result.stderr
    )
