"""`mse-train init` chooses its starter model with a short check (selection/linearity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from sklearn.linear_model import RidgeCV

from mse_train.selection import linearity

from conftest import DATA, write_csv


def linear_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    return x, (x @ rng.normal(size=6) + 0.5 * rng.normal(size=n))[:, None]


def threshold_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = 2.0 * (x[:, 0] > 0.3) * (x[:, 1] > -0.2) + np.abs(x[:, 2]) + 0.1 * rng.normal(size=n)
    return x, y[:, None]


@pytest.mark.parametrize("columns", [6, 450])  # more rows than columns, and fewer
def test_the_ridge_matches_scikit_learns_ridgecv(columns):
    rng = np.random.default_rng(columns)
    x = rng.normal(size=(300, columns))
    x[:, 3] = x[:, 2] + 0.01 * x[:, 3]  # nearly collinear: the penalty matters
    y = x[:, :6] @ rng.normal(size=6) + 0.5 * rng.normal(size=300)
    mine = linearity._Ridge(x, y[:, None])
    theirs = RidgeCV(alphas=linearity.ALPHAS).fit(x, y)
    assert mine.alpha == pytest.approx(theirs.alpha_)
    np.testing.assert_allclose(mine.predict(x)[:, 0], theirs.predict(x), rtol=1e-6, atol=1e-6)


def test_the_check_tells_a_linear_table_from_a_threshold_table():
    linear = linearity.check(*linear_rows(400), seed=0)
    threshold = linearity.check(*threshold_rows(400), seed=0)
    assert linear.ridge_r2 > 0.8 and not linear.nonlinear
    assert threshold.nonlinear and threshold.gain > 0.1
    assert linearity.check(*threshold_rows(400), seed=0) == threshold  # deterministic under the seed


def test_the_check_samples_large_tables_and_refuses_tiny_ones():
    found = linearity.check(*linear_rows(linearity.MAX_ROWS + 500), seed=1)
    assert found.rows == linearity.MAX_ROWS
    with pytest.raises(ValueError, match="at least"):
        linearity.check(*linear_rows(linearity.MIN_ROWS - 1), seed=0)


def table(tmp_path, name, rows):
    x, y = rows
    header = [f"x{i}" for i in range(x.shape[1])] + ["y"]
    return write_csv(tmp_path / name, header, np.column_stack([x, y]).round(5).tolist())


def test_init_writes_a_linear_starter_that_trains_like_ridge(cli, tmp_path):
    x, y = linear_rows(300, seed=3)
    csv = table(tmp_path, "lin.csv", (x, y))
    result = cli("init", csv, "-t", "y", "-o", tmp_path / "lin.yaml")
    assert result.code == 0, result
    text = (tmp_path / "lin.yaml").read_text()
    parsed = yaml.safe_load(text)
    assert parsed["model"] == {"type": "linear"}
    assert parsed["optimizer"]["name"] == "lbfgs" and parsed["train"]["batch_size"] is None
    assert parsed["regularization"]["l2"] > 0
    assert "init's check on 300 rows" in text
    ran = cli("run", tmp_path / "lin.yaml", "-q", "--set", "output.plot=false", "-o", tmp_path / "run")
    assert ran.code == 0, ran
    scored = cli("eval", tmp_path / "run" / "best.pt", csv, "--json")
    ridge = RidgeCV(alphas=linearity.ALPHAS).fit(x, y[:, 0]).score(x, y[:, 0])
    assert yaml.safe_load(scored.stdout)["r2"] == pytest.approx(ridge, abs=0.01)


def test_init_writes_an_mlp_with_piecewise_embeddings_for_a_threshold_table(cli, tmp_path):
    csv = table(tmp_path, "thr.csv", threshold_rows(400))
    assert cli("init", csv, "-t", "y", "-o", tmp_path / "thr.yaml").code == 0
    parsed = yaml.safe_load((tmp_path / "thr.yaml").read_text())
    assert parsed["model"]["type"] == "mlp"
    assert parsed["model"]["numeric_embedding"] == "piecewise_linear"
    assert parsed["optimizer"]["name"] == "adam" and parsed["train"]["batch_size"] == 64
    assert cli("validate", tmp_path / "thr.yaml").code == 0


def test_init_quick_skips_the_check_and_tiny_tables_get_a_linear_model(cli, tmp_path):
    csv = table(tmp_path, "lin.csv", linear_rows(300))
    assert cli("init", csv, "-t", "y", "-o", tmp_path / "q.yaml", "--quick").code == 0
    assert yaml.safe_load((tmp_path / "q.yaml").read_text())["model"]["type"] == "mlp"
    assert cli("init", DATA / "linear.csv", "-t", "y", "-o", tmp_path / "tiny.yaml").code == 0
    tiny = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    assert tiny["model"] == {"type": "linear"} and tiny["regularization"]["l2"] == 0.0
    ran = cli("run", tmp_path / "tiny.yaml", "-q", "--set", "output.plot=false", "-o", tmp_path / "t")
    assert ran.code == 0, ran


def test_init_reads_every_row_for_its_data_settings(cli, tmp_path):
    rows: list[list[object]] = [[float(i), 2.0 * i] for i in range(1500)]
    rows[1200][0] = ""  # an empty cell after the first 1000 rows, which init's sketch reads
    csv = write_csv(tmp_path / "late.csv", ["x", "y"], rows)
    result = cli("init", csv, "-t", "y", "-o", tmp_path / "late.yaml")
    assert result.code == 0, result
    text = (tmp_path / "late.yaml").read_text()
    assert yaml.safe_load(text)["data"]["missing"] == "mean" and "empty cells in the table: x" in text
    assert cli("validate", tmp_path / "late.yaml").code == 0


def test_a_table_init_cannot_read_whole_still_gets_a_starter_and_a_note(cli, tmp_path):
    csv = write_csv(tmp_path / "late.csv", ["x", "y"], [[float(i), 2.0 * i] for i in range(1500)])
    lines = csv.read_text().splitlines()
    lines[1201] += ",7"  # a row with an extra field after the first 1000 rows
    csv.write_text("\n".join(lines) + "\n")
    result = cli("init", csv, "-t", "y", "-o", tmp_path / "late.yaml")
    assert result.code == 0, result
    assert "could not read the whole table" in result.stderr and "validate" in result.stderr
    assert yaml.safe_load((tmp_path / "late.yaml").read_text())["model"]["type"] == "mlp"
    checked = cli("validate", tmp_path / "late.yaml")
    assert checked.code == 2 and "line 1202" in checked.stderr
