"""`mse-train export`: the ONNX graph predicts what `mse-train predict` does, through the real CLI."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pandas as pd
import pytest
from typer.testing import CliRunner

from mse_train import __version__
from mse_train.cli import app
from mse_train.models import networks
from mse_train.use import onnx_graph

from conftest import REPO, write_config, write_csv

TOLERANCE = 1e-5  # of each target's standard deviation, as export promises


def make_rows(n: int, seed: int, empty: bool = True, kinds: tuple[str, ...] = ("red", "green", "blue")):
    """a, b numbers; kind text; y and z targets. Every 7th a and every 11th kind empty."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(5, 2, n), rng.normal(0, 10, n)
    kind = rng.choice(list(kinds), n)
    y = 3 * a - 0.2 * b + np.where(kind == "red", 4.0, 0.0) + 0.1 * rng.normal(size=n)
    z = 0.1 * a * b + 100
    return [
        ["" if empty and i % 7 == 0 else f"{a[i]:.4f}", f"{b[i]:.4f}",
         "" if empty and i % 11 == 0 else kind[i], f"{y[i]:.4f}", f"{z[i]:.4f}"]
        for i in range(n)
    ]  # fmt: skip


HEADER = ["a", "b", "kind", "y", "z"]


def train(folder: Path, rows: list[list[str]], **data: Any) -> Path:
    model = data.pop("model", {"type": "mlp", "hidden": [16, 8], "activation": "gelu", "dropout": 0.1})
    table = write_csv(folder / "train.csv", HEADER, rows)
    cfg = write_config(
        folder / "c.yaml",
        {"data": {"train": str(table), "target": ["y", "z"], **data}, "model": model,
         "optimizer": {"name": "adam", "lr": 0.01}, "train": {"epochs": 8},
         "output": {"dir": str(folder / "run"), "plot": False}},
    )  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(cfg), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.pt"


@pytest.fixture(scope="module", params=["mlp", "linear"])
def trained(request, tmp_path_factory) -> Path:
    """Two targets, a text column, empty cells filled with the mean."""
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    model = {"type": "linear"} if request.param == "linear" else None
    extra = {"model": model} if model else {}
    return train(folder, make_rows(200, 0), missing="mean", **extra)


def session_of(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def feed_from_csv(session: Any, csv: Path) -> dict[str, np.ndarray]:
    """What a user does: each column a [rows, 1] array, float32 or strings with "" for empty."""
    text = [i.name for i in session.get_inputs() if i.type == "tensor(string)"]
    frame = pd.read_csv(csv, dtype=dict.fromkeys(text, str))
    return {
        i.name: (frame[i.name].fillna("").to_numpy(object) if i.name in text
                 else frame[i.name].to_numpy(np.float32)).reshape(-1, 1)
        for i in session.get_inputs()
    }  # fmt: skip


def predicted(cli, checkpoint: Path, csv: Path, out: Path) -> np.ndarray:
    result = cli("predict", checkpoint, csv, "-o", out)
    assert result.code == 0, result
    return pd.read_csv(out)[["y_pred", "z_pred"]].to_numpy(np.float64)


def target_std(checkpoint: Path) -> np.ndarray:
    import torch

    ckpt = torch.load(checkpoint, weights_only=True)
    return np.array([t["std"] for t in ckpt["preprocess"]["targets"]])


def assert_close_to_predict(got: np.ndarray, want: np.ndarray, std: np.ndarray) -> float:
    assert got.shape == want.shape
    assert (np.isnan(got) == np.isnan(want)).all()
    finite = ~np.isnan(want)
    relative = np.abs(got.astype(np.float64) - want)[finite] / np.broadcast_to(std, want.shape)[finite]
    assert relative.max() <= TOLERANCE, relative.max()
    return float(relative.max())


def test_the_graph_predicts_what_predict_does_on_a_pandas_batch(cli, trained, tmp_path):
    new = write_csv(tmp_path / "new.csv", HEADER, make_rows(150, 1))  # other rows, empty cells too
    out = tmp_path / "model.onnx"
    result = cli("export", trained, "-o", out, "--check", new)
    assert result.code == 0, result
    assert f"wrote {out}" in result.stdout and "kind (string)" in result.stdout
    session = session_of(out)
    assert [(i.name, i.type, i.shape[1]) for i in session.get_inputs()] == [
        ("a", "tensor(float)", 1), ("b", "tensor(float)", 1), ("kind", "tensor(string)", 1)
    ]  # fmt: skip
    (output,) = session.get_outputs()
    assert (output.name, output.type, output.shape[1]) == ("prediction", "tensor(float)", 2)
    got = session.run(["prediction"], feed_from_csv(session, new))[0]
    want = predicted(cli, trained, new, tmp_path / "p.csv")
    assert np.isfinite(want).all()  # missing: mean fills every empty cell
    assert_close_to_predict(got, want, target_std(trained))
    # A wrong fill or category order would not pass: the rows with empty cells differ from
    # the same rows with the cells given.
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_metadata_names_inputs_targets_and_version(cli, trained, tmp_path):
    out = tmp_path / "model.onnx"
    assert cli("export", trained, "-o", out).code == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["inputs"]) == {"a": "float32", "b": "float32", "kind": "string"}
    assert json.loads(props["targets"]) == ["y", "z"]
    assert props["mse_train_version"] == __version__
    assert props["missing"] == "mean"


def test_json_says_what_was_compared(cli, trained, tmp_path):
    result = cli("export", trained, "-o", tmp_path / "m.onnx", "--json")
    assert result.code == 0, result
    out = json.loads(result.stdout)
    assert out["output"] == str(tmp_path / "m.onnx") and out["targets"] == ["y", "z"]
    assert 0 <= out["max_difference"] <= TOLERANCE and out["check_rows"] == 0
    assert out["probe_rows"] > 10
    assert out["nan_rows"] == 1  # unknown_category: error, the unseen category's row


def test_default_output_is_beside_the_checkpoint(cli, trained):
    result = cli("export", trained)
    assert result.code == 0, result
    assert trained.with_suffix(".onnx").is_file()
    trained.with_suffix(".onnx").unlink()


def test_unseen_category_under_ignore_is_all_zeros_as_in_predict(cli, tmp_path):
    checkpoint = train(tmp_path, make_rows(200, 0), missing="median", unknown_category="ignore")
    rows = make_rows(40, 2, kinds=("red", "purple"))  # purple: never seen
    new = write_csv(tmp_path / "new.csv", HEADER, rows)
    out = tmp_path / "m.onnx"
    assert cli("export", checkpoint, "-o", out, "--check", new).code == 0
    session = session_of(out)
    got = session.run(["prediction"], feed_from_csv(session, new))[0]
    assert_close_to_predict(got, predicted(cli, checkpoint, new, tmp_path / "p.csv"), target_std(checkpoint))


EMBEDDED = {
    "piecewise_linear": {"type": "mlp", "hidden": [16], "numeric_embedding": "piecewise_linear", "bins": 8},
    "periodic": {"type": "mlp", "hidden": [16], "numeric_embedding": "periodic", "frequencies": 4},
    "periodic_lite": {
        "type": "mlp", "hidden": [8], "numeric_embedding": "periodic", "periodic_lite": True, "frequencies": 3
    },
    "linear": {"type": "linear"},
}  # fmt: skip


@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_models_export_and_extrapolate_as_predict_does(cli, tmp_path, name, encoding):
    checkpoint = train(
        tmp_path, make_rows(200, 0), missing="mean", unknown_category="ignore",
        categorical_encoding=encoding, model=EMBEDDED[name],
    )  # fmt: skip
    rows = make_rows(60, 3, kinds=("red", "purple"))  # purple: never seen
    for row in rows[::3]:  # far outside the training range: the bins' open ends
        row[0], row[1] = f"{float(row[0] or 5) * 40:.4f}", f"{float(row[1]) * -30:.4f}"
    new = write_csv(tmp_path / "new.csv", HEADER, rows)
    out = tmp_path / "m.onnx"
    result = cli("export", checkpoint, "-o", out, "--check", new)
    assert result.code == 0, result
    session = session_of(out)
    got = session.run(["prediction"], feed_from_csv(session, new))[0]
    assert_close_to_predict(got, predicted(cli, checkpoint, new, tmp_path / "p.csv"), target_std(checkpoint))


@pytest.mark.parametrize("missing", ["error", "drop"])
def test_rows_the_policies_refuse_are_nan(cli, tmp_path, missing):
    checkpoint = train(tmp_path, make_rows(200, 0, empty=False), missing=missing)
    out = tmp_path / "m.onnx"
    result = cli("export", checkpoint, "-o", out)
    assert result.code == 0, result
    session = session_of(out)
    feed = {
        "a": np.array([[5.0], [np.nan], [5.0], [5.0], [5.0]], np.float32),
        "b": np.array([[1.0]] * 5, np.float32),
        "kind": np.array([["red"], ["red"], [""], ["NA"], ["purple"]], object),
    }
    got = session.run(["prediction"], feed)[0]
    assert np.isfinite(got[0]).all()
    assert np.isnan(got[1:]).all()  # empty number, "", "NA" (empty), unseen category
    good = write_csv(tmp_path / "good.csv", ["a", "b", "kind"], [[5.0, 1.0, "red"]])
    want = predicted(cli, checkpoint, good, tmp_path / "p.csv")
    assert_close_to_predict(got[:1], want, target_std(checkpoint))
    if missing == "drop":  # predict leaves such a row empty; the graph's NaN says the same
        empty_row = write_csv(tmp_path / "e.csv", ["a", "b", "kind"], [[5.0, 1.0, ""]])
        assert np.isnan(predicted(cli, checkpoint, empty_row, tmp_path / "q.csv")).all()


def test_without_the_extra_it_says_what_to_install(cli, trained, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    result = cli("export", trained, "-o", tmp_path / "m.onnx")
    assert result.code == 2, result
    assert "pip install 'mse-train[onnx]'" in result.stderr and "onnxruntime" in result.stderr
    # Before any work: not even the checkpoint is read.
    assert cli("export", tmp_path / "absent.pt").code == 2
    assert "mse-train[onnx]" in cli("export", tmp_path / "absent.pt").stderr
    assert not (tmp_path / "m.onnx").exists()


def test_a_graph_that_disagrees_with_predict_is_not_written(cli, trained, tmp_path, monkeypatch):
    real = onnx_graph.build

    def off_by_a_little(*args: Any) -> onnx.ModelProto:
        model = real(*args)
        for tensor in model.graph.initializer:  # shift the targets' means by 1e-4 std
            if "target_mean" in tensor.name:
                mean = onnx.numpy_helper.to_array(tensor)
                std = target_std(trained)
                tensor.CopyFrom(onnx.numpy_helper.from_array(mean + 1e-4 * std, tensor.name))
        return model

    monkeypatch.setattr(onnx_graph, "build", off_by_a_little)
    out = tmp_path / "m.onnx"
    result = cli("export", trained, "-o", out)
    assert result.code == 1, result
    assert "not written" in result.stderr and "predict" in result.stderr
    assert "rows built from the checkpoint" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


def test_bad_inputs_are_exit_2_without_a_traceback(cli, trained, tmp_path):
    no_kind = write_csv(tmp_path / "x.csv", ["a", "b"], [[1, 2]])
    result = cli("export", trained, "-o", tmp_path / "m.onnx", "--check", no_kind)
    assert result.code == 2 and "`kind`" in result.stderr, result
    result = cli("export", trained, "-o", tmp_path / "missing" / "m.onnx")
    assert result.code == 2 and "does not exist" in result.stderr, result
    result = cli("export", trained, "-o", tmp_path)
    assert result.code == 2 and "folder" in result.stderr, result
    result = cli("export", trained, "-o", trained)
    assert result.code == 2, result
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    result = cli("export", foreign, "-o", tmp_path / "m.onnx")
    assert result.code == 2 and "not a PyTorch checkpoint" in result.stderr, result
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "missing").exists()
    assert "Traceback" not in result.stderr


def test_every_layer_the_networks_build_can_be_written():
    for activation in networks.ACTIVATIONS.values():
        assert activation in onnx_graph.LAYERS


def test_the_readme_example_runs(cli, trained, tmp_path, monkeypatch):
    """The README's Python example, as written, on a model and a CSV in the current folder."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"<!-- example:onnx -->\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "README lacks the onnx example"
    assert len(example.group(1).splitlines()) <= 12
    new = write_csv(tmp_path / "new_rows.csv", HEADER[:3], [r[:3] for r in make_rows(30, 3)])
    assert cli("export", trained, "-o", tmp_path / "model.onnx").code == 0
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(example.group(1), "README.md", "exec"), scope)
    want = predicted(cli, trained, new, tmp_path / "p.csv")
    assert_close_to_predict(scope["prediction"], want, target_std(trained))


FAR_MODELS = {**EMBEDDED, "mlp": {"type": "mlp", "hidden": [16, 8], "activation": "gelu"}}


def far_rows(n: int = 24) -> list[list[str]]:
    """Rows with both numbers at ±1e6 (and ±3e5): every intermediate value is huge."""
    rows: list[list[str]] = make_rows(n, 3)
    for i, row in enumerate(rows):
        scale = (1e6, -1e6, 3e5, -7e5)[i % 4]
        row[0], row[1] = f"{scale:.4f}", f"{-0.9 * scale:.4f}"
    return rows


@pytest.mark.parametrize("name", list(FAR_MODELS))
def test_rows_at_a_million_pass_the_check_as_float32_rounding_allows(cli, tmp_path, name):
    """An MLP with categorical embeddings on rows at ±1e6 failed: ONNX -1018104.25 against
    predict -1018104.53, two float32 steps apart, called "a bug in mse-train's export". The
    allowance now follows the float32 rounding of each row's intermediate values."""
    checkpoint = train(
        tmp_path, make_rows(200, 0), missing="mean", categorical_encoding="embedding", model=FAR_MODELS[name]
    )
    new = write_csv(tmp_path / "far.csv", HEADER, far_rows())
    result = cli("export", checkpoint, "-o", tmp_path / "m.onnx", "--check", new)
    assert result.code == 0, result


@pytest.mark.parametrize("shift", [1e-3, 1e-2])
def test_a_wrong_bias_fails_the_check_even_beside_rows_at_a_million(cli, tmp_path, monkeypatch, shift):
    """The per-row allowance stays tight where the values are small: a hidden layer's bias
    off by a little is still caught."""
    checkpoint = train(
        tmp_path, make_rows(200, 0), missing="mean", categorical_encoding="embedding", model=FAR_MODELS["mlp"]
    )
    real = onnx_graph.build

    def wrong_bias(*args: Any) -> onnx.ModelProto:
        model = real(*args)
        tensor = next(t for t in model.graph.initializer if "bias" in t.name)
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) + shift, tensor.name))
        return model

    monkeypatch.setattr(onnx_graph, "build", wrong_bias)
    new = write_csv(tmp_path / "far.csv", HEADER, far_rows())
    result = cli("export", checkpoint, "-o", tmp_path / "m.onnx", "--check", new)
    assert result.code == 1, result
    assert "not written" in result.stderr and not (tmp_path / "m.onnx").exists()


def test_the_rounding_allowance_follows_the_intermediate_values():
    """inference.rounding_scale: zero for a zero network, growing with the input's size."""
    import torch

    from mse_train.models import inference

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    x = torch.tensor([[0.1, -0.2, 0.3], [1e6, -1e6, 3e5]])
    scale = inference.rounding_scale(net, x)
    assert scale.shape == (2, 2) and (scale > 0).all()
    assert (scale[1] > 1e5 * scale[0]).all()
    # the scale bounds the real float32-vs-float64 difference (with room to spare)
    wide = net.double()(x.double()).detach()
    narrow = net.float()(x).detach().double()
    assert ((wide - narrow).abs() <= 4 * torch.finfo(torch.float32).eps * scale).all()


def test_the_rounding_allowance_is_the_same_in_chunks(monkeypatch):
    import torch

    from mse_train.models import inference

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(10, 2) * 1e3
    whole = inference.rounding_scale(net, x)
    monkeypatch.setattr(inference, "EVAL_CHUNK", 3)
    torch.testing.assert_close(inference.rounding_scale(net, x), whole)
