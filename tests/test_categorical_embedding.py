"""`data.categorical_encoding: embedding`: tables, codes, checkpoints and the CLI around them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mse_train.config import schema
from mse_train.models import blocks, categorical, embeddings, init, networks
from mse_train.outputs import checkpoint
from mse_train.training.module import build_penalty
from mse_train.training.stack import pack_key

from conftest import DATA, read_json, write_config, write_csv

PENGUINS = DATA / "penguins.csv"
MODELS: dict[str, dict[str, Any]] = {
    "linear": {"type": "linear"},
    "mlp": {"type": "mlp", "hidden": [8]},
    "mlp-periodic": {"type": "mlp", "hidden": [8], "numeric_embedding": "periodic", "frequencies": 4,
                     "embedding_size": 4},
    "resnet": {"type": "resnet", "width": 8, "blocks": 1},
    "tabm": {"type": "tabm", "k": 3, "width": 8, "blocks": 2},
}  # fmt: skip


def model_cfg(options: dict[str, Any]) -> Any:
    return schema.VARIANTS["model"][options["type"]](**options)


def tables(net: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of each categorical column's embedding table."""
    assert isinstance(net, blocks.Embedded) and isinstance(net.categorical, categorical.CategoricalEmbeddings)
    return [t.weight for t in net.categorical.tables if isinstance(t, torch.nn.Embedding)]


def penguins_config(tmp_path: Path, model: dict[str, Any] | None = None, **data: Any) -> Path:
    cfg: dict[str, Any] = {
        "seed": 3,
        "data": {"train": str(PENGUINS), "target": "body_mass_g", "val": str(PENGUINS), "missing": "mean",
                 "categorical_encoding": "embedding", **data},
        "model": model or {"type": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "batch_size": 64},
        "output": {"plot": False},
    }  # fmt: skip
    return write_config(tmp_path / "cfg.yaml", cfg)


# ------------------------------------------------------------------------- units
def test_default_width_is_fastais_rule_capped_at_16():
    # round(1.6 * (n + 1) ** 0.56): 2 rows -> 2, 6 -> 4, 21 -> 9; 101 -> 21, capped
    assert categorical.widths([1, 5, 20, 100, 5000], None) == [2, 4, 9, 16, 16]
    assert categorical.widths([1, 5000], 7) == [7, 7]


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_reads_category_codes_and_is_deterministic(name):
    """3 numeric inputs, then the codes of a 3-category and a 40-category column."""

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        net = networks.build(model_cfg(MODELS[name]), 5, 2, 3, categories=[3, 40], widths=[2, 5])
        embeddings.fit(net, np.random.default_rng(0).normal(size=(30, 3)))
        return net

    net = build()
    x = torch.cat([torch.randn(9, 3), torch.randint(0, 4, (9, 1)), torch.randint(0, 41, (9, 1))], 1)
    net.eval()
    assert net(x).shape == (9, 2)
    assert [t.shape for t in tables(net)] == [(4, 2), (41, 5)]  # the unseen row, then each category
    again = build().state_dict()
    assert all(torch.equal(v, again[k]) for k, v in net.state_dict().items())
    # the spec round-trips: the same shapes come back
    spec = networks.spec(model_cfg(MODELS[name]), 5, 2, 3, [3, 40], [2, 5])
    rebuilt = networks.from_spec(json.loads(json.dumps(spec)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in again.items()}


def test_the_unseen_row_is_zeros_and_never_trains():
    torch.manual_seed(0)
    net = networks.build(model_cfg(MODELS["mlp"]), 3, 1, 1, categories=[4, 2], widths=[3, 2])
    init.apply(net, schema.ZerosInit(scheme="zeros"))  # init schemes leave the tables alone
    weights = tables(net)
    assert all(bool(t[1:].abs().sum() > 0) for t in weights)
    assert all(not bool(t[0].any()) for t in weights)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    penalty = build_penalty(net, schema.RegularizationConfig(l1=0.01, l2=0.01))
    assert penalty is not None
    assert any(p is weights[0] for p in networks.penalized_weights(net))  # tables count as weights
    before = [t.detach().clone() for t in weights]
    x = torch.tensor([[0.5, 0.0, 1.0], [-1.0, 2.0, 0.0], [1.0, 4.0, 2.0]])
    for _ in range(3):
        opt.zero_grad()
        (net(x).pow(2).mean() + penalty()).backward()
        opt.step()
    for t, b in zip(weights, before, strict=True):
        assert not bool(t[0].any())
        assert not torch.equal(t[1:], b[1:])


def test_embedding_configs_are_not_packed():
    cfg = schema.Config(data={"train": "t.csv", "target": "y"}, model={"type": "mlp"}, optimizer="adam")
    assert pack_key(cfg) is not None
    cfg.data.categorical_encoding = "embedding"
    assert pack_key(cfg) is None


# ---------------------------------------------------------------- through the CLI
def test_penguins_run_eval_predict_and_explain(cli, tmp_path):
    cfg = penguins_config(tmp_path)
    assert cli("run", cfg, "-q", "-o", tmp_path / "a").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "b").code == 0
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    assert all(torch.equal(v, b["weights"][k]) for k, v in a["weights"].items())
    # species, island: 3 each; sex: female, male; plus "(missing)" in each under `missing: mean`
    assert a["model"]["categories"] == [4, 4, 3]
    assert a["preprocess"]["categorical_encoding"] == "embedding"
    summary = read_json(tmp_path / "a" / "summary.json")
    assert summary["inputs"][-3:] == ["species", "island", "sex"]
    scored = json.loads(cli("eval", tmp_path / "a" / "best.pt", PENGUINS, "--json").stdout)
    std = a["preprocess"]["targets"][0]["std"]
    assert scored["mse"] / std**2 == pytest.approx(summary["best"]["val_loss"], rel=1e-4)
    assert cli("predict", tmp_path / "a" / "best.pt", PENGUINS, "-o", tmp_path / "p.csv").code == 0
    p = pd.read_csv(tmp_path / "p.csv").dropna(subset=["body_mass_g"])
    assert float(((p["body_mass_g_pred"] - p["body_mass_g"]) ** 2).mean()) == pytest.approx(
        scored["mse"], rel=1e-4
    )
    explained = cli("explain", tmp_path / "a" / "best.pt", PENGUINS, "--json")
    assert explained.code == 0, explained
    importance = json.loads(explained.stdout)["importance"]
    assert {"species", "island", "sex"} <= set(importance)
    # shuffling a column's code column changes predictions (3 epochs: not necessarily for the better)
    assert all(importance[name]["mean"] != 0 for name in ("species", "island", "sex"))


@pytest.fixture
def unseen(tmp_path: Path) -> Path:
    """Penguins with row 5 (line 6) on an island training never saw."""
    frame = pd.read_csv(PENGUINS)
    frame.loc[4, "island"] = "Atlantis"
    path = tmp_path / "unseen.csv"
    frame.to_csv(path, index=False)
    return path


def test_unseen_category_ignore_uses_the_zero_row_and_error_names_it(cli, tmp_path, unseen):
    cfg = penguins_config(tmp_path, unknown_category="ignore")
    assert cli("run", cfg, "-q", "-o", tmp_path / "run").code == 0
    ckpt = tmp_path / "run" / "best.pt"
    assert cli("predict", ckpt, unseen, "-o", tmp_path / "p.csv").code == 0
    got = pd.read_csv(tmp_path / "p.csv")["body_mass_g_pred"].to_numpy()
    # by hand: row 5 with the island code 0, whose table row is zeros
    data = checkpoint.load(ckpt)
    pre, net = checkpoint.preprocessor(ckpt, data), checkpoint.model(ckpt, data)
    assert not bool(tables(net)[1][0].any())
    frame = pd.read_csv(PENGUINS)
    row = frame.iloc[[4]]
    x = [(row[c.name].fillna(c.fill) - c.mean) / c.std for c in pre.numeric]
    codes = [pre.categorical[0].categories.index(row["species"].iloc[0]) + 1, 0,
             pre.categorical[2].categories.index(row["sex"].iloc[0]) + 1]  # fmt: skip
    net.eval()
    with torch.no_grad():
        out = net(torch.tensor([[*(float(v.iloc[0]) for v in x), *codes]], dtype=torch.float32))
    expected = float(out[0, 0]) * pre.targets[0].std + pre.targets[0].mean
    assert got[4] == pytest.approx(expected, rel=1e-5)

    strict = penguins_config(tmp_path, unknown_category="error")
    assert cli("run", strict, "-q", "-o", tmp_path / "strict").code == 0
    result = cli("predict", tmp_path / "strict" / "best.pt", unseen, "-o", tmp_path / "q.csv")
    assert result.code == 2, result
    assert (
        "column `island`" in result.stderr and "'Atlantis'" in result.stderr and "line(s) 6" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_column_above_max_categories_works_with_embedding(cli, tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    shop = np.arange(n) % 150  # every shop, 4 rows each
    effect = rng.normal(size=150)
    x = rng.normal(size=n)
    y = x + effect[shop] + 0.1 * rng.normal(size=n)
    table = write_csv(tmp_path / "shops.csv", ["x", "shop", "y"],
                      [[round(x[i], 5), f"s{shop[i]}", round(y[i], 5)] for i in range(n)])  # fmt: skip
    cfg: dict[str, Any] = {
        "seed": 1,
        "data": {"train": str(table), "target": "y", "val": str(table), "categorical_encoding": "onehot"},
        "model": {"type": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.03},
        "train": {"epochs": 30, "batch_size": 64},
        "output": {"plot": False},
    }
    path = write_config(tmp_path / "cfg.yaml", cfg)
    refused = cli("run", path, "-q", "-o", tmp_path / "onehot")
    assert refused.code == 2 and "data.max_categories" in refused.stderr
    assert "data.categorical_encoding: embedding" in refused.stderr
    result = cli("run", path, "-q", "-o", tmp_path / "emb", "--set", "data.categorical_encoding=embedding")
    assert result.code == 0, result
    ckpt = torch.load(tmp_path / "emb" / "best.pt", weights_only=True)
    assert ckpt["model"]["categories"] == [150] and ckpt["model"]["category_widths"] == [16]
    # the shop effects were learned: far better than the x-only fit (val MSE ~ var(effect) ~ 1)
    assert read_json(tmp_path / "emb" / "summary.json")["best"]["val_loss"] < 0.3


def test_resume_is_bit_identical(cli, tmp_path):
    cfg = penguins_config(tmp_path, {"type": "tabm", "k": 2, "width": 8, "blocks": 1})
    assert cli("run", cfg, "-q", "-o", tmp_path / "straight", "--set", "train.epochs=4").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "split", "--set", "train.epochs=2").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "split", "--resume", "--set", "train.epochs=4").code == 0
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["weights"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_edited_checkpoints_are_refused(cli, tmp_path):
    assert cli("run", penguins_config(tmp_path), "-q", "-o", tmp_path / "run").code == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    key = "categorical.tables.1.weight"

    def refused(name: str, edited: dict[str, Any]) -> str:
        torch.save(edited, tmp_path / name)
        result = cli("eval", tmp_path / name, PENGUINS)
        assert result.code == 2, result
        assert "Traceback" not in result.stderr
        return str(result.stderr)

    weights = dict(ckpt["weights"])
    weights[key] = weights[key].clone()
    weights[key][0] = 1.0
    assert "row 0 (the unseen-category row) must be zeros" in refused("row.pt", dict(ckpt, weights=weights))
    model = {**ckpt["model"], "categories": [3, 4, 3]}
    assert "`model.categories` is [3, 4, 3]" in refused("counts.pt", dict(ckpt, model=model))
    model = {**ckpt["model"], "category_widths": [3, 3]}
    assert "one entry per column" in refused("widths.pt", dict(ckpt, model=model))
    model = {**ckpt["model"], "category_widths": [3, 3, 5]}
    assert f"`weights.{key.replace('1', '2')}` has shape" in refused("shape.pt", dict(ckpt, model=model))
    pre = {**ckpt["preprocess"], "categorical_encoding": "onehot"}
    assert "onehot encoding" in refused("encoding.pt", dict(ckpt, preprocess=pre))
    pre = {**ckpt["preprocess"], "categorical_encoding": "hash"}
    assert "`preprocess.categorical_encoding` must be one of" in refused("bad.pt", dict(ckpt, preprocess=pre))


def test_export_writes_the_tables_and_refuses_what_it_cannot_write(cli, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert cli("run", penguins_config(tmp_path), "-q", "-o", tmp_path / "run").code == 0
    written = cli("export", tmp_path / "run" / "best.pt", "-o", tmp_path / "m.onnx", "--check", PENGUINS)
    assert written.code == 0, written  # --check compares with predict on every row
    cfg = penguins_config(tmp_path, {"type": "resnet", "width": 8, "blocks": 1, "norm": "layer_norm"})
    assert cli("run", cfg, "-q", "-o", tmp_path / "resnet").code == 0
    result = cli("export", tmp_path / "resnet" / "best.pt", "-o", tmp_path / "r.onnx")
    assert result.code == 2
    assert "with data.categorical_encoding embedding cannot be exported to ONNX yet" in result.stderr
    assert not (tmp_path / "r.onnx").exists()


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["data.categorical_encoding=hash"], "data.categorical_encoding"),
        (["data.categorical_encoding=onehot", "data.category_embedding_size=4"],
         "`data.category_embedding_size` applies only to `data.categorical_encoding: embedding`"),
        (["data.category_embedding_size=0"], "data.category_embedding_size"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(cli, tmp_path, sets, expected):
    result = cli("run", penguins_config(tmp_path), "-q", *[a for s in sets for a in ("--set", s)])
    assert result.code == 2, result
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
