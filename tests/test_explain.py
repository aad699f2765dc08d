"""`mse-train explain`: permutation importance per original column, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_config, write_csv


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """y = 3 a + 0.5 b + (2 if kind is 'hi') + noise; c is noise the model may not use."""
    from typer.testing import CliRunner

    from mse_train.cli import app

    folder = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    n = 400
    a, b, c = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(["hi", "lo", "mid"], size=n)
    y = 3 * a + 0.5 * b + 2.0 * (kind == "hi") + 0.05 * rng.normal(size=n)
    rows = [[f"{a[i]:.5f}", f"{b[i]:.5f}", f"{c[i]:.5f}", kind[i], f"{y[i]:.5f}"] for i in range(n)]
    data = write_csv(folder / "t.csv", ["a", "b", "c", "kind", "y"], rows)
    cfg = write_config(
        folder / "c.yaml",
        {"data": {"train": str(data), "target": "y"}, "optimizer": {"name": "lbfgs", "lr": 1.0},
         "train": {"epochs": 3}, "output": {"dir": str(folder / "run"), "plot": False}},
    )  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(cfg), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.pt", data


def test_columns_rank_by_how_much_they_matter(cli, trained, tmp_path):
    checkpoint, data = trained
    result = cli("explain", checkpoint, data, "--json", "-o", tmp_path / "imp.png")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    importance = out["importance"]
    assert list(importance) == ["a", "kind", "b", "c"]  # largest first; kind counted once
    # Shuffling a doubles its spread in the prediction: the MSE rises by ~2 var(3a) = 18.
    assert importance["a"]["mean"] == pytest.approx(18, rel=0.25)
    assert abs(importance["c"]["mean"]) < 0.01
    assert out["baseline_mse"] < 0.01 and out["n"] == 400 and out["repeats"] == 5
    assert all(v["std"] >= 0 for v in importance.values())
    assert (tmp_path / "imp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_seed_gives_the_same_numbers_and_another_seed_others(cli, trained):
    checkpoint, data = trained
    runs = [
        strict_json(cli("explain", checkpoint, data, "--json", "--seed", s).stdout) for s in ("1", "1", "2")
    ]
    assert runs[0] == runs[1]
    assert runs[0]["importance"]["a"] != runs[2]["importance"]["a"]


def test_the_table_names_every_column(cli, trained):
    checkpoint, data = trained
    result = cli("explain", checkpoint, data, "--repeats", "2")
    assert result.code == 0, result
    for name in ("a", "b", "c", "kind", "baseline MSE"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--repeats", "0"], "--repeats"),
        (["--device", "tpu"], "tpu"),
    ],
)
def test_bad_options_are_exit_2(cli, trained, args, words):
    checkpoint, data = trained
    result = cli("explain", checkpoint, data, *args)
    assert result.code == 2, result
    assert words in result.stderr


def test_bad_inputs_are_exit_2(cli, trained, tmp_path):
    checkpoint, data = trained
    no_target = write_csv(tmp_path / "x.csv", ["a", "b", "c", "kind"], [[1, 2, 3, "hi"], [2, 3, 4, "lo"]])
    result = cli("explain", checkpoint, no_target)
    assert result.code == 2 and "`y`" in result.stderr, result
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    result = cli("explain", foreign, data)
    assert result.code == 2, result
    onto_input = cli("explain", checkpoint, data, "-o", data)
    assert onto_input.code == 2, onto_input
    assert data.read_text().startswith("a,b,c,kind,y")
    assert "Traceback" not in result.stderr
