"""The Python API (mse_train.Regressor, load, train, cv): the CLI's twin, not a second trainer."""

from __future__ import annotations

import importlib
import json
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import mse_train
from mse_train.data.folds import kfold
from mse_train.errors import ConfigError, DataError, EnvironmentProblem

from conftest import REPO, write_config

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from mse_train import Regressor  # noqa: E402
from mse_train.api.estimator import EXPECTED_FAILED_CHECKS  # noqa: E402


def mixed_table(path: Path, n: int = 240, seed: int = 0) -> Path:
    """Numbers and a text column, y depending on both."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(5),
            "colour": rng.choice(["red", "green", "blue"], n),
            "b": (3 * rng.normal(size=n)).round(4),
        }
    )
    frame["y"] = (2 * frame.a - frame.b + frame.colour.map({"red": 0, "green": 1, "blue": 3})).round(4)
    frame["y"] += rng.normal(size=n).round(3) * 0.1
    frame.to_csv(path, index=False)
    return path


def config(tmp_path: Path, table: Path, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.02},
        "train": {"epochs": 12, "batch_size": 32, "early_stopping": {"patience": 3}},
        "output": {"dir": str(tmp_path / "run"), "plot": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return write_config(tmp_path / "cfg.yaml", data)


def split(table: Path) -> tuple[pd.DataFrame, pd.Series]:
    frame = pd.read_csv(table)
    return frame.drop(columns="y"), frame["y"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(path, weights_only=True)["weights"])


# ------------------------------------------------------------------ the same model as `run`
def test_fit_gives_run_s_weights_bit_for_bit_and_its_metrics(cli, tmp_path):
    table = mixed_table(tmp_path / "t.csv")
    cfg = config(tmp_path, table)
    result = cli("run", cfg, "--json")
    assert result.code == 0, result
    summary = json.loads(result.stdout)
    X, y = split(table)
    reg = Regressor(config=cfg).fit(X, y)
    ours = weights(Path(reg.model_._path()))
    theirs = weights(tmp_path / "run" / "best.pt")
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name  # bit-identical on the CPU
    for key in ("best", "final", "epochs_run", "status", "rows"):
        assert reg.summary_[key] == summary[key], key
    assert len(reg.history_) == summary["epochs_run"]
    # and predict is `mse-train predict`'s, to the digit it writes
    out = tmp_path / "p.csv"
    assert cli("predict", tmp_path / "run" / "best.pt", table, "-o", out).code == 0
    want = pd.read_csv(out)["y_pred"].to_numpy()
    assert np.array_equal(reg.predict(X), want)
    assert reg.feature_names_in_.tolist() == ["a", "colour", "b"] and reg.n_features_in_ == 3


def test_cross_val_score_equals_cv_on_the_same_folds(cli, tmp_path):
    """cv holds out `data.val_fraction` of a fold's rows as `run` does on those rows, so a
    fold of `mse-train cv` is `Regressor.fit` on that fold (fails while the two split apart)."""
    table = mixed_table(tmp_path / "t.csv", n=150)
    cfg = config(tmp_path, table)
    result = cli("cv", cfg, "-k", "3", "--json", "--no-pack")
    assert result.code == 0, result
    want = [fold["r2"] for fold in json.loads(result.stdout)["per_fold"]]
    X, y = split(table)
    got = cross_val_score(Regressor(config=cfg), X, y, cv=kfold(len(X), 3, 0))
    # the targets are read as float32 by cv, used as given by scikit-learn's r2_score
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ------------------------------------------------------------------ scikit-learn's contract
QUICK = {"optimizer": {"name": "adam", "lr": 0.05}, "train__epochs": 30}


@parametrize_with_checks(
    [Regressor(**QUICK), Regressor(**QUICK, data__missing="mean")],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_s_estimator_checks(estimator, check):
    """scikit-learn's own suite; with `data.missing: mean` it is also checked on NaN input."""
    check(estimator)


def test_parameters_are_config_keys_clone_safe_and_picklable(tmp_path):
    table = mixed_table(tmp_path / "t.csv", n=80)
    cfg = config(tmp_path, table)
    reg = Regressor(config=cfg, optimizer__lr=0.05, **{"train.epochs": 4})
    assert reg.get_params()["optimizer.lr"] == 0.05 and reg.get_params()["train.epochs"] == 4
    reg.set_params(**{"model.hidden": [4]}, seed=3)
    twin = clone(reg)
    assert twin.get_params() == reg.get_params() and twin is not reg
    X, y = split(table)
    reg.fit(X, y)
    assert reg.config_["model"]["hidden"] == [4] and reg.config_["seed"] == 3
    assert reg.config_["optimizer"]["lr"] == 0.05
    again = pickle.loads(pickle.dumps(reg))
    assert np.array_equal(again.predict(X), reg.predict(X))
    assert not hasattr(clone(reg), "model_")  # a clone is unfitted
    assert reg.score(X, y) > 0.5


def test_pipeline_and_grid_search(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    pipe = make_pipeline(
        FunctionTransformer(lambda v: v * 2),
        Regressor(optimizer={"name": "adam", "lr": 0.05}, train__epochs=30),
    )
    search = GridSearchCV(pipe, {"regressor__optimizer__lr": [0.001, 0.05]}, cv=2)
    search.fit(X, y)
    assert search.best_params_ == {"regressor__optimizer__lr": 0.05}
    assert search.predict(X).shape == (90,)
    assert search.best_estimator_[-1].config_["optimizer"]["lr"] == 0.05


def test_two_targets_and_arrays(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 2))
    Y = np.column_stack([X[:, 0], X[:, 1] * 2])
    reg = Regressor(optimizer={"name": "adam", "lr": 0.05}, train__epochs=40).fit(X, Y)
    assert reg.predict(X).shape == (60, 2)
    assert reg.model_.targets == ["y0", "y1"] and reg.model_.features == ["x0", "x1"]
    with pytest.raises(ValueError, match="X has 3 features"):
        reg.predict(np.ones((2, 3)))


def test_categories_by_dtype_and_by_config(tmp_path):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, 120)
    X = pd.DataFrame({"x": rng.normal(size=120), "code": codes, "kind": pd.Categorical(codes % 2)})
    y = X.x + codes * 2.0
    reg = Regressor(optimizer={"name": "adam", "lr": 0.05}, train__epochs=5)
    reg.fit(X, y)
    assert reg.config_["data"]["categorical"] == ["kind"]  # by dtype
    reg.set_params(data__categorical=["code"]).fit(X, y)
    assert reg.config_["data"]["categorical"] == ["code", "kind"]  # by config, and by dtype


# ------------------------------------------------------------------ errors as the CLI says them
def test_a_bad_setting_is_the_cli_s_config_error(tmp_path):
    X, y = np.ones((10, 2)), np.arange(10.0)
    with pytest.raises(ConfigError) as raised:
        Regressor(optimizer__lr=-1, model__typ="mlp").fit(X, y)
    text = str(raised.value)
    assert "Regressor.optimizer.lr" in text and "typ" in text
    assert raised.value.exit_code == 2


def test_bad_cells_name_the_frame_and_the_row(cli, tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, np.inf, 4.0], "y": [1.0, 2.0, 3.0, 4.0]})
    table = tmp_path / "bad.csv"
    frame.to_csv(table, index=False)
    with pytest.raises(DataError) as raised:
        Regressor().fit(frame[["a"]], frame["y"])
    text = str(raised.value)
    assert "the DataFrame (line 2 is its first row)" in text and "line(s) 4" in text
    assert "mse-train-fit" not in text  # the private file is never named
    result = cli("run", write_config(tmp_path / "c.yaml", {"data": {"train": str(table), "target": "y"}}))
    assert result.code == 2 and "infinite" in result.stderr and "infinite" in text


def test_without_scikit_learn_the_message_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a)
    )
    monkeypatch.delitem(sys.modules, "mse_train.api.estimator")
    with pytest.raises(EnvironmentProblem, match=r"pip install 'mse-train\[sklearn\]'"):
        importlib.import_module("mse_train.api.estimator")


# ------------------------------------------------------------------ load, train, cv
def test_load_predicts_with_intervals_and_drift_as_predict_does(cli, tmp_path):
    table = mixed_table(tmp_path / "t.csv")
    cfg = config(tmp_path, table)
    assert cli("run", cfg).code == 0
    ckpt = tmp_path / "run" / "best.pt"
    rows = pd.read_csv(table).head(20)
    rows.loc[0, "a"] = 1e6  # far outside the training range: drift
    rows.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "p.csv"
    result = cli("predict", ckpt, tmp_path / "new.csv", "--interval", "0.9", "-o", out, "--json")
    assert result.code == 0, result
    want = pd.read_csv(out)
    model = mse_train.load(ckpt)
    found = model.predict_with_drift(rows, interval=0.9)
    for column in ("y_pred", "y_lo", "y_hi"):
        assert np.array_equal(found.frame[column].to_numpy(), want[column].to_numpy()), column
    assert [f.as_json() for f in found.drift] == json.loads(result.stdout)["drift"]
    assert any(f.column == "a" for f in found.drift)
    saved = model.save(tmp_path / "copy.pt")
    assert saved.read_bytes() == ckpt.read_bytes()
    if importlib.util.find_spec("onnxruntime") is not None:  # export as `mse-train export` writes it
        assert cli("export", ckpt, "-o", tmp_path / "cli.onnx").code == 0
        exported = model.export(tmp_path / "api.onnx", check_rows=rows.iloc[1:])
        assert exported.check_rows == 19
        assert (tmp_path / "api.onnx").read_bytes() == (tmp_path / "cli.onnx").read_bytes()
    with pytest.raises(DataError, match="colour"):
        model.predict(rows.drop(columns="colour"))


def test_train_and_cv_return_results_and_print_nothing(tmp_path, capsys):
    table = mixed_table(tmp_path / "t.csv", n=100)
    cfg = config(tmp_path, table)
    epochs: list[int] = []
    result = mse_train.train(cfg, progress=lambda record: epochs.append(record.epoch))
    assert result.summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert epochs == list(range(1, result.summary["epochs_run"] + 1))
    assert result.model.predict(pd.read_csv(table)).shape == (100, 1)
    with pytest.raises(Exception, match="overwrite"):
        mse_train.train(cfg)  # the folder holds a run: the OutputError `run` gives
    scores: list[int] = []
    folds = mse_train.cv(cfg, folds=3, on_fold=lambda i, s: scores.append(i))
    assert scores == [1, 2, 3] and len(folds.folds) == 3
    assert folds.summary == json.loads((tmp_path / "run-cv" / "cv.json").read_text())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_sweep_returns_the_leaderboard_as_a_frame(cli, tmp_path, capsys):
    pytest.importorskip("optuna")
    table = mixed_table(tmp_path / "t.csv", n=80)
    sweep = {"method": "grid", "folds": 0, "refit": True, "params": {"optimizer.lr": [0.01, 0.1]}}
    cfg = config(tmp_path, table, sweep=sweep, train={"epochs": 3})
    rows: list[int] = []
    found = mse_train.sweep(cfg, on_trial=lambda done, total, row: rows.append(done), **{"train.epochs": 2})
    assert rows == [1, 2] and len(found.leaderboard) == 2
    board = pd.read_csv(tmp_path / "run-sweep" / "leaderboard.csv")
    assert found.leaderboard["trial"].tolist() == board["trial"].tolist()
    assert found.checkpoint == tmp_path / "run-sweep" / "best" / "best.pt"
    assert found.model.predict(pd.read_csv(table)).shape == (80, 1)
    assert json.loads((tmp_path / "run-sweep" / "best" / "summary.json").read_text())["epochs_run"] <= 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_the_readme_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"<!-- example:python -->\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "README lacks the From Python example"
    mixed_table(tmp_path / "houses.csv", n=120)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    with warnings.catch_warnings():
        exec(compile(example.group(1), "README.md", "exec"), scope)
    assert scope["scores"].shape == (3,)
    assert (tmp_path / "model.pt").exists()


def test_sample_weight_is_data_weight_and_integer_weights_repeat_rows(tmp_path):
    """fit(X, y, sample_weight=w) trains as `data.weight` does: integer weights give the model
    of each row repeated that many times (full batch, every row training), as scikit-learn's
    estimators promise; negative weights are refused as scikit-learn refuses them."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    y = pd.Series(np.sin(X["a"]) + X["b"] ** 2, name="y")
    w = rng.integers(1, 4, size=40)
    settings = {
        "model": {"type": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train__epochs": 40,
        "train__batch_size": None,
        "data__val_fraction": 0.0,
    }
    weighted = Regressor(**settings).fit(X, y, sample_weight=w)
    repeated = Regressor(**settings).fit(X.loc[X.index.repeat(w)], y.loc[y.index.repeat(w)])
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-4, atol=1e-5)
    unweighted = Regressor(**settings).fit(X, y)
    assert not np.allclose(weighted.predict(X), unweighted.predict(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"[Nn]egative"):
        Regressor(**settings).fit(X, y, sample_weight=-w)
