"""Drift warnings at `eval` and `predict`: new rows unlike the training rows, and clean ones."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mse_train.data import drift

from conftest import write_config, write_csv

N = 600


def table(rng: np.random.Generator, n: int) -> list[list[Any]]:
    """a ~ N(0, 1), b ~ U(10, 20) with 5% empty cells, kind in {p, q, r} with 2% empty, y linear."""
    a, b = rng.normal(size=n), rng.uniform(10, 20, size=n)
    kind = rng.choice(["p", "q", "r"], size=n)
    y = 2 * a + 0.3 * b + (kind == "q") + rng.normal(scale=0.1, size=n)
    b_cells = ["" if e else f"{v:.4f}" for v, e in zip(b, rng.random(n) < 0.05, strict=True)]
    kinds = ["" if e else str(k) for k, e in zip(kind, rng.random(n) < 0.02, strict=True)]
    return [[f"{a[i]:.4f}", b_cells[i], kinds[i], f"{y[i]:.4f}"] for i in range(n)]


HEADER = ["a", "b", "kind", "y"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from mse_train.cli import app

    folder = tmp_path_factory.mktemp("drift")
    data = write_csv(folder / "train.csv", HEADER, table(np.random.default_rng(0), N))
    cfg = write_config(
        folder / "c.yaml",
        {"data": {"train": str(data), "target": "y", "val_fraction": 0.2, "missing": "mean",
                  "unknown_category": "ignore"},
         "train": {"epochs": 3}, "output": {"dir": str(folder / "run"), "plot": False}},
    )  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(cfg), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.pt", folder


def findings(cli, checkpoint: Path, data: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """eval's and predict's drift lists (checked equal), and their warnings on stderr."""
    evaluated = cli("eval", checkpoint, data, "--json")
    assert evaluated.code == 0, evaluated
    predicted = cli("predict", checkpoint, data, "-o", tmp_path / "p.csv", "--json")
    assert predicted.code == 0, predicted
    found: list[dict[str, Any]] = json.loads(evaluated.stdout)["drift"]
    assert json.loads(predicted.stdout)["drift"] == found
    for result in (evaluated, predicted):
        assert ("warning:" in result.stderr) == bool(found)
        for item in found:
            assert f"`{item['column']}`" in result.stderr
    return found


def test_fresh_rows_drawn_like_the_training_rows_raise_no_warning(cli, trained, tmp_path):
    checkpoint, folder = trained
    for seed in range(1, 6):
        data = write_csv(tmp_path / f"new{seed}.csv", HEADER, table(np.random.default_rng(seed), 3000))
        assert findings(cli, checkpoint, data, tmp_path) == []
    # The training file itself, too (its validation rows were never in the profile).
    assert findings(cli, checkpoint, folder / "train.csv", tmp_path) == []


def test_many_rows_beyond_the_training_range_are_counted_and_measured(cli, trained, tmp_path):
    checkpoint, _ = trained
    rows = table(np.random.default_rng(7), 1000)
    for row in rows[:100]:
        row[0] = f"{float(row[0]) + 4:.4f}"  # a shifted up: many past the training maximum
    data = write_csv(tmp_path / "shifted.csv", HEADER, rows)
    found = findings(cli, checkpoint, data, tmp_path)
    assert [f["column"] for f in found] == ["a"]
    item = found[0]
    assert item["kind"] == "range" and item["of"] == 1000
    assert item["rows"] == item["above"] + item["below"] and item["above"] > 20
    assert item["furthest"] > item["train_max"] and item["ranges_beyond"] > 0


def test_one_row_slightly_outside_is_chance_but_one_far_outside_is_reported(cli, trained, tmp_path):
    checkpoint, _ = trained
    ckpt = torch.load(checkpoint, weights_only=True)
    low, high = ckpt["profile"]["numeric"]["a"]["min"], ckpt["profile"]["numeric"]["a"]["max"]
    rows = table(np.random.default_rng(8), 200)
    rows[0][0] = f"{high + 0.01 * (high - low):.4f}"
    data = write_csv(tmp_path / "slight.csv", HEADER, rows)
    assert findings(cli, checkpoint, data, tmp_path) == []
    rows[0][0] = f"{high + 1.5 * (high - low):.4f}"  # extrapolation, however rare
    data = write_csv(tmp_path / "far.csv", HEADER, rows)
    found = findings(cli, checkpoint, data, tmp_path)
    assert [(f["column"], f["kind"], f["rows"]) for f in found] == [("a", "range", 1)]
    assert found[0]["ranges_beyond"] == pytest.approx(1.5, rel=1e-3)


def test_unseen_categories_under_ignore_are_reported_with_their_counts(cli, trained, tmp_path):
    checkpoint, _ = trained
    rows = table(np.random.default_rng(9), 300)
    for i in range(0, 30, 3):
        rows[i][2] = "s"
    rows[1][2] = "t"
    data = write_csv(tmp_path / "unseen.csv", HEADER, rows)
    found = findings(cli, checkpoint, data, tmp_path)
    assert [(f["column"], f["kind"], f["rows"], f["of"]) for f in found] == [("kind", "category", 11, 300)]
    assert found[0]["values"] == {"s": 10, "t": 1}


def test_unseen_categories_under_error_stop_the_command_as_before(cli, tmp_path):
    data = write_csv(tmp_path / "t.csv", ["k", "y"], [[c, i] for i, c in enumerate("pqpqpqpqpq")])
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(data), "target": "y"}, "train": {"epochs": 1},
         "output": {"dir": str(tmp_path / "run"), "plot": False}},
    )  # fmt: skip
    assert cli("run", cfg, "-q").code == 0
    new = write_csv(tmp_path / "n.csv", ["k", "y"], [["z", 1]])
    result = cli("eval", tmp_path / "run" / "best.pt", new)
    assert result.code == 2 and "training never saw" in result.stderr and "warning:" not in result.stderr


def test_far_more_empty_cells_than_training_is_reported(cli, trained, tmp_path):
    checkpoint, _ = trained
    rows = table(np.random.default_rng(10), 1000)
    for row in rows[:300]:
        row[1] = ""
    data = write_csv(tmp_path / "holes.csv", HEADER, rows)
    found = findings(cli, checkpoint, data, tmp_path)
    assert [(f["column"], f["kind"]) for f in found] == [("b", "missing")]
    assert found[0]["share"] >= 0.3 and found[0]["train_share"] == pytest.approx(0.05, abs=0.03)
    # A few more empty cells than training, within what chance gives: quiet.
    rows = table(np.random.default_rng(11), 1000)
    for row in rows[:20]:
        row[1] = ""
    data = write_csv(tmp_path / "few.csv", HEADER, rows)
    assert findings(cli, checkpoint, data, tmp_path) == []


def test_drift_is_counted_the_same_when_predict_reads_in_chunks(cli, trained, tmp_path, monkeypatch):
    from mse_train.use import predict as predicting

    checkpoint, _ = trained
    rows = table(np.random.default_rng(12), 900)
    for row in rows[::9]:
        row[0], row[2] = "9.5", "s"
    data = write_csv(tmp_path / "mixed.csv", HEADER, rows)
    whole = findings(cli, checkpoint, data, tmp_path)
    monkeypatch.setattr(predicting, "CHUNK_ROWS", 64)
    chunked = cli("predict", checkpoint, data, "-o", tmp_path / "c.csv", "--json")
    assert chunked.code == 0 and json.loads(chunked.stdout)["drift"] == whole
    assert {f["column"] for f in whole} == {"a", "kind"}


def test_predict_json_needs_a_file_for_the_rows(cli, trained):
    checkpoint, folder = trained
    result = cli("predict", checkpoint, folder / "train.csv", "--json")
    assert result.code == 2 and "-o" in result.stderr


def test_the_profile_is_checked_when_the_checkpoint_loads(cli, trained, tmp_path):
    checkpoint, folder = trained
    ckpt = torch.load(checkpoint, weights_only=True)
    profile = ckpt["profile"]
    assert profile["rows"] == 480 and set(profile["numeric"]) == {"a", "b"}
    assert set(profile["categorical"]) == {"kind"}
    broken = [
        {**profile, "rows": 0},
        {**profile, "numeric": {"a": profile["numeric"]["a"]}},
        {**profile, "numeric": {**profile["numeric"], "a": {"min": 3.0, "max": 1.0, "missing": 0}}},
        {**profile, "categorical": {"kind": {"missing": -1}}},
        "not a mapping",
    ]
    for bad in broken:
        torch.save({**ckpt, "profile": bad}, tmp_path / "bad.pt")
        result = cli("eval", tmp_path / "bad.pt", folder / "train.csv")
        assert result.code == 2, (bad, result)
        assert "`profile" in result.stderr and "Traceback" not in result.stderr
    torch.save({k: v for k, v in ckpt.items() if k != "profile"}, tmp_path / "old.pt")
    result = cli("eval", tmp_path / "old.pt", folder / "train.csv", "--json")  # older checkpoints: no check
    assert result.code == 0 and json.loads(result.stdout)["drift"] == []


def test_profile_matches_the_training_rows(tmp_path):
    """Range and empty cells of exactly the rows the model learned from."""
    from mse_train.config import load
    from mse_train.data import prepare

    data = write_csv(
        tmp_path / "t.csv", ["a", "k", "y"], [[i if i % 10 else "", "pq"[i % 2], i] for i in range(50)]
    )
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(data), "target": "y", "missing": "mean"},
         "output": {"dir": str(tmp_path / "r")}},
    )  # fmt: skip
    prepared = prepare.prepare(load(cfg).data, ["y"], 0)
    assert prepared.profile == {
        "rows": 50,
        "numeric": {"a": {"min": 1.0, "max": 49.0, "missing": 5}},
        "categorical": {"k": {"missing": 0}},
    }


@pytest.mark.parametrize(
    ("k", "m", "a", "b"),
    [
        (1, 1, 2, 999),
        (3, 1000, 2, 999),
        (8, 1000, 2, 999),
        (5, 10, 1, 2),
        (1, 3, 2, 2),
        (3, 3, 2, 2),
        (0, 5, 1, 1),
    ],
)
def test_beta_binomial_tail_matches_a_direct_sum(k, m, a, b):
    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    direct = sum(
        math.comb(m, j) * math.exp(log_beta(j + a, m - j + b) - log_beta(a, b)) for j in range(k, m + 1)
    )
    assert drift.beta_binomial_sf(k, m, a, b) == pytest.approx(direct, rel=1e-9, abs=1e-13)


def test_predictions_are_unchanged_by_the_watch(cli, trained, tmp_path):
    checkpoint, folder = trained
    assert cli("predict", checkpoint, folder / "train.csv", "-o", tmp_path / "a.csv").code == 0
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N and all(r["y_pred"] for r in rows)
