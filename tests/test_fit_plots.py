"""`eval --plot DIR`: predicted against actual and residuals per target."""

from __future__ import annotations

import json

import numpy as np

from conftest import linear_rows, write_config, write_csv

PNG = b"\x89PNG\r\n\x1a\n"


def test_eval_plot_writes_two_pictures_per_target(cli, tmp_path):
    header, values = linear_rows(80, n_features=2)
    values = np.column_stack([values, values[:, -1] * 1000 + 5])
    data = write_csv(tmp_path / "t.csv", [*header, "y big"], values.round(4).tolist())
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(data), "target": ["y", "y big"]}, "train": {"epochs": 3},
         "output": {"dir": str(tmp_path / "run"), "plot": False}},
    )  # fmt: skip
    assert cli("run", cfg, "-q").code == 0
    result = cli("eval", tmp_path / "run" / "best.pt", data, "--json", "--plot", tmp_path / "plots")
    assert result.code == 0, result
    json.loads(result.stdout)  # stdout stays one JSON object
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["y_big_fit.png", "y_big_residuals.png", "y_fit.png", "y_residuals.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:8] == PNG for n in names)
    refused = cli("eval", tmp_path / "run" / "best.pt", data, "--plot", data)
    assert refused.code == 2, refused
