"""Prediction intervals (`predict --interval`, `eval --interval`), through the real CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONFIGS, DATA, write_config, write_csv


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def diamonds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped config on 40,000 of the diamonds (8,000 of them validation); 13,940 kept apart."""
    from typer.testing import CliRunner

    from mse_train.cli import app

    folder = tmp_path_factory.mktemp("diamonds")
    rows = read_rows(DATA / "diamonds.csv")
    order = np.random.default_rng(1).permutation(len(rows))
    header = list(rows[0])
    train = write_csv(folder / "train.csv", header, [list(rows[i].values()) for i in order[:40_000]])
    test = write_csv(folder / "test.csv", header, [list(rows[i].values()) for i in order[40_000:]])
    args = ["run", CONFIGS / "diamonds.yaml", "-q", "-o", folder / "run", "--set", f"data.train={train}"]
    result = CliRunner().invoke(app, [*map(str, args), "--set", "train.epochs=6"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.pt", test


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_coverage_on_rows_kept_apart_is_within_three_points(cli, diamonds, level):
    checkpoint, test = diamonds
    result = cli("eval", checkpoint, test, "--interval", level, "--json")
    assert result.code == 0, result
    out = json.loads(result.stdout)
    assert out["n"] == 13_940
    assert out["interval"]["level"] == level
    assert abs(out["interval"]["coverage"] - level) <= 0.03, out["interval"]
    assert out["interval"]["mean_width"] > 0


def test_predict_adds_lo_and_hi_that_agree_with_eval(cli, diamonds, tmp_path):
    checkpoint, test = diamonds
    assert cli("predict", checkpoint, test, "--interval", 0.9, "-o", tmp_path / "p.csv").code == 0
    rows = read_rows(tmp_path / "p.csv")
    assert list(rows[0])[-3:] == ["price_pred", "price_lo", "price_hi"]
    pred, lo, hi, actual = (
        np.array([float(r[k]) for r in rows]) for k in ("price_pred", "price_lo", "price_hi", "price")
    )
    width = hi - lo
    assert np.all(lo < pred) and np.all(pred < hi)
    assert np.allclose(width, width[0])  # split conformal: one width for every row
    out = json.loads(cli("eval", checkpoint, test, "--interval", 0.9, "--json").stdout)
    # predict writes float32 values (lo and hi rounded to float32 each): eval's width to their last place
    last_place = float(np.spacing(np.float32(np.abs(hi).max())))
    assert width[0] == pytest.approx(out["interval"]["mean_width"], abs=2 * last_place)
    inside = float(np.mean((actual >= lo) & (actual <= hi)))
    assert inside == pytest.approx(out["interval"]["coverage"], abs=2 / len(rows))  # printed rounding
    # A wider level gives a wider interval around the same prediction.
    assert cli("predict", checkpoint, test, "--interval", 0.95, "-o", tmp_path / "q.csv").code == 0
    wider = read_rows(tmp_path / "q.csv")
    assert float(wider[0]["price_hi"]) - float(wider[0]["price_lo"]) > width[0]
    assert wider[0]["price_pred"] == rows[0]["price_pred"]


def test_the_half_width_is_the_conformal_quantile_of_the_validation_residuals(cli, tmp_path):
    """With a validation file, its residuals can be computed outside: the ceil((n+1)P)-th smallest."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    y = x @ [1.5, -2.0] + rng.normal(scale=0.5, size=300)
    rows = [[f"{a:.6f}", f"{b:.6f}", f"{t:.6f}"] for (a, b), t in zip(x, y, strict=True)]
    train = write_csv(tmp_path / "train.csv", ["a", "b", "y"], rows[:200])
    val = write_csv(tmp_path / "val.csv", ["a", "b", "y"], rows[200:])
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(train), "val": str(val), "target": "y"}, "train": {"epochs": 5},
         "output": {"dir": str(tmp_path / "run"), "plot": False}},
    )  # fmt: skip
    assert cli("run", cfg, "-q").code == 0
    for name in ("best.pt", "last.pt"):
        assert cli("predict", tmp_path / "run" / name, val, "-o", tmp_path / "v.csv").code == 0
        got = read_rows(tmp_path / "v.csv")
        residuals = np.sort([abs(float(r["y"]) - float(r["y_pred"])) for r in got])
        assert (
            cli("predict", tmp_path / "run" / name, val, "--interval", 0.8, "-o", tmp_path / "i.csv").code
            == 0
        )
        first = read_rows(tmp_path / "i.csv")[0]
        half = (float(first["y_hi"]) - float(first["y_lo"])) / 2
        expected = residuals[math.ceil(101 * 0.8) - 1]
        assert half == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_several_targets_get_an_interval_each(cli, tmp_path):
    cfg = CONFIGS / "penguins_multi.yaml"
    assert cli("run", cfg, "-q", "-o", tmp_path / "run", "--set", "train.epochs=5").code == 0
    result = cli("eval", tmp_path / "run" / "best.pt", DATA / "penguins.csv", "--interval", 0.9, "--json")
    assert result.code == 0, result
    interval = json.loads(result.stdout)["interval"]
    targets = interval["targets"]
    assert len(targets) >= 2
    assert all(0 <= t["coverage"] <= 1 and t["mean_width"] > 0 for t in targets.values())
    # Each target in its own units: their widths differ.
    assert len({round(t["mean_width"], 6) for t in targets.values()}) == len(targets)
    table = cli("eval", tmp_path / "run" / "best.pt", DATA / "penguins.csv", "--interval", 0.9)
    assert all(f"intervals for {name}" in table.stdout for name in targets)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run with 20 validation rows, and its data."""
    from typer.testing import CliRunner

    from mse_train.cli import app

    folder = tmp_path_factory.mktemp("small")
    rows = [[i, 2 * i + (i % 3)] for i in range(100)]
    data = write_csv(folder / "t.csv", ["x", "y"], rows)
    cfg = write_config(
        folder / "c.yaml",
        {"data": {"train": str(data), "target": "y", "val_fraction": 0.2}, "train": {"epochs": 3},
         "output": {"dir": str(folder / "run"), "plot": False}},
    )  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(cfg), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.pt", data


@pytest.mark.parametrize("level", ["0", "1", "1.5", "-0.1", "nan", "inf"])
def test_a_level_outside_zero_to_one_is_refused(cli, small, level):
    checkpoint, data = small
    for command in ("eval", "predict"):
        result = cli(command, checkpoint, data, "--interval", level)
        assert result.code == 2, result
        assert "--interval must be a coverage level between 0 and 1" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_level_the_validation_rows_cannot_support_says_how_many_are_needed(cli, small):
    checkpoint, data = small
    result = cli("predict", checkpoint, data, "--interval", 0.99)
    assert result.code == 2, result
    assert "needs at least 99 validation rows" in result.stderr and "calibrated on 20" in result.stderr
    assert cli("predict", checkpoint, data, "--interval", 0.95).code == 0  # 20 rows allow 20/21


def test_without_validation_rows_there_are_no_intervals(cli, tmp_path):
    data = write_csv(tmp_path / "t.csv", ["x", "y"], [[i, 2 * i] for i in range(30)])
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(data), "target": "y"}, "train": {"epochs": 2},
         "output": {"dir": str(tmp_path / "run"), "plot": False}},
    )  # fmt: skip
    assert cli("run", cfg, "-q").code == 0
    for command in ("eval", "predict"):
        result = cli(command, tmp_path / "run" / "best.pt", data, "--interval", 0.9)
        assert result.code == 2, result
        assert "trained without validation rows" in result.stderr
        assert "data.val_fraction" in result.stderr
    assert not torch.load(tmp_path / "run" / "best.pt", weights_only=True).get("residuals")


def test_a_checkpoint_without_residuals_or_with_edited_ones(cli, small, tmp_path):
    checkpoint, data = small
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["residuals"].shape == (20, 1)
    stripped = {**ckpt, "residuals": None}
    torch.save(stripped, tmp_path / "old.pt")
    result = cli("predict", tmp_path / "old.pt", data, "--interval", 0.9)
    assert (
        result.code == 2 and "holds no validation residuals" in result.stderr and "--resume" in result.stderr
    )
    assert cli("predict", tmp_path / "old.pt", data).code == 0  # predictions need no residuals
    torch.save({**stripped, "no_residuals": "not_finite"}, tmp_path / "overflow.pt")
    result = cli("predict", tmp_path / "overflow.pt", data, "--interval", 0.9)
    assert result.code == 2 and "overflowed" in result.stderr and "--resume" not in result.stderr, result
    torch.save({**stripped, "no_residuals": "bogus"}, tmp_path / "edited.pt")
    result = cli("predict", tmp_path / "edited.pt", data)
    assert result.code == 2 and "`no_residuals`" in result.stderr, result
    for bad in (
        -ckpt["residuals"],
        ckpt["residuals"].flip(0) + 1,
        ckpt["residuals"].float(),
        torch.zeros(0, 1),
    ):
        torch.save({**ckpt, "residuals": bad}, tmp_path / "bad.pt")
        result = cli("predict", tmp_path / "bad.pt", data)
        assert result.code == 2, result
        assert "`residuals`" in result.stderr


def test_columns_predict_would_add_must_not_exist(cli, small, tmp_path):
    checkpoint, _ = small
    data = write_csv(tmp_path / "t.csv", ["x", "y_hi"], [[1, 2]])
    result = cli("predict", checkpoint, data, "--interval", 0.9)
    assert result.code == 2 and "already has column(s) y_hi" in result.stderr
    assert cli("predict", checkpoint, data).code == 0  # without --interval, y_hi is just a column


def test_rows_dropped_for_empty_cells_get_empty_bounds(cli, tmp_path):
    rows = [[i, "" if i == 5 else i % 7, 2 * i] for i in range(60)]
    data = write_csv(tmp_path / "t.csv", ["x", "z", "y"], rows)
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(data), "target": "y", "val_fraction": 0.3, "missing": "drop"},
         "train": {"epochs": 2}, "output": {"dir": str(tmp_path / "run"), "plot": False}},
    )  # fmt: skip
    assert cli("run", cfg, "-q").code == 0
    result = cli("predict", tmp_path / "run" / "best.pt", data, "--interval", 0.5)
    assert result.code == 0, result
    out = list(csv.DictReader(result.stdout.splitlines()))
    assert [out[5][k] for k in ("y_pred", "y_lo", "y_hi")] == ["", "", ""]
    assert all(float(r["y_lo"]) < float(r["y_pred"]) < float(r["y_hi"]) for i, r in enumerate(out) if i != 5)


def test_a_file_with_only_a_header_gets_the_columns_and_no_rows(cli, small, tmp_path):
    checkpoint, _ = small
    data = write_csv(tmp_path / "t.csv", ["x"], [])
    result = cli("predict", checkpoint, data, "--interval", 0.9)
    assert result.code == 0, result
    assert result.stdout.splitlines() == ["x,y_pred,y_lo,y_hi"]


def test_predict_writes_each_float32_in_its_shortest_text_in_every_chunk(cli, small, tmp_path, monkeypatch):
    """17 significant digits from a float32 model were noise: each _pred, _lo and _hi cell is
    the shortest text that reads back as the same float32, whether written in one chunk or many."""
    from mse_train.use import predict

    checkpoint, data = small
    one = tmp_path / "one.csv"
    assert cli("predict", checkpoint, data, "--interval", 0.8, "-o", one).code == 0
    monkeypatch.setattr(predict, "CHUNK_ROWS", 7)
    many = tmp_path / "many.csv"
    assert cli("predict", checkpoint, data, "--interval", 0.8, "-o", many).code == 0
    stdout = cli("predict", checkpoint, data, "--interval", 0.8).stdout
    assert one.read_text() == many.read_text() == stdout
    rows = read_rows(one)
    assert len(rows) == 100
    for row in rows:
        for name in ("y_pred", "y_lo", "y_hi"):
            text = row[name]
            value = np.float32(text)
            assert predict.float32_text(float(value)) == text  # reads back, writes the same
            digits = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
            assert len(digits) <= 9, text  # float32 needs at most 9 significant digits
            assert str(value) == text or float(str(value)) == float(text)  # numpy's shortest


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.5, "1.5"), (0.1, "0.1"), (3.0, "3.0"), (-1018104.53125, "-1018104.5"), (1e30, "1e+30"),
     (1.2345678e-05, "1.2345678e-05"), (0.1 + 0.2, "0.3")],
)  # fmt: skip
def test_float32_text_is_the_shortest_round_trip(value, text):
    from mse_train.use import predict

    assert predict.float32_text(value) == text


# ------------------------------------------------- a linear model trained on every row
def _linear_on_every_row(tmp_path: Path, rows: list[list[float]], header: list[str], **data: object) -> Path:
    """A config that solves ridge regression on every row of `rows` (no validation rows)."""
    table = write_csv(tmp_path / "t.csv", header, rows)
    return write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(table), "target": "y", **data}, "model": {"type": "linear"},
         "optimizer": {"name": "lbfgs"}, "regularization": {"l2": 0.01},
         "train": {"epochs": 20, "early_stopping": {"patience": 3}},
         "output": {"dir": str(tmp_path / "run"), "plot": False}},
    )  # fmt: skip


def test_a_linear_model_on_every_row_keeps_its_exact_leave_one_out_residuals(cli, tmp_path):
    """The checkpoint's residuals are those of ridge refitted without each row in turn (in
    the standardised inputs the run fitted on every row), in the target's units."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
    y = x @ [2.0, -0.5, 4.0] + rng.normal(scale=0.7, size=60) + 10
    rows = np.column_stack([x, y]).round(6)
    assert cli("run", _linear_on_every_row(tmp_path, rows.tolist(), ["a", "b", "c", "y"]), "-q").code == 0
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(tmp_path / "run" / name, weights_only=True)
        assert ckpt["residuals_from"] == "leave_one_out" and ckpt["residuals"].shape == (60, 1)
        z = (rows[:, :3] - rows[:, :3].mean(0)) / rows[:, :3].std(0)
        t = (rows[:, 3] - rows[:, 3].mean()) / rows[:, 3].std()
        alpha = 0.01 * 60  # l2 x rows x targets: the mean loss's penalty, on the sum of squares
        out = [
            t[i] - Ridge(alpha=alpha).fit(np.delete(z, i, 0), np.delete(t, i)).predict(z[i : i + 1])[0]
            for i in range(60)
        ]
        expected = np.sort(np.abs(out) * rows[:, 3].std())
        np.testing.assert_allclose(ckpt["residuals"][:, 0].numpy(), expected, rtol=1e-3, atol=1e-4)


def test_leave_one_out_intervals_of_the_linear_starter_cover_fresh_rows(cli, tmp_path):
    """init's linear starter (every row trained on) gives `predict`/`eval --interval` from its
    leave-one-out residuals: on 20,000 fresh rows of the same linear-plus-noise distribution,
    coverage within 0.03 of each level (fixed seeds)."""
    rng = np.random.default_rng(11)
    beta = rng.normal(size=5)

    def rows(n: int) -> list[list[float]]:
        x = rng.normal(size=(n, 5))
        out: list[list[float]] = (
            np.column_stack([x, x @ beta + rng.normal(scale=0.8, size=n)]).round(6).tolist()
        )
        return out

    header = [f"x{i}" for i in range(5)] + ["y"]
    train = write_csv(tmp_path / "train.csv", header, rows(300))
    fresh = write_csv(tmp_path / "fresh.csv", header, rows(20_000))
    config = tmp_path / "lin.yaml"
    assert cli("init", train, "-t", "y", "-o", config).code == 0
    written = config.read_text()
    assert "type: linear" in written and "val_fraction: 0.0" in written
    assert cli("run", config, "-q", "--set", "output.plot=false", "-o", tmp_path / "run").code == 0
    best = tmp_path / "run" / "best.pt"
    for level in (0.5, 0.8, 0.9, 0.95):
        result = cli("eval", best, fresh, "--interval", level, "--json")
        assert result.code == 0, result
        got = json.loads(result.stdout)["interval"]
        assert got["residuals"] == "leave_one_out"
        assert abs(got["coverage"] - level) <= 0.03, got
    said = cli("eval", best, fresh, "--interval", 0.9)
    assert "(calibrated on training rows, exact leave-one-out residuals)" in said.stdout
    predicted = cli("predict", best, fresh, "--interval", 0.9, "-o", tmp_path / "p.csv")
    assert predicted.code == 0, predicted
    out = read_rows(tmp_path / "p.csv")
    assert all(float(r["y_lo"]) < float(r["y_pred"]) < float(r["y_hi"]) for r in out)
    refused = cli("predict", best, fresh, "--interval", 0.999)
    assert refused.code == 2 and "calibrated on 300 (training rows, exact leave-one-out" in refused.stderr


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"data": {"weight": "w"}}, "weighted rows"),  # weighted leave-one-out: not kept
        ({"regularization": {"l1": 0.01, "l2": 0.01}}, "not the ridge solution"),
        ({"optimizer": {"name": "adam", "lr": 0.001}, "train": {"epochs": 2}}, "not the ridge solution"),
    ],
)
def test_a_linear_model_on_every_row_without_leave_one_out_residuals_says_why(cli, tmp_path, change, words):
    rng = np.random.default_rng(5)
    rows = [[a, b, 1 + (i % 3), 3 * a - b + 0.1 * e] for i, (a, b, e) in enumerate(rng.normal(size=(80, 3)))]
    config = _linear_on_every_row(tmp_path, rows, ["a", "b", "w", "y"], features=["a", "b"])
    sets = [
        f"{part}.{key}={json.dumps(value)}" for part, keys in change.items() for key, value in keys.items()
    ]
    assert cli("run", config, "-q", *[a for s in sets for a in ("--set", s)]).code == 0
    result = cli("predict", tmp_path / "run" / "best.pt", tmp_path / "t.csv", "--interval", 0.9)
    assert result.code == 2 and words in result.stderr and "data.val_fraction" in result.stderr, result
    assert "Traceback" not in result.stderr
