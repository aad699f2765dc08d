"""Sample weights (`data.weight`): an integer weight counts a row that many times, in the
loss, the validation loss, the scores of cv and sweep and eval's metrics; bad weights are
refused with the file, the column, the rows and the fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mse_train import config
from mse_train.data import prepare
from mse_train.outputs import checkpoint
from mse_train.selection import cv
from mse_train.selection.fit import train_and_score_packed
from mse_train.training.stack import pack_key

from conftest import linear_rows, read_metrics, write_config, write_csv


def _tables(tmp_path: Path, n: int = 60, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """The same rows twice: once with integer weights 0..3 in column `w`, once with each row
    repeated that many times (a weight of 0: left out)."""
    header, values = linear_rows(n, n_features=3, seed=seed)
    values = values.round(5)
    w = np.random.default_rng(seed + 1).integers(0, 4, size=n)
    w[0] = 3  # not all zero, whatever the draw
    weighted = write_csv(tmp_path / "weighted.csv", [*header, "w"], np.column_stack([values, w]).tolist())
    repeated = write_csv(tmp_path / "repeated.csv", header, np.repeat(values, w, axis=0).tolist())
    return weighted, repeated, w


def _config(tmp_path: Path, name: str, table: Path, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "seed": 1,
        "data": {"train": str(table), "target": "y"},
        "optimizer": {"name": "adam", "lr": 0.05},
        "train": {"epochs": 15, "batch_size": None},
        "output": {"dir": str(tmp_path / name), "plot": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return write_config(tmp_path / f"{name}.yaml", cfg)


def _weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return dict(checkpoint.load(folder / "best.pt")[checkpoint.K_WEIGHTS])


MODELS = {
    "linear": {"type": "linear"},
    "mlp-relu": {"type": "mlp", "hidden": [8], "activation": "relu"},  # the stack's backward by hand
    "mlp-gelu": {"type": "mlp", "hidden": [8], "activation": "gelu"},  # the stack's autograd
    "tabm": {"type": "tabm", "k": 4, "blocks": 1, "width": 8, "dropout": 0.0},  # a module: k members
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("model", "pack"), [(m, True) for m in MODELS] + [("mlp-relu", False)])
def test_integer_weights_train_the_model_of_repeated_rows(cli, tmp_path, model, pack, reduction):
    weighted, repeated, _ = _tables(tmp_path)
    # SGD for a summed loss: Adam's first steps are about lr whatever the gradient's scale.
    optimizer = {"name": "adam", "lr": 0.05} if reduction == "mean" else {"name": "sgd", "lr": 2e-4}
    extra = [] if pack else ["--no-pack"]
    runs = {}
    for name, train, data in (("w", weighted, {"weight": "w"}), ("r", repeated, {})):
        cfg = _config(
            tmp_path, name, train, data=data, model=MODELS[model], loss={"reduction": reduction},
            optimizer=optimizer,
        )  # fmt: skip
        result = cli("run", cfg, *extra)
        assert result.code == 0, result
        runs[name] = tmp_path / name
    a, b = _weights_of(runs["w"]), _weights_of(runs["r"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    losses = [[float(r["train_end_loss"]) for r in read_metrics(runs[n] / "metrics.csv")] for n in "wr"]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    summary = json.loads((runs["w"] / "summary.json").read_text())
    assert "w" not in summary["inputs"]  # a weight is not a feature


@pytest.mark.parametrize("missing", ["mean", "median"])
def test_the_preprocessing_is_fitted_on_weighted_rows_as_on_repeated_rows(cli, tmp_path, missing):
    """Means, standard deviations and fill values (mean or median) of the weighted rows are
    those of the rows repeated by their weights."""
    header, values = linear_rows(41, n_features=2, seed=3)
    w = np.random.default_rng(2).integers(0, 5, size=len(values))
    w[:2] = [2, 1]
    cells = values.round(4).astype(object)
    cells[::7, 0] = ""  # empty cells: filled with the training rows' mean or median
    weighted = write_csv(tmp_path / "w.csv", [*header, "w"], np.column_stack([cells, w]).tolist())
    repeated = write_csv(tmp_path / "r.csv", header, np.repeat(cells, w, axis=0).tolist())
    stats = []
    for name, table, data in (("w", weighted, {"weight": "w"}), ("r", repeated, {})):
        cfg = _config(tmp_path, name, table, data={**data, "missing": missing}, train={"epochs": 1})
        assert cli("run", cfg).code == 0
        stats.append(checkpoint.load(tmp_path / name / "best.pt")[checkpoint.K_PREPROCESS])
    assert stats[0].keys() == stats[1].keys()
    for a, b in zip(
        stats[0]["numeric"] + stats[0]["targets"], stats[1]["numeric"] + stats[1]["targets"], strict=True
    ):
        for key in a:
            assert a[key] == (pytest.approx(b[key], rel=1e-9) if isinstance(b[key], float) else b[key]), key


def test_weights_change_the_model(cli, tmp_path):
    """The counterpart of the test above: the same rows once each train another model."""
    weighted, _, _ = _tables(tmp_path)
    for name, data in (("w", {"weight": "w"}), ("u", {"features": ["x0", "x1", "x2"]})):
        assert cli("run", _config(tmp_path, name, weighted, data=data)).code == 0
    a, b = _weights_of(tmp_path / "w"), _weights_of(tmp_path / "u")
    assert a.keys() == b.keys()
    assert not all(torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4) for key in a)


def test_validation_rows_count_by_their_weights(cli, tmp_path):
    """Rows of weight 0 in the validation file change neither the val loss nor the best epoch;
    rows repeated count as their weight."""
    header, values = linear_rows(120, n_features=3, seed=4)
    values = values.round(5)
    train = write_csv(
        tmp_path / "train.csv", [*header, "w"], np.column_stack([values[:80], np.ones(80)]).tolist()
    )
    val = values[80:]
    w = np.arange(40) % 3 + 1
    outliers = val[:5].copy()
    outliers[:, -1] += 1000.0
    weighted_val = np.vstack([np.column_stack([val, w]), np.column_stack([outliers, np.zeros(5)])])
    write_csv(tmp_path / "val_w.csv", [*header, "w"], weighted_val.tolist())
    write_csv(
        tmp_path / "val_r.csv",
        [*header, "w"],
        np.column_stack([np.repeat(val, w, axis=0), np.ones(w.sum())]).tolist(),
    )
    curves = []
    for name in ("val_w", "val_r"):
        cfg = _config(tmp_path, name, train, data={"weight": "w", "val": str(tmp_path / f"{name}.csv")})
        assert cli("run", cfg).code == 0
        curves.append([float(r["val_loss"]) for r in read_metrics(tmp_path / name / "metrics.csv")])
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)
    assert max(curves[0]) < 1000  # the outliers, weighing 0, count nothing


def _packed_jobs(cfg: config.Config, k: int) -> tuple[list[Any], list[Any]]:
    """The folds of a weighted cv, and the same folds with each row repeated by its weight
    (the same preprocessing, the same held-out rows)."""
    loaded = prepare.load_training(cfg.data, cfg.targets)
    weighted, repeated = [], []
    for prepared, held in cv.fold_splits(loaded, cfg, k):
        weighted.append((cfg, prepared, held))
        copy = prepare.Prepared(
            _repeat(prepared.train), _repeat(prepared.val) if prepared.val is not None else None,
            prepared.pre, prepared.hashers,
        )  # fmt: skip
        repeated.append((cfg, copy, held))
    return weighted, repeated


def _repeat(split: prepare.Split) -> prepare.Split:
    assert split.w is not None
    times = split.w.astype(int)
    return prepare.Split(np.repeat(split.x, times, axis=0), np.repeat(split.y, times, axis=0))


@pytest.mark.parametrize("model", ["linear", "mlp-relu"])
def test_a_packed_cv_weighs_each_fold_as_repeated_rows(tmp_path, model):
    weighted, _, _ = _tables(tmp_path, n=90)
    path = _config(tmp_path, "cv", weighted, data={"weight": "w", "val_fraction": 0.25}, model=MODELS[model],
                   train={"epochs": 12, "early_stopping": {"patience": 3}})  # fmt: skip
    cfg = config.load(path)
    assert pack_key(cfg) is not None  # the folds train side by side, as one stack
    jobs, repeated = _packed_jobs(cfg, 3)
    a = train_and_score_packed(jobs, torch.device("cpu"))
    b = train_and_score_packed(repeated, torch.device("cpu"))
    assert a is not None and b is not None
    for x, y in zip(a, b, strict=True):
        assert x.best_epochs == y.best_epochs and x.epochs == y.epochs
        assert x.overall is not None and y.overall is not None
        for metric in ("mse", "mae", "r2"):
            assert x.overall[metric] == pytest.approx(y.overall[metric], rel=1e-4)


def test_cv_scores_are_weighted_and_packed_matches_alone(cli, tmp_path):
    weighted, _, _ = _tables(tmp_path, n=90)
    cfg = _config(
        tmp_path, "cv", weighted, data={"weight": "w", "val_fraction": 0.25}, model=MODELS["mlp-relu"]
    )
    folds = []
    for extra in ([], ["--no-pack"]):
        result = cli("cv", cfg, "-k", "3", "--json", "-o", tmp_path / "cv", *extra)
        assert result.code == 0, result
        folds.append(json.loads(result.stdout)["per_fold"])
    for a, b in zip(*folds, strict=True):
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-4)


def _outliers_of_weight_zero(tmp_path: Path) -> Path:
    """A linear table where every tenth row's target is 10,000 off, with weight 0."""
    header, values = linear_rows(120, n_features=3, seed=6)
    w = np.ones(len(values))
    w[::10] = 0
    values[::10, -1] += 1e4
    return write_csv(
        tmp_path / "outliers.csv", [*header, "w"], np.column_stack([values.round(5), w]).tolist()
    )


@pytest.mark.parametrize("pack", [True, False])
def test_cv_and_sweep_score_held_out_rows_by_their_weights(cli, tmp_path, pack):
    """Rows of weight 0 are in every fold's held-out rows: they count for nothing in its score
    (a score of the rows would be about 1e7)."""
    table = _outliers_of_weight_zero(tmp_path)
    extra = [] if pack else ["--no-pack"]
    sweep = {"method": "grid", "folds": 0, "refit": False, "params": {"optimizer.lr": [0.05, 0.1]}}
    cfg = _config(
        tmp_path, "o", table, data={"weight": "w", "val_fraction": 0.25, "standardize": True},
        train={"epochs": 60}, sweep=sweep,
    )  # fmt: skip
    result = cli("cv", cfg, "-k", "3", "--json", "-o", tmp_path / "cv", *extra)
    assert result.code == 0, result
    assert 0 < json.loads(result.stdout)["mse"]["mean"] < 10, result.stdout
    result = cli("sweep", cfg, "-q", "-o", tmp_path / "sweep", *extra)
    assert result.code == 0, result
    with open(tmp_path / "sweep" / "leaderboard.csv", newline="") as f:
        scores = [float(row["score_mean"]) for row in csv.DictReader(f)]
    assert len(scores) == 2 and all(0 < s < 10 for s in scores), scores


def test_eval_metrics_are_weighted_as_scikit_learn_weighs_them(cli, tmp_path):
    metrics = pytest.importorskip("sklearn.metrics")
    weighted, _, w = _tables(tmp_path)
    cfg = _config(tmp_path, "w", weighted, data={"weight": "w"})
    assert cli("run", cfg).code == 0
    predicted = tmp_path / "pred.csv"
    assert cli("predict", tmp_path / "w" / "best.pt", weighted, "-o", predicted).code == 0
    header = predicted.read_text().splitlines()[0].split(",")
    table = np.loadtxt(predicted, delimiter=",", skiprows=1)
    y, p = table[:, header.index("y")], table[:, header.index("y_pred")]
    result = cli("eval", tmp_path / "w" / "best.pt", weighted, "--json")
    assert result.code == 0, result
    got = json.loads(result.stdout)
    assert got["weighted_by"] == "w"
    assert got["mse"] == pytest.approx(metrics.mean_squared_error(y, p, sample_weight=w), rel=1e-6)
    assert got["mae"] == pytest.approx(metrics.mean_absolute_error(y, p, sample_weight=w), rel=1e-6)
    assert got["r2"] == pytest.approx(metrics.r2_score(y, p, sample_weight=w), rel=1e-6)
    assert got["mse"] != pytest.approx(metrics.mean_squared_error(y, p), rel=1e-6)
    shown = cli("eval", tmp_path / "w" / "best.pt", weighted)
    assert shown.code == 0 and "weighted by column `w`" in shown.stdout
    # Without the column, the metrics are of the rows, and nothing says weighted.
    plain = write_csv(tmp_path / "plain.csv", header[:4], table[:, :4].tolist())
    unweighted = cli("eval", tmp_path / "w" / "best.pt", plain, "--json")
    assert unweighted.code == 0, unweighted
    assert "weighted_by" not in json.loads(unweighted.stdout)
    assert json.loads(unweighted.stdout)["mse"] == pytest.approx(metrics.mean_squared_error(y, p), rel=1e-6)


def _bad_table(tmp_path: Path, cells: list[str]) -> Path:
    header, values = linear_rows(len(cells), n_features=2, seed=2)
    rows = [[*map(str, v), c] for v, c in zip(values.round(4).tolist(), cells, strict=True)]
    return write_csv(tmp_path / "bad.csv", [*header, "w"], rows)


@pytest.mark.parametrize(
    ("cells", "says"),
    [
        (["1", "2", "-1", "1", "1", "1"], ["negative weight", "line(s) 4", "non-negative"]),
        (["1", "2", "", "1", "1", "1"], ["empty cell", "line(s) 4"]),
        (["1", "2", "inf", "1", "1", "1"], ["infinite", "line(s) 4"]),
        (["1", "2", "heavy", "1", "1", "1"], ["heavy", "`w`"]),
        (["0", "0", "0", "0", "0", "0"], ["every weight", "is 0"]),
    ],
)
def test_bad_weights_are_refused_naming_file_rows_and_column(cli, tmp_path, cells, says):
    table = _bad_table(tmp_path, cells)
    for command in (["run"], ["cv", "-k", "2"]):
        result = cli(*command, _config(tmp_path, "bad", table, data={"weight": "w"}))
        assert result.code == 2, result
        assert "bad.csv" in result.stderr and "`w`" in result.stderr, result.stderr
        for text in says:
            assert text in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "best.pt").exists()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"weight": "y"}, "both `data.weight` and a target"),
        ({"weight": "w", "features": ["x0", "w"]}, "both `data.weight` and listed in `data.features`"),
        ({"weight": "weights"}, "`weights` (sample weight, `data.weight`) is not a column"),
    ],
)
def test_a_weight_column_that_is_also_a_feature_target_or_absent_is_refused(cli, tmp_path, data, says):
    table = _bad_table(tmp_path, ["1"] * 6)
    result = cli("run", _config(tmp_path, "bad", table, data=data))
    assert result.code == 2, result
    assert says in result.stderr and "bad.csv" in result.stderr


def test_a_validation_file_without_the_weight_column_is_refused(cli, tmp_path):
    table = _bad_table(tmp_path, ["1"] * 6)
    val = write_csv(tmp_path / "val.csv", ["x0", "x1", "y"], [[0, 0, 1], [1, 1, 2]])
    result = cli("run", _config(tmp_path, "bad", table, data={"weight": "w", "val": str(val)}))
    assert result.code == 2 and "val.csv" in result.stderr and "`w`" in result.stderr, result


def test_validation_rows_of_weight_zero_only_are_refused(cli, tmp_path):
    table = _bad_table(tmp_path, ["1"] * 6)
    val = write_csv(tmp_path / "val.csv", ["x0", "x1", "y", "w"], [[0, 0, 1, 0], [1, 1, 2, 0]])
    result = cli("run", _config(tmp_path, "bad", table, data={"weight": "w", "val": str(val)}))
    assert result.code == 2, result
    assert "val.csv" in result.stderr and "every weight of the validation rows is 0" in result.stderr


def test_a_weighted_table_too_large_to_hold_is_refused_not_streamed(cli, tmp_path):
    weighted, _, _ = _tables(tmp_path, n=400)
    cfg = _config(tmp_path, "big", weighted, data={"weight": "w", "memory_budget": "1KiB"},
                  train={"batch_size": 32})  # fmt: skip
    result = cli("run", cfg)
    assert result.code == 2, result
    assert "does not stream a table with sample weights" in result.stderr and "memory_budget" in result.stderr


def test_init_never_picks_a_weight_column(cli, tmp_path):
    weighted, _, _ = _tables(tmp_path)
    out = tmp_path / "c.yaml"
    assert cli("init", weighted, "-t", "y", "-o", out, "--quick").code == 0
    written = yaml.safe_load(out.read_text())
    assert written["data"].get("weight") is None


def test_eval_of_a_weighted_table_too_large_to_hold_is_refused(cli, tmp_path, monkeypatch):
    """Streamed eval (a table beyond data.memory_budget) does not weigh its metrics yet: a
    file with the weight column is refused, not scored unweighted under a weighted name."""
    from mse_train.data import stream_fit

    weighted, _, _ = _tables(tmp_path)
    assert cli("run", _config(tmp_path, "w", weighted, data={"weight": "w"})).code == 0
    monkeypatch.setattr(stream_fit, "budget_of", lambda setting: 1)  # every table is too large
    result = cli("eval", tmp_path / "w" / "best.pt", weighted)
    assert result.code == 2, result
    assert "weight the metrics of a streamed table" in result.stderr and "`w`" in result.stderr
