"""The stack's written-out backward pass against autograd through the models/ definition.

training/stack/stacked.py steps K small models with a backward pass written by hand (and
training/stack/embeddings.py the numeric embeddings'), because at batch 64 torch's own
batched path is slower (bench/stack_torch.py: torch.func.vmap + autograd + torch.optim at
0.48x the hand-written stack, K = 16, MLP 64-64). So that the two definitions cannot
drift, each activation and each numeric embedding's stacked gradient is checked here
against autograd through the nn.Module that models/ builds, penalty included; and every
activation models/ offers must have a stacked backward or be named as autograd's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mse_train import config as config_module
from mse_train import recipe
from mse_train.config import schema
from mse_train.data import prepare
from mse_train.models import networks
from mse_train.training import stack as stack_module  # the door: BACKWARDS, AUTOGRAD_ONLY
from mse_train.training.module import build_penalty
from mse_train.training.stack import Stack

EMBEDDINGS = [e for e in schema.NumericEmbedding.__args__]  # type: ignore[attr-defined]


def _prepared(
    tmp_path: Path, activation: str, embedding: str, reduction: str
) -> tuple[schema.Config, prepare.Prepared]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    rows = "\n".join(",".join(f"{v:.6f}" for v in (*r, t)) for r, t in zip(x, y, strict=True))
    (tmp_path / "t.csv").write_text("a,b,c,y\n" + rows + "\n")
    (tmp_path / "c.yaml").write_text(
        "data: {train: t.csv, target: y, val_fraction: 0.0}\n"
        f"model: {{type: mlp, hidden: [8, 5], activation: {activation}, numeric_embedding: {embedding}}}\n"
        "optimizer: {name: adam, lr: 0.01}\n"
        f"loss: {{reduction: {reduction}}}\n"
        "regularization: {l1: 0.001, l2: 0.01}\n"
        "train: {epochs: 1, batch_size: 16}\n"
        "output: {plot: false}\n"
    )
    cfg = config_module.load(tmp_path / "c.yaml")
    loaded = prepare.load_training(cfg.data, cfg.targets)
    everything = np.arange(loaded.table.n_rows)
    prepared, _ = prepare.fit_split(loaded, cfg.data, everything, everything[:1], "all", cfg.seed)
    return cfg, prepared


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", sorted(networks.ACTIVATIONS))
def test_stacked_gradient_is_autograds_through_the_module(tmp_path, activation, embedding):
    reduction = "sum" if activation == "tanh" else "mean"
    cfg, prepared = _prepared(tmp_path, activation, embedding, reduction)
    device = torch.device("cpu")
    builts = [recipe.build_one(cfg.model_copy(update={"seed": seed}), prepared, device) for seed in (0, 1)]
    x = torch.from_numpy(prepared.train.x[:16])
    y = torch.from_numpy(prepared.train.y[:16])

    expected = []
    for built in builts:  # the models/ definition, through autograd
        model = built.model
        model.zero_grad()
        sq = ((model(x) - y) ** 2).sum()
        loss = sq / y.numel() if reduction == "mean" else sq
        penalty = build_penalty(model, cfg.regularization)
        assert penalty is not None
        (loss + penalty()).backward()
        expected.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))

    stack = Stack(builts, device)
    assert (stack.derivative is None) == (activation in stack_module.AUTOGRAD_ONLY)
    counts = torch.full((stack.k,), float(len(x)))
    xb, yb = x.expand(stack.k, *x.shape), y.expand(stack.k, *y.shape)
    if stack.derivative is not None:
        with torch.no_grad():
            stack._by_hand(xb, yb, None, counts)
    else:
        stack._autograd(xb, yb, None, counts)
    assert stack.flat.grad is not None
    for k in range(stack.k):
        torch.testing.assert_close(stack.flat.grad[k], expected[k], rtol=1e-5, atol=1e-6)


def test_every_activation_has_a_stacked_backward_or_is_named_as_autograds():
    """A new activation in models/ without a kernel here would silently train through
    autograd, slower: it must be added to BACKWARDS, or to AUTOGRAD_ONLY on purpose."""
    missing = set(networks.ACTIVATIONS) - set(stack_module.BACKWARDS) - stack_module.AUTOGRAD_ONLY
    assert not missing, f"activations with no stacked backward: {sorted(missing)}"


def test_an_activation_with_no_stacked_form_fails_loudly(tmp_path, monkeypatch):
    cfg, prepared = _prepared(tmp_path, "relu", "none", "mean")
    monkeypatch.delitem(stack_module.BACKWARDS, "relu")
    built = recipe.build_one(cfg, prepared, torch.device("cpu"))
    with pytest.raises(NotImplementedError, match="relu"):
        Stack([built], torch.device("cpu"))


def test_a_stacked_models_lr_lives_in_its_torch_optimizer(tmp_path):
    """A stacked model's lr has one home, its own torch optimizer (what its scheduler moves
    and its checkpoint holds); the update's float32 column follows it after a schedule step,
    a rollback and a checkpoint load, and the fused Adam path reads it there."""
    from mse_train.config import schema

    cfg, prepared = _prepared(tmp_path, "relu", "none", "mean")
    device = torch.device("cpu")

    def built(seed: int, gamma: float):
        one = cfg.model_copy(
            update={"seed": seed, "scheduler": schema.ExponentialScheduler(name="exponential", gamma=gamma)}
        )
        return recipe.build_one(one, prepared, device)

    stack = Stack([built(0, 0.5), built(1, 0.25)], device)

    def agree() -> list[float]:
        lrs = [b.optimizer.param_groups[0]["lr"] for b in stack.builts]
        column = stack.update.lr[:, 0].tolist()
        assert column == torch.tensor(lrs, dtype=torch.float32).tolist(), (column, lrs)
        return lrs

    assert agree() == [0.01, 0.01]
    assert [stack.schedule(i, 1.0) for i in range(2)] == [0.01, 0.01]  # this epoch's, then a step
    assert agree() == pytest.approx([0.005, 0.0025])
    stack.capture()
    stack.schedule(0, 1.0)
    assert agree() == pytest.approx([0.0025, 0.0025])
    stack.restore()  # a rollback puts the lr back where it lives, and the column follows
    assert agree() == pytest.approx([0.005, 0.0025])

    one = Stack([built(0, 0.5)], device)
    one.schedule(0, 1.0)
    state = one.state_dict()
    fresh = Stack([built(0, 0.5)], device)
    fresh.load_state_dict(state)  # a checkpoint's lr, in the torch optimizer and the column
    assert fresh.builts[0].optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert fresh.update.lr[0, 0].item() == pytest.approx(0.005)
