"""`mse-train export` of TabM: both sharing modes, their embeddings and categorical inputs, and
TabM inside a sweep's ensemble; the graph predicts what `mse-train predict` does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import torch
from torch import nn

from mse_train.config.schema import TabMModel
from mse_train.data import table
from mse_train.models import blocks, networks
from mse_train.use import evaluate, onnx_graph
from mse_train.use.onnx_nodes import Graph

from conftest import write_config, write_csv
from test_export import (
    HEADER,
    TOLERANCE,
    assert_close_to_predict,
    far_rows,
    feed_from_csv,
    make_rows,
    predicted,
    session_of,
    target_std,
    train,
)


def tabm(sharing: str, **more: Any) -> dict[str, Any]:
    """A small TabM: k 4 members that differ (random start scalings), two hidden layers."""
    return {"type": "tabm", "k": 4, "sharing": sharing, "width": 16, "blocks": 2, "dropout": 0.1, **more}


# sharing x categorical encoding, each with another numeric embedding and activation
CASES = {
    "tabm-onehot-piecewise": ("onehot", tabm("tabm", numeric_embedding="piecewise_linear", bins=8)),
    "mini-embedding-periodic": (
        "embedding", tabm("tabm_mini", numeric_embedding="periodic", frequencies=4, activation="gelu")
    ),
    "tabm-embedding-none": ("embedding", tabm("tabm", activation="elu")),
    "packed-onehot-piecewise": ("onehot", tabm("packed", numeric_embedding="piecewise_linear", bins=6)),
    "mini-onehot-lite": (
        "onehot",
        tabm("tabm_mini", numeric_embedding="periodic", periodic_lite=True, frequencies=3,
             activation="leaky_relu"),
    ),
}  # fmt: skip


def new_rows(folder: Path) -> Path:
    """Rows like the training ones, an unseen category, every third far outside the range."""
    rows = make_rows(60, 3, kinds=("red", "purple"))  # purple: never seen
    for row in rows[::3]:
        row[0], row[1] = f"{float(row[0] or 5) * 40:.4f}", f"{float(row[1]) * -30:.4f}"
    return write_csv(folder / "new.csv", HEADER, rows)


def train_tabm(folder: Path, encoding: str, model: dict[str, Any]) -> Path:
    return train(
        folder, make_rows(200, 0), missing="mean", unknown_category="ignore",
        categorical_encoding=encoding, model=model,
    )  # fmt: skip


def member_predictions(ckpt: Path, csv: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's output (rows, k, targets) and TabM's own (their mean), in scaled units."""
    _, pre, model, delimiter = evaluate.load(ckpt)
    assert isinstance(model, blocks.Embedded) and isinstance(model.network, blocks.TabM)
    chunks = table.read_chunks(csv, pre.features, pre.categorical_names, delimiter, 1000, pre.non_numeric)
    view, _ = next(iter(chunks))
    x = torch.from_numpy(pre.features_array(view))
    model.eval()
    with torch.no_grad():
        seen: list[torch.Tensor] = []
        handle = model.network.head.register_forward_hook(lambda _m, _i, out: seen.append(out))
        mean = model(x)
        handle.remove()
    return seen[0], mean


@pytest.mark.parametrize("case", list(CASES))
def test_tabm_exports_and_predicts_what_predict_does(cli, tmp_path, case):
    encoding, model = CASES[case]
    ckpt = train_tabm(tmp_path, encoding, model)
    new = new_rows(tmp_path)
    out = tmp_path / "m.onnx"
    result = cli("export", ckpt, "-o", out, "--check", new)
    assert result.code == 0, result
    session = session_of(out)
    got = session.run(["prediction"], feed_from_csv(session, new))[0]
    want = predicted(cli, ckpt, new, tmp_path / "p.csv")
    assert_close_to_predict(got, want, target_std(ckpt))
    # The members differ: a graph that predicted one member's output, not their mean,
    # would be off by far more than the tolerance.
    members, mean = member_predictions(ckpt, new)
    assert members.shape[1] == 4
    torch.testing.assert_close(members.mean(1), mean)
    assert (members[:, 0] - mean).abs().max() > 1000 * TOLERANCE


def test_one_member_instead_of_the_mean_is_not_written(cli, tmp_path, monkeypatch):
    """The check compares with predict, which averages the members: a graph of member 0 fails it."""
    ckpt = train_tabm(tmp_path, *CASES["tabm-onehot-piecewise"])
    real = onnx_graph.LAYERS[blocks.TabM]

    def first_member(g: Graph, model: nn.Module, x: str) -> str:
        mean = real(g, model, x)
        node = g.nodes[-1]
        assert node.op_type == "ReduceMean" and node.output[0] == mean
        g.nodes[-1] = g.helper.make_node(
            "Gather", [node.input[0], g.const("first", np.array(0, np.int64))], [mean], axis=1
        )
        return mean

    monkeypatch.setitem(onnx_graph.LAYERS, blocks.TabM, first_member)
    out = tmp_path / "m.onnx"
    result = cli("export", ckpt, "-o", out)
    assert result.code == 1, result
    assert "not written" in result.stderr and not out.exists()


def test_tabm_rows_at_a_million_pass_the_check_as_float32_rounding_allows(cli, tmp_path):
    ckpt = train_tabm(tmp_path, *CASES["tabm-onehot-piecewise"])
    far = write_csv(tmp_path / "far.csv", HEADER, far_rows())
    result = cli("export", ckpt, "-o", tmp_path / "m.onnx", "--check", far)
    assert result.code == 0, result


def test_an_ensemble_with_tabm_members_exports_as_one_graph(cli, tmp_path):
    """A sweep's ensemble checkpoint (networks.WeightedMean) whose members are a TabM, a
    tabm_mini and an MLP, trained on the same rows, weighted unequally."""
    models = [CASES["tabm-onehot-piecewise"][1], tabm("tabm_mini"), {"type": "mlp", "hidden": [8]}]
    loaded = []
    for i, model in enumerate(models):
        (tmp_path / f"m{i}").mkdir()
        loaded.append(torch.load(train_tabm(tmp_path / f"m{i}", "onehot", model), weights_only=True))
    weights = [0.5, 0.3, 0.2]
    members = [networks.from_spec(c["model"]) for c in loaded]
    for member, c in zip(members, loaded, strict=True):
        member.load_state_dict(c["weights"])
    ensemble = networks.WeightedMean(members, weights)
    ckpt = {
        **loaded[0],
        "model": networks.ensemble_spec([c["model"] for c in loaded], weights),
        "weights": ensemble.state_dict(),
    }
    path = tmp_path / "ensemble.pt"
    torch.save(ckpt, path)
    new = new_rows(tmp_path)
    out = tmp_path / "m.onnx"
    result = cli("export", path, "-o", out, "--check", new)
    assert result.code == 0, result
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("ReduceMean") == 2  # two TabMs
    session = session_of(out)
    got = session.run(["prediction"], feed_from_csv(session, new))[0]
    want = predicted(cli, path, new, tmp_path / "p.csv")
    assert_close_to_predict(got, want, target_std(path))
    alone = predicted(cli, tmp_path / "m0" / "run" / "best.pt", new, tmp_path / "q.csv")
    assert np.abs(alone - want).max() > 1e-3  # the other members count


def test_a_sweep_s_ensemble_of_tabm_trials_exports(cli, tmp_path):
    """The real path: `sweep` with an ensemble over both sharing modes, then export --check."""
    table = write_csv(tmp_path / "t.csv", HEADER, make_rows(160, 4))
    cfg = write_config(
        tmp_path / "sweep.yaml",
        {"data": {"train": str(table), "target": ["y", "z"], "missing": "mean"},
         "model": tabm("tabm", numeric_embedding="piecewise_linear", bins=8),
         "optimizer": {"name": "adam", "lr": 0.02}, "train": {"epochs": 4, "batch_size": 32},
         "output": {"dir": str(tmp_path / "run"), "plot": False},
         "sweep": {"method": "grid", "folds": 2, "ensemble": 4,
                   "params": {"model.sharing": ["tabm", "tabm_mini"], "model.width": [8, 16]}}},
    )  # fmt: skip
    swept = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert swept.code == 0, swept
    members = json.loads(swept.stdout)["ensemble"]["members"]
    ckpt = tmp_path / "sw" / "ensemble" / "best.pt"
    out = tmp_path / "m.onnx"
    result = cli("export", ckpt, "-o", out, "--check", table)
    assert result.code == 0, result
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("ReduceMean") == len(members)
    session = session_of(out)
    got = session.run(["prediction"], feed_from_csv(session, table))[0]
    assert_close_to_predict(got, predicted(cli, ckpt, table, tmp_path / "p.csv"), target_std(ckpt))


@pytest.mark.parametrize("activation", list(networks.ACTIVATIONS))
@pytest.mark.parametrize("sharing", ["tabm", "tabm_mini", "packed"])
def test_the_tabm_nodes_compute_what_the_module_does(sharing, activation):
    """LAYERS[TabM] alone, in onnxruntime, against blocks.TabM in eval mode: every activation,
    both sharing modes, dropout as identity, k members with their own scalings and biases."""
    torch.manual_seed(0)
    cfg = TabMModel(type="tabm", k=5, sharing=sharing, width=12, blocks=3, activation=activation, dropout=0.2)
    model = networks.build(cfg, 4, 2, 4)
    assert isinstance(model, blocks.Embedded) and isinstance(model.network, blocks.TabM)
    network = model.network
    with torch.no_grad():  # trained-looking members: scalings and biases away from their start
        for name, p in network.named_parameters():
            if name.endswith((".r", ".s", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    network.eval()
    g = Graph()
    out = onnx_graph.LAYERS[blocks.TabM](g, network, "x")
    h = g.helper
    graph = h.make_graph(
        [*g.nodes, h.make_node("Identity", [out], ["y"])], "tabm",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2])], g.constants,
    )  # fmt: skip
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", onnx_graph.OPSET)])
    proto.ir_version = onnx_graph.IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    x = torch.randn(64, 4) * 3
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["y"], {"x": x.numpy()})[0]
    with torch.no_grad():
        want = network(x)
        first = network.head(network.backbone(x[:, None, :] * network.start))[:, 0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(got - first.numpy()).max() > 1e-2  # the mean, not one member
