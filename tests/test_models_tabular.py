"""Numeric embeddings, resnet and tabm: shapes, determinism, checkpoints, bins, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mse_train.config import schema
from mse_train.models import blocks, embeddings, init, networks
from mse_train.training.module import build_penalty, member_loss
from mse_train.training.stack import pack_key

from conftest import DATA, read_json, read_metrics, write_config, write_csv

# Small versions of each new option, so that a run takes a second or two.
OPTIONS: dict[str, dict[str, Any]] = {
    "mlp-periodic": {"type": "mlp", "hidden": [16], "numeric_embedding": "periodic", "frequencies": 4,
                     "embedding_size": 4, "frequency_scale": 0.1},
    "mlp-periodic-lite": {"type": "mlp", "hidden": [16], "numeric_embedding": "periodic", "frequencies": 4,
                          "embedding_size": 4, "periodic_lite": True},
    "mlp-piecewise": {"type": "mlp", "hidden": [16], "numeric_embedding": "piecewise_linear", "bins": 8,
                      "embedding_size": 4},
    "resnet": {"type": "resnet", "width": 16, "blocks": 2},
    "resnet-layernorm-periodic": {"type": "resnet", "width": 16, "blocks": 1, "norm": "layer_norm",
                                  "numeric_embedding": "periodic", "frequencies": 4, "embedding_size": 4},
    "tabm": {"type": "tabm", "k": 4, "width": 16, "blocks": 2},
    "tabm-mini-piecewise": {"type": "tabm", "k": 4, "width": 16, "sharing": "tabm_mini",
                            "numeric_embedding": "piecewise_linear", "bins": 6, "embedding_size": 4},
    "tabm-packed-piecewise": {"type": "tabm", "k": 4, "width": 16, "sharing": "packed",
                              "numeric_embedding": "piecewise_linear", "bins": 6, "embedding_size": 4},
}  # fmt: skip


def model_cfg(options: dict[str, Any]) -> Any:
    return schema.VARIANTS["model"][options["type"]](**options)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Three numeric columns (one with a step), one categorical column, 160 rows."""
    rng = np.random.default_rng(3)
    n = 160
    x = rng.normal(size=(n, 3))
    c = rng.choice(["a", "b", "c"], size=n)
    y = np.where(x[:, 0] > 0.3, 2.0, -1.0) + x[:, 1] + 0.5 * (c == "b") + 0.1 * rng.normal(size=n)
    rows = [[*np.round(x[i], 5), c[i], round(float(y[i]), 5)] for i in range(n)]
    return write_csv(tmp_path / "mixed.csv", ["x0", "x1", "x2", "c", "y"], rows)


def losses(run: Path) -> list[list[str]]:
    """Every column of metrics.csv but the wall time."""
    return [[v for k, v in row.items() if k != "seconds"] for row in read_metrics(run / "metrics.csv")]


def config(tmp_path: Path, table: Path, model: dict[str, Any], **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "seed": 7,
        "data": {"train": str(table), "target": "y", "val_fraction": 0.25},
        "model": model,
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 4, "batch_size": 32},
        "output": {"plot": False},
        **extra,
    }
    return write_config(tmp_path / "cfg.yaml", cfg)


# ------------------------------------------------------------------------- units
@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_model_maps_rows_to_targets(name):
    net = networks.build(model_cfg(OPTIONS[name]), n_inputs=6, n_outputs=2, n_numeric=3)
    embeddings.fit(net, np.random.default_rng(0).normal(size=(50, 3)))
    x = torch.randn(9, 6)
    net.eval()
    assert net(x).shape == (9, 2)
    net.train()
    expected = (9, 4, 2) if OPTIONS[name]["type"] == "tabm" else (9, 2)  # tabm: each member trains
    assert net(x).shape == expected


@pytest.mark.parametrize("lite", [False, True])
def test_periodic_embedding_is_relu_of_a_linear_map_of_cos_and_sin(lite):
    emb = embeddings.PeriodicEmbedding(3, size=5, frequencies=4, scale=0.5, lite=lite)
    x = torch.randn(7, 3)
    out = emb(x)
    assert out.shape == (7, 15)
    assert bool((out >= 0).all())
    f = 1  # feature 1 by hand
    v = 2 * np.pi * emb.frequency[f] * x[:, f : f + 1]
    z = torch.cat([torch.cos(v), torch.sin(v)], 1)
    w = emb.weight if lite else emb.weight[f]
    b = emb.bias if lite else emb.bias[f]
    torch.testing.assert_close(out[:, 5:10], torch.relu(z @ w + b))


def test_periodic_frequencies_start_at_the_configured_scale():
    torch.manual_seed(0)
    emb = embeddings.PeriodicEmbedding(64, size=4, frequencies=64, scale=0.2, lite=False)
    assert float(emb.frequency.detach().std()) == pytest.approx(0.2, rel=0.1)
    assert float(emb.frequency.detach().abs().max()) <= 0.6  # cut at 3 sigma, as the reference


def test_piecewise_linear_encoding_follows_the_bins():
    emb = embeddings.PiecewiseLinearEmbedding(2, size=3, bins=4)
    # feature 0: bins [0,1,2,4]; feature 1 has one bin [0,10] (values repeated)
    emb.set_bins([np.array([0.0, 1.0, 2.0, 4.0]), np.array([0.0, 10.0])])
    x = torch.tensor([[1.5, 5.0], [3.0, 20.0], [-1.0, -10.0]])
    z = torch.addcmul(emb.shift, emb.scale, x[..., None])
    # the encoding before its clamps, for feature 0 at 1.5: [1.5, 0.5, -0.25]; slot 2 unused
    torch.testing.assert_close(z[0, 0], torch.tensor([1.5, 0.5, 0.0, -0.25]))
    with torch.no_grad():
        emb.weight.zero_()
        emb.weight[:, :, 0] = 1.0  # output 0 = sum of the encoding
        emb.linear_weight.zero_()
        emb.linear_bias.zero_()
        out = emb(x).reshape(3, 2, 3)[:, :, 0]
    # 1.5 -> [1, 0.5, 0, 0]; 3.0 -> [1, 1, 0, 0.5]; -1 -> [-1, 0, 0, 0] (first bin extrapolates)
    torch.testing.assert_close(out[:, 0], torch.tensor([1.5, 2.5, -1.0]))
    # one bin: min-max scaling, unbounded both ways
    torch.testing.assert_close(out[:, 1], torch.tensor([0.5, 2.0, -1.0]))


def test_quantile_edges_drop_repeats_and_survive_a_constant_column():
    x = np.column_stack([np.arange(100.0), np.repeat([0.0, 1.0], 50), np.full(100, 3.0)])
    edges = embeddings.quantile_edges(x, bins=4)
    np.testing.assert_allclose(edges[0], [0, 24.75, 49.5, 74.25, 99])
    np.testing.assert_allclose(edges[1], [0, 0.5, 1])  # the median interpolates, as torch.quantile
    np.testing.assert_allclose(edges[2], [3, 4])


def test_tabm_trains_each_member_on_its_own_mse_and_predicts_their_mean():
    torch.manual_seed(0)
    net = networks.build(model_cfg({**OPTIONS["tabm"], "dropout": 0.0}), 3, 1, 3)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    net.train()
    members = net(x)
    mse = torch.nn.MSELoss()
    per_member = torch.stack([mse(members[:, i], y) for i in range(4)]).mean()
    torch.testing.assert_close(member_loss(mse, members, y), per_member)
    sums = torch.stack([torch.nn.MSELoss(reduction="sum")(members[:, i], y) for i in range(4)]).mean()
    torch.testing.assert_close(member_loss(torch.nn.MSELoss(reduction="sum"), members, y), sums)
    net.eval()
    torch.testing.assert_close(net(x), members.mean(1).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharing", ["tabm", "tabm_mini"])
def test_tabm_members_differ_from_the_start_and_share_their_weights(sharing):
    torch.manual_seed(0)
    net = networks.build(model_cfg({**OPTIONS["tabm"], "sharing": sharing}), 3, 1, 3)
    net.train()
    out = net(torch.randn(5, 3))
    assert not torch.allclose(out[:, 0], out[:, 1])
    shared = [m for m in net.modules() if isinstance(m, blocks.EnsembleLinear)]
    assert shared and all(m.weight.shape == (16, m.weight.shape[1]) for m in shared)
    assert all((m.s is None) == (sharing == "tabm_mini") for m in shared)


def test_packed_tabm_members_share_no_weight_and_each_trains_alone():
    """sharing: packed is k independent MLPs: member 0's output moves with member 0's weights
    only, and their own initial weights (not a start scaling) set them apart."""
    torch.manual_seed(0)
    net = networks.build(model_cfg({**OPTIONS["tabm"], "sharing": "packed", "k": 3}), 3, 1, 3)
    assert not any(isinstance(m, blocks.EnsembleLinear) for m in net.modules())
    layers = [m for m in net.modules() if isinstance(m, blocks.MemberHeads)]
    assert len(layers) == 3 and all(m.weight.shape[0] == 3 for m in layers)  # 2 hidden + head
    tabm = next(m for m in net.modules() if isinstance(m, blocks.TabM))
    assert torch.equal(tabm.start.detach(), torch.ones(3, 3))
    assert not torch.allclose(layers[0].weight[0], layers[0].weight[1])
    net.train()
    x = torch.randn(7, 3)
    out = net(x)
    assert not torch.allclose(out[:, 0], out[:, 1])
    out[:, 0].sum().backward()
    for layer in layers:
        assert layer.weight.grad is not None
        assert layer.weight.grad[0].abs().sum() > 0 and layer.weight.grad[1:].abs().sum() == 0


def test_init_schemes_reach_the_new_layers_but_not_scalings_or_embeddings():
    net = networks.build(model_cfg({**OPTIONS["tabm"], "numeric_embedding": "periodic"}), 3, 1, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init.apply(net, schema.ZerosInit(scheme="zeros", bias="zeros"))
    after = net.state_dict()
    zeroed = {k for k in after if not torch.equal(before[k], after[k])}
    assert all(float(after[k].abs().sum()) == 0 for k in zeroed)
    assert {"network.backbone.0.weight", "network.head.weight", "network.head.bias"} <= zeroed
    assert not any(k.endswith((".r", ".s", "start")) or k.startswith("embedding") for k in zeroed)


def test_l1_l2_count_weights_not_biases_or_scalings():
    net = networks.build(model_cfg({**OPTIONS["tabm"], "numeric_embedding": "periodic"}), 3, 1, 3)
    names = {n for n, p in net.named_parameters() if any(p is w for w in networks.penalized_weights(net))}
    assert "network.backbone.0.weight" in names and "embedding.frequency" in names
    assert not any(n.endswith(("bias", ".r", ".s", "start")) for n in names)
    penalty = build_penalty(net, schema.RegularizationConfig(l2=0.5))
    assert penalty is not None
    expected = 0.5 * sum(float(net.get_parameter(n).detach().pow(2).sum()) for n in names)
    assert float(penalty().detach()) == pytest.approx(expected, rel=1e-5)


def test_new_models_train_one_at_a_time_not_packed(tmp_path):
    for name, options in OPTIONS.items():
        cfg = schema.Config(data={"train": "t.csv", "target": "y"}, model=options, optimizer="adam")
        stacks = name.startswith("mlp-")  # the stack embeds numbers (training/stack/embeddings.py)
        assert (pack_key(cfg) is not None) == stacks, name
    plain = schema.Config(data={"train": "t.csv", "target": "y"}, model={"type": "mlp"}, optimizer="adam")
    assert pack_key(plain) is not None


# ---------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("name", list(OPTIONS))
def test_run_is_deterministic_and_best_pt_scores_as_the_summary_says(cli, tmp_path, mixed, name):
    cfg = config(tmp_path, mixed, OPTIONS[name], data={"train": str(mixed), "target": "y", "val": str(mixed)})
    assert cli("run", cfg, "-q", "-o", tmp_path / "a").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "b").code == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    summary = read_json(tmp_path / "a" / "summary.json")
    scored = json.loads(cli("eval", tmp_path / "a" / "best.pt", mixed, "--json").stdout)
    # eval reports MSE in target units; the val loss is on the standardised target
    std = float(pd.read_csv(mixed)["y"].std(ddof=0))
    assert scored["mse"] / std**2 == pytest.approx(summary["best"]["val_loss"], rel=1e-4)
    assert cli("predict", tmp_path / "a" / "best.pt", mixed, "-o", tmp_path / "p.csv").code == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    mse = float(((predicted["y_pred"] - predicted["y"]) ** 2).mean())
    assert mse == pytest.approx(scored["mse"], rel=1e-4)


def test_piecewise_bins_come_from_training_rows_only(cli, tmp_path):
    """Validation rows far beyond the training range: bins from them would reach out there."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 2))
    val = rng.normal(size=(40, 2)) * 50 + 200
    header = ["a", "b", "y"]
    write_csv(tmp_path / "train.csv", header, [[*r, r.sum()] for r in train.round(5)])
    write_csv(tmp_path / "val.csv", header, [[*r, r.sum()] for r in val.round(5)])
    model = {"type": "mlp", "hidden": [8], "numeric_embedding": "piecewise_linear", "bins": 10}
    for how in ({"val": str(tmp_path / "val.csv")}, {"val_fraction": 0.25}):
        cfg = config(tmp_path, tmp_path / "train.csv", model, data={"train": str(tmp_path / "train.csv"),
                     "target": "y", **how})  # fmt: skip
        assert cli("run", cfg, "-q", "-o", tmp_path / "run", "--overwrite").code == 0
        ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
        w = ckpt["weights"]
        scale, shift = w["embedding.scale"].double(), w["embedding.shift"].double()
        top = ((1 - shift[:, -1]) / scale[:, -1]).numpy()  # the right edge of the last bin
        bottom = (-shift[:, 0] / scale[:, 0]).numpy()  # the left edge of the first bin
        pre = ckpt["preprocess"]["numeric"]
        z = (train - [c["mean"] for c in pre]) / [c["std"] for c in pre]
        if "val" in how:
            np.testing.assert_allclose(top, z.max(0), rtol=1e-5)
            np.testing.assert_allclose(bottom, z.min(0), rtol=1e-5, atol=1e-6)
        else:  # a quarter of the rows held out: the edges lie within the training rows' range
            assert (top <= z.max(0) + 1e-5).all() and (bottom >= z.min(0) - 1e-5).all()
            assert (top < z.max(0) - 1e-6).any() or (bottom > z.min(0) + 1e-6).any()


def test_resume_of_a_tabm_with_embedding_is_bit_identical(cli, tmp_path, mixed):
    cfg = config(tmp_path, mixed, OPTIONS["tabm-mini-piecewise"], train={"epochs": 4, "batch_size": 32})
    assert cli("run", cfg, "-q", "-o", tmp_path / "straight").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "split", "--set", "train.epochs=2").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "split", "--resume").code == 0
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["weights"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resnet_with_everything_around_it(cli, tmp_path):
    """Several targets, an init scheme, a scheduler, L1/L2, early stopping, explain, intervals."""
    cfg = config(
        tmp_path,
        DATA / "diabetes.csv",
        {"type": "resnet", "width": 16, "blocks": 1, "numeric_embedding": "periodic", "frequencies": 4},
        data={"train": str(DATA / "diabetes.csv"), "target": ["progression", "bmi"], "val_fraction": 0.25},
        init={"scheme": "kaiming_uniform"},
        scheduler={"name": "cosine"},
        regularization={"l1": 1e-5, "l2": 1e-4},
        train={"epochs": 3, "batch_size": 64, "early_stopping": {"patience": 2}},
    )
    assert cli("run", cfg, "-q", "-o", tmp_path / "run").code == 0
    ckpt = tmp_path / "run" / "best.pt"
    explained = cli("explain", ckpt, DATA / "diabetes.csv")
    assert explained.code == 0, explained
    out = tmp_path / "p.csv"
    assert cli("predict", ckpt, DATA / "diabetes.csv", "-o", out, "--interval", "0.9").code == 0
    assert {"progression_lo", "bmi_hi"} <= set(pd.read_csv(out).columns)


def test_export_says_resnet_cannot_be_exported_yet_and_what_can(cli, tmp_path, mixed):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    cfg = config(tmp_path, mixed, OPTIONS["resnet"])
    assert cli("run", cfg, "-q", "-o", tmp_path / "run").code == 0
    result = cli("export", tmp_path / "run" / "best.pt", "-o", tmp_path / "m.onnx")
    assert result.code == 2
    assert "model.type resnet cannot be exported to ONNX yet" in result.stderr
    assert "export writes linear models, MLPs and TabM" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_edited_bins_or_sizes_in_a_checkpoint_are_refused(cli, tmp_path, mixed):
    cfg = config(tmp_path, mixed, OPTIONS["mlp-piecewise"])
    assert cli("run", cfg, "-q", "-o", tmp_path / "run").code == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    edited = dict(ckpt, weights=dict(ckpt["weights"]))
    edited["weights"]["embedding.scale"] = -edited["weights"]["embedding.scale"]
    torch.save(edited, tmp_path / "bins.pt")
    result = cli("eval", tmp_path / "bins.pt", mixed)
    assert result.code == 2 and "embedding.scale" in result.stderr and "bins were edited" in result.stderr
    resized = dict(ckpt, model={**ckpt["model"], "n_numeric": 2})
    torch.save(resized, tmp_path / "sizes.pt")
    result = cli("eval", tmp_path / "sizes.pt", mixed)
    assert (
        result.code == 2 and "`model.n_numeric` is 2, but the stored preprocessing makes 3" in result.stderr
    )
    fewer = dict(ckpt, model={**ckpt["model"], "bins": 4})
    torch.save(fewer, tmp_path / "fewer.pt")
    result = cli("eval", tmp_path / "fewer.pt", mixed)
    assert result.code == 2 and "embedding.scale` has shape [3, 8]" in result.stderr


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["model.type=mlp", "model.numeric_embedding=fourier"], "model.numeric_embedding"),
        (
            ["model.type=mlp", "model.bins=12"],
            "`model.bins` applies only to `model.numeric_embedding: piecewise",
        ),
        (
            ["model.type=mlp", "model.numeric_embedding=periodic", "model.bins=12"],
            "`model.bins` applies only",
        ),
        (["model.type=mlp", "model.embedding_size=8"], "`model.embedding_size` applies only"),
        (["model.type=mlp", "model.numeric_embedding=piecewise_linear", "model.bins=1"], "model.bins"),
        (["model.type=resnet", "model.norm=group_norm"], "model.norm"),
        (["model.type=resnet", "model.hidden_multiplier=0"], "model.hidden_multiplier"),
        (["model.type=tabm", "model.sharing=batch"], "model.sharing"),
        (["model.type=tabm", "model.k=0"], "model.k"),
        (["model.type=linear", "model.numeric_embedding=periodic"], "model.numeric_embedding"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(cli, tmp_path, mixed, sets, expected):
    cfg = config(tmp_path, mixed, {"type": "mlp"})
    result = cli("run", cfg, "-q", *[a for s in sets for a in ("--set", s)])
    assert result.code == 2, result
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_norm_with_a_last_batch_of_one_row_is_a_config_error(cli, tmp_path, mixed):
    # 160 rows, 3/4 for training: 120 rows in batches of 7 leave one row at the end
    cfg = config(tmp_path, mixed, OPTIONS["resnet"], train={"epochs": 1, "batch_size": 7})
    result = cli("run", cfg, "-q", "-o", tmp_path / "run")
    assert result.code == 2, result
    assert "batch_norm cannot train on a batch of one row" in result.stderr
    assert "model.norm: layer_norm" in result.stderr
    layer = cli("run", cfg, "-q", "-o", tmp_path / "ln", "--set", "model.norm=layer_norm")
    assert layer.code == 0, layer


def test_the_saved_config_of_a_new_model_reruns_as_it_is(cli, tmp_path, mixed):
    cfg = config(tmp_path, mixed, OPTIONS["resnet"])
    assert cli("run", cfg, "-q", "-o", tmp_path / "a").code == 0
    again = cli("run", tmp_path / "a" / "config.yaml", "-q", "-o", tmp_path / "b")
    assert again.code == 0, again
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
