"""Real-world tables: categories, empty cells, several targets, and `predict`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mse_train.use import predict

from conftest import CONFIGS, DATA, read_metrics, write_config, write_csv


def categorical_table(path: Path, n: int = 300, seed: int = 0) -> Path:
    """price depends on size and on a text `cut` (3 levels) and an integer-coded `grade`."""
    rng = np.random.default_rng(seed)
    cuts = np.array(["Fair", "Good", "Ideal"])
    cut = cuts[rng.integers(0, 3, n)]
    grade = rng.integers(1, 4, n)
    size = rng.uniform(0, 2, n)
    price = 3 * size + np.select([cut == "Fair", cut == "Good"], [0.0, 1.0], 2.5) + 0.5 * grade
    price += 0.05 * rng.normal(size=n)
    rows = [[round(s, 4), c, g, round(p, 4)] for s, c, g, p in zip(size, cut, grade, price, strict=True)]
    return write_csv(path, ["size", "cut", "grade", "price"], rows)


def config(tmp_path: Path, table: Path, **data) -> Path:
    return write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(table), "target": "price", **data},
            "model": {"type": "mlp", "hidden": [16]},
            "optimizer": {"name": "adam", "lr": 0.02},
            "train": {"epochs": 60, "batch_size": 64},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        },
    )


def test_text_column_is_one_hot_encoded_and_stored_in_the_checkpoint(cli, tmp_path):
    table = categorical_table(tmp_path / "t.csv")
    result = cli("run", config(tmp_path, table, categorical=["grade"]), "-q")
    assert result.code == 0, result
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    pre = ckpt["preprocess"]
    assert [c["name"] for c in pre["categorical"]] == ["cut", "grade"]
    assert pre["categorical"][0]["categories"] == ["Fair", "Good", "Ideal"]
    assert pre["categorical"][1]["categories"] == ["1", "2", "3"]  # declared: integer codes as categories
    assert [c["name"] for c in pre["numeric"]] == ["size"]
    assert ckpt["model"]["n_inputs"] == 1 + 3 + 3
    scored = json.loads(cli("eval", tmp_path / "run" / "best.pt", table, "--json").stdout)
    assert scored["r2"] > 0.95  # the categories carry real signal, and it was learnt


def test_unseen_category_is_an_error_naming_column_value_and_line(cli, tmp_path):
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table), "-q").code == 0
    new = write_csv(
        tmp_path / "new.csv",
        ["size", "cut", "grade", "price"],
        [[1.0, "Good", 1, 5.0], [1.0, "Premium", 2, 6.0], [0.5, "Ideal", 3, 4.0]],
    )
    result = cli("eval", tmp_path / "run" / "best.pt", new)
    assert result.code == 2
    assert "column `cut`" in result.stderr and "'Premium'" in result.stderr and "line(s) 3" in result.stderr
    assert "unknown_category: ignore" in result.stderr


def test_unseen_category_ignored_is_encoded_as_zeros(cli, tmp_path):
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table, unknown_category="ignore"), "-q").code == 0
    new = write_csv(tmp_path / "new.csv", ["size", "cut", "grade", "price"], [[1.0, "Premium", 2, 6.0]])
    assert cli("eval", tmp_path / "run" / "best.pt", new, "--json").code == 0
    ckpt = tmp_path / "run" / "best.pt"
    from mse_train.outputs import checkpoint

    data = checkpoint.load(ckpt)
    pre = checkpoint.preprocessor(ckpt, data)
    from mse_train.data import table as table_module

    loaded = table_module.read(new, pre.features, pre.categorical_names)
    x = pre.features_array(loaded)
    block = [i for i, name in enumerate(pre.input_names) if name.startswith("cut=")]
    assert len(block) == 3
    assert x[0, block].tolist() == [0.0, 0.0, 0.0]  # no category set


def test_too_many_categories(cli, tmp_path):
    rows = [[f"id{i}", i % 7, i * 0.5] for i in range(60)]
    table = write_csv(tmp_path / "t.csv", ["customer", "x", "price"], rows)
    result = cli("run", config(tmp_path, table, max_categories=50), "-q")
    assert result.code == 2
    assert "column `customer` has 60 distinct values" in result.stderr and "max_categories" in result.stderr


MISSING_ROWS: list[list[Any]] = [
    ["size", "cut", "price"],
    [1.0, "Good", 4.0],
    ["", "Ideal", 6.0],  # empty feature
    [2.0, "NA", 7.0],  # empty category
    [3.0, "Good", ""],  # empty target
    [4.0, "Fair", 10.0],
    [5.0, "Ideal", 15.5],
]


def missing_table(path: Path) -> Path:
    return write_csv(path, MISSING_ROWS[0], MISSING_ROWS[1:])


def test_missing_error_is_the_default_and_counts_per_column(cli, tmp_path):
    result = cli("run", config(tmp_path, missing_table(tmp_path / "t.csv")), "-q")
    assert result.code == 2
    assert "`size` (feature): 1 empty cell(s), at line(s) 3" in result.stderr
    assert "`cut` (feature): 1 empty cell(s), at line(s) 4" in result.stderr
    assert "`price` (target): 1 empty cell(s), at line(s) 5" in result.stderr


def test_missing_drop_removes_and_reports_rows(cli, tmp_path):
    result = cli("run", config(tmp_path, missing_table(tmp_path / "t.csv"), missing="drop"))
    assert result.code == 0, result
    assert "dropped 1 row(s) with an empty target" in result.stderr
    assert "dropped 2 row(s) with an empty feature" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"]["train"] == 3


@pytest.mark.parametrize("policy", ["mean", "median"])
def test_missing_fill_uses_training_rows_statistics(cli, tmp_path, policy):
    result = cli("run", config(tmp_path, missing_table(tmp_path / "t.csv"), missing=policy))
    assert result.code == 0, result
    assert "dropped 1 row(s) with an empty target" in result.stderr
    pre = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["preprocess"]
    sizes = [1.0, 2.0, 4.0, 5.0]  # training rows with a target and a size
    expected = float(np.mean(sizes) if policy == "mean" else np.median(sizes))
    assert pre["numeric"][0]["fill"] == pytest.approx(expected)
    assert "(missing)" in pre["categorical"][0]["categories"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"]["train"] == 5


def test_statistics_come_from_training_rows_only(cli, tmp_path):
    rng = np.random.default_rng(3)
    train_rows = [[round(v, 4), round(2 * v + 1, 4)] for v in rng.normal(size=100)]
    val_rows = [[1e6, 2e6], [-1e6, -2e6], [5e5, 1e6]]  # extreme values only here
    train = write_csv(tmp_path / "train.csv", ["x", "price"], train_rows)
    val = write_csv(tmp_path / "val.csv", ["x", "price"], val_rows)
    assert cli("run", config(tmp_path, train, val=str(val)), "-q").code == 0
    pre = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["preprocess"]
    xs = np.array([r[0] for r in train_rows], dtype=np.float32).astype(np.float64)
    ys = np.array([r[1] for r in train_rows], dtype=np.float32).astype(np.float64)
    assert pre["numeric"][0]["mean"] == pytest.approx(xs.mean(), rel=1e-6)
    assert pre["numeric"][0]["std"] == pytest.approx(xs.std(), rel=1e-6)
    assert pre["targets"][0]["mean"] == pytest.approx(ys.mean(), rel=1e-6)
    assert abs(pre["numeric"][0]["mean"]) < 1  # the 1e6 rows would have moved it far


def test_validation_split_rows_do_not_move_the_statistics(cli, tmp_path):
    rows = [[float(i % 10), float(i % 10) * 2] for i in range(99)] + [[1e6, 2e6]]
    table = write_csv(tmp_path / "t.csv", ["x", "price"], rows)
    assert cli("run", config(tmp_path, table, val_fraction=0.3), "-q").code == 0
    pre = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["preprocess"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"] == {"train": 70, "val": 30}
    # The split is a seeded permutation; rebuild it to know which rows trained.
    order = np.random.default_rng(0).permutation(100)
    train_x = np.array([rows[i][0] for i in order[:70]])
    assert pre["numeric"][0]["mean"] == pytest.approx(train_x.mean(), rel=1e-6)


def multi_table(path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 3))
    a = 2 * x[:, 0] + 0.1 * rng.normal(size=n)
    b = 100 + 30 * x[:, 1] - 10 * x[:, 2] + rng.normal(size=n)  # other units, other scale
    c = x[:, 0] * x[:, 1] + 0.1 * rng.normal(size=n)
    return write_csv(path, ["x0", "x1", "x2", "a", "b", "c"], np.column_stack([x, a, b, c]).round(5).tolist())


def test_several_targets_train_one_model_and_report_each(cli, tmp_path):
    table = multi_table(tmp_path / "m.csv")
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(table), "target": ["a", "b", "c"], "val_fraction": 0.25},
            "model": {"type": "mlp", "hidden": [32, 32]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "train": {"epochs": 40, "batch_size": 32},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        },
    )
    assert cli("run", cfg, "-q").code == 0
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    for name in ("train_mse_a", "train_mse_b", "train_mse_c", "val_mse_a", "val_mse_b", "val_mse_c"):
        assert name in rows[0] and float(rows[-1][name]) >= 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["model"]["n_outputs"] == 3
    stds = [t["std"] for t in ckpt["preprocess"]["targets"]]
    assert stds[1] > 10 * stds[0]  # each target scaled on its own

    scored = json.loads(cli("eval", tmp_path / "run" / "best.pt", table, "--json").stdout)
    assert set(scored["targets"]) == {"a", "b", "c"}
    predicted = cli("predict", tmp_path / "run" / "best.pt", table)
    assert predicted.code == 0
    out = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert list(out[0]) == ["x0", "x1", "x2", "a", "b", "c", "a_pred", "b_pred", "c_pred"]
    # By hand: per-target MSE, RMSE, MAE, R², then their average.
    per = {}
    for name in ("a", "b", "c"):
        truth = np.array([float(r[name]) for r in out])
        guess = np.array([float(r[f"{name}_pred"]) for r in out])
        err = guess - truth
        per[name] = {
            "mse": np.mean(err**2),
            "mae": np.mean(np.abs(err)),
            "r2": 1 - np.sum(err**2) / np.sum((truth - truth.mean()) ** 2),
        }
        assert scored["targets"][name]["mse"] == pytest.approx(per[name]["mse"], rel=1e-5)
        assert scored["targets"][name]["rmse"] == pytest.approx(np.sqrt(per[name]["mse"]), rel=1e-5)
        assert scored["targets"][name]["mae"] == pytest.approx(per[name]["mae"], rel=1e-5)
        assert scored["targets"][name]["r2"] == pytest.approx(per[name]["r2"], rel=1e-5)
    assert scored["mse"] == pytest.approx(np.mean([p["mse"] for p in per.values()]), rel=1e-5)
    assert scored["r2"] == pytest.approx(np.mean([p["r2"] for p in per.values()]), rel=1e-5)
    assert scored["n"] == 400


def test_predict_matches_eval_and_keeps_the_rows(cli, tmp_path, monkeypatch):
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table), "-q").code == 0
    scored = json.loads(cli("eval", tmp_path / "run" / "best.pt", table, "--json").stdout)
    monkeypatch.setattr(predict, "CHUNK_ROWS", 64)  # several chunks
    out = tmp_path / "pred.csv"
    result = cli("predict", tmp_path / "run" / "best.pt", table, "-o", out)
    assert result.code == 0, result
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(table, newline="") as f:
        original = list(csv.DictReader(f))
    assert len(rows) == len(original) == 300
    assert all({k: r[k] for k in o} == o for r, o in zip(rows, original, strict=True))
    err = np.array([float(r["price_pred"]) - float(r["price"]) for r in rows])
    assert np.mean(err**2) == pytest.approx(scored["mse"], rel=1e-5)


def test_predict_without_target_columns_to_stdout(cli, tmp_path):
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table), "-q").code == 0
    new = write_csv(tmp_path / "new.csv", ["cut", "size", "grade", "note"], [["Good", 1.5, 2, "a, b"]])
    result = cli("predict", tmp_path / "run" / "best.pt", new)
    assert result.code == 0, result
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["cut", "size", "grade", "note", "price_pred"]
    assert rows[0]["note"] == "a, b"
    assert 3.0 < float(rows[0]["price_pred"]) < 7.0  # 3*1.5 + 1.0 + 0.5*2 = 6.5 by construction


def test_predict_bad_cell_is_named(cli, tmp_path):
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table), "-q").code == 0
    new = write_csv(tmp_path / "new.csv", ["cut", "size", "grade"], [["Good", 1.5, 2], ["Good", "big", 2]])
    result = cli("predict", tmp_path / "run" / "best.pt", new)
    assert result.code == 2
    assert "column `size`" in result.stderr and "line 3: 'big'" in result.stderr


@pytest.mark.parametrize("name", ["penguins.yaml", "penguins_multi.yaml"])
def test_shipped_penguin_configs(cli, tmp_path, name):
    out = tmp_path / "run"
    result = cli("run", CONFIGS / name, "-o", out, "--set", "train.epochs=15", "--set", "output.plot=false")
    assert result.code == 0, result
    assert "dropped 2 row(s) with an empty target" in result.stderr or name == "penguins_multi.yaml"
    scored = json.loads(cli("eval", out / "best.pt", DATA / "penguins.csv", "--json").stdout)
    assert scored["r2"] > 0.5


def test_predict_names_the_file_line_of_an_empty_cell_in_a_later_chunk(cli, tmp_path, monkeypatch):
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table), "-q").code == 0
    rows = [[1.0, "Good", 2] for _ in range(150)]
    rows[130][0] = ""  # data row 131: file line 132, in the third chunk of 64
    new = write_csv(tmp_path / "new.csv", ["size", "cut", "grade"], rows)
    monkeypatch.setattr(predict, "CHUNK_ROWS", 64)
    result = cli("predict", tmp_path / "run" / "best.pt", new)
    assert result.code == 2
    assert "`size` (feature): 1 empty cell(s), at line(s) 132" in result.stderr


def test_predict_reads_names_and_cells_by_the_rules_of_eval(cli, tmp_path):
    """One reader for every command: spaces around a header name or a category do not count."""
    table = categorical_table(tmp_path / "t.csv")
    assert cli("run", config(tmp_path, table, unknown_category="ignore"), "-q").code == 0
    best = tmp_path / "run" / "best.pt"
    plain = write_csv(tmp_path / "plain.csv", ["size", "cut", "grade"], [[1.5, "Good", 2], [0.5, "Ideal", 1]])
    spaced = tmp_path / "spaced.csv"
    spaced.write_text('size ,cut,grade\n1.5,"Good ",2\n0.5, Ideal,1\n')
    expected = cli("predict", best, plain)
    got = cli("predict", best, spaced)
    assert expected.code == 0 and got.code == 0, got
    column = [row["price_pred"] for row in csv.DictReader(io.StringIO(expected.stdout))]
    assert [row["price_pred"] for row in csv.DictReader(io.StringIO(got.stdout))] == column
    assert got.stdout.splitlines()[0] == "size,cut,grade,price_pred"  # the names, as eval reads them
    # eval reads the same spaced file and scores the same predictions
    with_target = tmp_path / "spaced_target.csv"
    with_target.write_text('size ,cut,grade,price\n1.5,"Good ",2,6.5\n0.5, Ideal,1,5.0\n')
    assert cli("eval", best, with_target, "--json").code == 0


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "cpu:1"])
def test_eval_and_predict_refuse_a_device_that_is_not_one(cli, tmp_path, device):
    table = categorical_table(tmp_path / "t.csv", n=50)
    assert cli("run", config(tmp_path, table), "-q", "--set", "train.epochs=1").code == 0
    for command in ("eval", "predict"):
        result = cli(command, tmp_path / "run" / "best.pt", table, "--device", device)
        assert result.code == 2, result
        assert f"--device is '{device}'" in result.stderr and "internal error" not in result.stderr
