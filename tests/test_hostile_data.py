"""Hostile and damaged input (issue 14): strict JSON, all-or-nothing predict, exit 2 with a
message that names the file, place and fix for every bad input, never an internal error.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mse_train.use import predict as predicting

from conftest import linear_rows, run_process, write_config, write_csv


def bad_input(result, *fragments: str) -> None:
    """Exit 2, a message holding every fragment, nothing on stdout, no traceback."""
    assert result.code == 2, result
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "", result.stdout[:500]


@pytest.fixture
def trained(cli, small_config, tmp_path: Path) -> Path:
    """best.pt of a finished run on the `table` fixture (x0, x1, x2 -> y, standardised)."""
    assert cli("run", small_config(), "-q").code == 0
    return tmp_path / "run" / "best.pt"


# ------------------------------------------------------ strict JSON, finite results
@pytest.fixture
def narrow(cli, tmp_path: Path) -> Path:
    """best.pt trained on a table whose x0 and y span only ~0.01: 3e38 there is far outside."""
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=100) * 0.01, rng.normal(size=100)
    rows = np.column_stack([x0, x1, x0 + 0.001 * x1]).round(6).tolist()
    table = write_csv(tmp_path / "narrow.csv", ["x0", "x1", "y"], rows)
    cfg = write_config(
        tmp_path / "narrow.yaml",
        {
            "data": {"train": str(table), "target": "y"},
            "optimizer": {"name": "adam", "lr": 0.05},
            "train": {"epochs": 5},
            "output": {"dir": str(tmp_path / "narrow_run"), "plot": False},
        },
    )
    assert cli("run", cfg, "-q").code == 0
    return tmp_path / "narrow_run" / "best.pt"


def far_out_rows(tmp_path: Path, n: int = 4, at: int = 2) -> Path:
    rows = [[0.001 * i, 0.5, 1.0] for i in range(n)]
    rows[at][0] = 3e38  # a legitimate float32, but 3e40 standard deviations out
    return write_csv(tmp_path / "far.csv", ["x0", "x1", "y"], rows)


def test_eval_json_never_prints_nan_or_infinity(cli, narrow, tmp_path):
    result = cli("eval", narrow, far_out_rows(tmp_path), "--json")
    bad_input(result, "far.csv", "not a finite number for 1 row(s)", "line 4", "`x0` is 3e+38")
    assert "standard deviations from the training mean" in result.stderr


def test_eval_json_in_a_real_process_prints_nothing_but_strict_json(narrow, tmp_path):
    # Outside pytest numpy's overflow is only a warning: the old code printed Infinity, exit 0.
    result = run_process("eval", narrow, far_out_rows(tmp_path), "--json")
    assert result.returncode == 2, result
    assert result.stdout == "" and "line 4" in result.stderr and "Traceback" not in result.stderr


def test_eval_json_with_a_far_out_target_is_finite(cli, narrow, tmp_path):
    rows = [[0.001 * i, 0.5, 0.001] for i in range(4)]
    rows[1][2] = 3e38  # scaled by the training std (~0.01) it overflows float32
    result = cli("eval", narrow, write_csv(tmp_path / "t.csv", ["x0", "x1", "y"], rows), "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert 1e76 < report["mse"] < 1e77 and report["n"] == 4


def test_eval_table_refuses_a_non_finite_prediction_too(cli, narrow, tmp_path):
    bad_input(cli("eval", narrow, far_out_rows(tmp_path)), "line 4", "outside the range of the training rows")


def test_eval_json_is_strict_json(cli, trained, table):
    result = cli("eval", trained, table, "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert set(report) == {"mse", "rmse", "mae", "r2", "n", "drift"} and report["n"] == 200


def test_predict_never_leaves_an_empty_prediction_silently(cli, narrow, tmp_path):
    out = tmp_path / "pred.csv"
    bad_input(cli("predict", narrow, far_out_rows(tmp_path), "-o", out), "line 4", "`x0` is 3e+38")
    assert not out.exists()
    bad_input(cli("predict", narrow, far_out_rows(tmp_path)), "line 4", "y_pred")


def test_predict_leaves_empty_only_the_rows_drop_skips(cli, small_config, tmp_path):
    cfg = small_config(data={"missing": "drop"})
    assert cli("run", cfg, "-q").code == 0
    rows = write_csv(tmp_path / "rows.csv", ["x0", "x1", "x2"], [[1, 2, 3], ["", 2, 3], [0, 0, 0]])
    result = cli("predict", tmp_path / "run" / "best.pt", rows)
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == "x0,x1,x2,y_pred"
    assert lines[2] == ",2,3,"  # the documented `data.missing: drop` case
    assert all(line.rsplit(",", 1)[1] for line in (lines[1], lines[3]))


# ---------------------------------------------------- predict output: all or nothing
@pytest.mark.parametrize(
    ("cell", "fragments"),
    [
        ("abc", ["not a number at line 180: 'abc'"]),
        ("3e38", ["not a finite number", "line 180"]),
    ],
)
def test_predict_to_stdout_writes_nothing_when_a_late_row_fails(
    cli, narrow, tmp_path, monkeypatch, cell, fragments
):
    monkeypatch.setattr(predicting, "CHUNK_ROWS", 50)  # the failure is three chunks in
    rows = [[0.001 * (i % 7), 0.5, 1.0] for i in range(200)]
    rows[178][0] = cell
    data = write_csv(tmp_path / "late.csv", ["x0", "x1", "y"], rows)
    bad_input(cli("predict", narrow, data), *fragments)


def test_predict_to_stdout_writes_everything_when_all_rows_succeed(cli, narrow, tmp_path, monkeypatch):
    monkeypatch.setattr(predicting, "CHUNK_ROWS", 50)
    rows = [[0.001 * (i % 7), 0.5, 1.0] for i in range(200)]
    result = cli("predict", narrow, write_csv(tmp_path / "fine.csv", ["x0", "x1", "y"], rows))
    assert result.code == 0, result
    assert len(result.stdout.splitlines()) == 201


# ------------------------------------------------------------- damaged metrics.csv
@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"\xff\xfe\x00e\x00p\x00o\x00c\x00h", ["not UTF-8 text"]),
        (b"a,b\n1,2\n", ["not a metrics.csv written by mse-train", "epoch, train_loss, lr"]),
        (b"epoch,train_loss,val_loss,lr\n1,0.5,,0.01\n2,0.4x,,0.01\n", ["line 3", "`train_loss` is '0.4x'"]),
        (b"epoch,train_loss,val_loss,lr\n1,0.5,,0.01\n2,0.4\n", ["line 3: 2 fields, the header has 4"]),
        (b"epoch,train_loss,val_loss,lr\n1,0.5,,0.01,9,9\n", ["line 2: 6 fields"]),
        (b"epoch,train_loss,val_loss,lr\nnan,0.5,,0.01\n", ["line 2", "`epoch` is 'nan'"]),
        (b"epoch,train_loss,val_loss,lr\n1,0.5,,\n", ["line 2", "`lr` is empty"]),
        (b'epoch,train_loss,val_loss,lr\n1,0.5,,0.01\n2,"0.4\n', ["line 3: 2 fields"]),
    ],
    ids=["not-utf8", "foreign", "not-a-number", "short-row", "long-row", "nan-epoch", "no-lr", "quote"],
)
def test_plot_on_a_damaged_metrics_csv(cli, tmp_path, content, fragments):
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "metrics.csv").write_bytes(content)
    bad_input(cli("plot", folder), str(folder / "metrics.csv"), *fragments)
    assert not (folder / "loss.png").exists()


def test_plot_on_a_fifo_metrics_csv(cli, tmp_path):
    folder = tmp_path / "piped"
    folder.mkdir()
    os.mkfifo(folder / "metrics.csv")
    bad_input(cli("plot", folder), "metrics.csv: is a FIFO (named pipe), not a regular file")


# --------------------------------------------------- cells over the csv module's limit
def test_a_long_cell_in_a_numeric_column_is_named(cli, tmp_path):
    header, values = linear_rows(20)
    rows: list[list[object]] = values.round(4).tolist()
    rows[9][1] = "z" * 200_000  # over csv's default 128 KiB field limit
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": {"train": str(write_csv(tmp_path / "t.csv", header, rows)), "target": "y"}},
    )
    result = cli("validate", cfg)
    bad_input(result, "column `x1`: mostly numbers", "line 11: 'zzzz", "(200000 characters)")
    assert len(result.stderr) < 2000  # the cell is quoted in part


def test_a_long_text_cell_on_the_slow_path(cli, tmp_path):
    rows: list[list[object]] = [[i, "abc" if i % 2 else "de", i * 2.0] for i in range(20)]
    rows[4][1] = "w" * 200_000  # a legitimate category, just long
    rows[14] = [14, "de"]  # a short row sends the read down the csv-module path
    data = write_csv(tmp_path / "t.csv", ["n", "kind", "y"], rows)
    cfg = write_config(tmp_path / "c.yaml", {"data": {"train": str(data), "target": "y"}})
    bad_input(cli("validate", cfg), "1 row(s) do not have 3 fields", "line 16: 2 fields")


# ------------------------------------------------------------ hand-edited checkpoints
def _set(ckpt: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split("/")
    node = ckpt
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


EDITS = [
    ("epoch", "3", "`epoch` must be a whole number >= 0, got '3'"),
    ("epoch", 2.5, "`epoch` must be a whole number"),
    ("config", "oops", "`config` must be a mapping"),
    ("config/data", [1], "`config.data` must be a mapping"),
    ("config/data/delimiter", "", "`config.data.delimiter` must be one character, got ''"),
    ("config/data/delimiter", ";;", "`config.data.delimiter` must be one character"),
    ("config/data/delimiter", 44, "`config.data.delimiter` must be one character, got 44"),
    (
        "preprocess/numeric/0/std",
        "1.0",
        "`preprocess.numeric[0].std` must be a finite number > 0 (in float32's range), got '1.0'",
    ),
    (
        "preprocess/numeric/0/std",
        0.0,
        "`preprocess.numeric[0].std` must be a finite number > 0 (in float32's range), got 0.0",
    ),
    ("preprocess/numeric/1/std", float("nan"), "`preprocess.numeric[1].std` must be a finite number > 0"),
    ("preprocess/numeric/0/mean", float("nan"), "`preprocess.numeric[0].mean` must be a finite number"),
    (
        "preprocess/numeric/0/mean",
        1e300,
        "`preprocess.numeric[0].mean` must be a finite number (in float32's",
    ),
    (
        "preprocess/numeric/0/std",
        1e-300,
        "`preprocess.numeric[0].std` must be a finite number > 0 (in float32",
    ),
    ("preprocess/targets/0/std", 1e300, "`preprocess.targets[0].std` must be a finite number > 0"),
    ("preprocess/targets/0/std", -1.0, "`preprocess.targets[0].std` must be a finite number > 0"),
    ("preprocess/features", [], "`preprocess.features` must be a non-empty list"),
    ("preprocess/targets", [], "`preprocess.targets` must be a non-empty list"),
    ("preprocess/missing", "sometimes", "`preprocess.missing` must be one of error, drop, mean, median"),
    ("preprocess/numeric", [], "must describe each feature"),
    ("preprocess", "x", "`preprocess` must be a mapping"),
    (
        "weights/weight",
        torch.ones(1, 3, dtype=torch.int64),
        "`weights.weight` must be a floating-point tensor",
    ),
    ("weights/bias", [0.5], "`weights.bias` must be a floating-point tensor, got list"),
    ("weights/weight", torch.full((1, 3), float("nan")), "`weights.weight` holds NaN or infinite values"),
    ("weights/weight", torch.zeros(1, 4), "`weights.weight` has shape [1, 4]; the model described"),
    ("weights/weight", torch.zeros(1, 3).to_sparse(), "`weights.weight` must be a dense tensor"),
    ("weights/weight", torch.empty(1, 3, device="meta"), "`weights.weight` must be a dense tensor"),
    (
        "weights/bias",
        torch.tensor(0.5),
        "`weights.bias` has shape []; the model described in `model` needs [1]",
    ),
    ("model/n_inputs", "3", "`model.n_inputs` must be a whole number >= 1, got '3'"),
    ("model/n_outputs", 2, "`model.n_outputs` is 2, but the stored preprocessing makes 1"),
    ("model/type", "conv", "`model.type` must be one of linear, mlp, resnet, tabm, got 'conv'"),
    ("model/type", ["mlp"], "`model.type` must be one of"),
    ("model/hidden", [8], "`model.hidden`: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), EDITS, ids=[f"{k}={v!r}"[:40] for k, v, _ in EDITS])
def test_a_hand_edited_checkpoint_is_refused_at_load(cli, trained, table, tmp_path, key, value, fragment):
    ckpt = torch.load(trained, weights_only=True)
    _set(ckpt, key, value)
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    for command in ("eval", "predict"):
        bad_input(cli(command, edited, table), str(edited), fragment)


def test_an_mlp_spec_with_wrong_types(cli, small_config, table, tmp_path):
    assert cli("run", small_config(model={"type": "mlp", "hidden": [4]}), "-q").code == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    ckpt["model"]["hidden"] = ["4"]
    ckpt["model"]["activation"] = "swish"
    torch.save(ckpt, tmp_path / "edited.pt")
    bad_input(
        cli("eval", tmp_path / "edited.pt", table),
        "`model.hidden.0`: Input should be a valid integer, got '4'",
        "`model.activation`: Input should be",
    )


def test_an_edited_last_pt_is_refused_on_resume(cli, small_config, tmp_path):
    cfg = small_config()
    assert cli("run", cfg, "-q").code == 0
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["epoch"] = -1
    torch.save(ckpt, last)
    result = cli("run", cfg, "-q", "--resume", "--set", "train.epochs=6")
    assert result.code == 2, result
    assert str(last) in result.stderr and "`epoch` must be a whole number >= 0, got -1" in result.stderr
    ckpt["epoch"] = 5
    ckpt["training"]["optimizer"] = 5
    torch.save(ckpt, last)
    result = cli("run", cfg, "-q", "--resume", "--set", "train.epochs=6")
    assert result.code == 2, result
    assert "last.pt: its training state does not fit" in result.stderr


# ------------------------------------------------------------------------ messages
def test_a_fifo_as_data_file_is_named_and_never_read(tmp_path):
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    cfg = write_config(tmp_path / "c.yaml", {"data": {"train": str(fifo), "target": "y"}})
    result = run_process("validate", cfg)  # a blocking open() would hang here (HANG_GUARD)
    assert result.returncode == 2, result
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in result.stderr
    assert "empty" not in result.stderr


def test_a_fifo_as_eval_input_or_checkpoint(cli, trained, table, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    bad_input(cli("eval", trained, fifo), "pipe: is a FIFO (named pipe), not a regular file")
    bad_input(cli("predict", trained, fifo), "pipe: is a FIFO (named pipe), not a regular file")
    bad_input(cli("eval", fifo, table), "pipe: is a FIFO (named pipe), not a regular file")


def test_an_unterminated_quote_names_the_line_it_starts_on(cli, trained, tmp_path):
    rows = [[i, i + 1, i + 2, i * 2] for i in range(8)]
    data = write_csv(tmp_path / "q.csv", ["x0", "x1", "x2", "y"], rows)
    lines = data.read_text().splitlines()
    lines[4] = lines[4].replace("3,", '"3,', 1)  # line 5 opens a quote that never closes
    data.write_text("\n".join(lines) + "\n")
    fragments = [f"{data}, line 5: a quoted cell that starts on this line is never closed"]
    cfg = write_config(tmp_path / "c.yaml", {"data": {"train": str(data), "target": "y"}})
    bad_input(cli("validate", cfg), *fragments)
    bad_input(cli("eval", trained, data), *fragments)
    bad_input(cli("predict", trained, data), *fragments)


def test_a_quoted_cell_over_several_lines_is_fine(cli, tmp_path):
    data = tmp_path / "multi.csv"
    data.write_text('kind,x,y\n"a\nb",1,2\nc,2,4\n"a\nb",3,6\nc,4,8\n')
    cfg = write_config(tmp_path / "c.yaml", {"data": {"train": str(data), "target": "y"}})
    result = cli("validate", cfg)
    assert result.code == 0, result


def _rare_in_validation(n: int, rare: int, fraction: float, want_val: bool) -> int:
    """A seed whose shuffle puts row `rare` in the validation (or training) part."""
    n_val = round(n * fraction)
    for seed in range(1000):
        in_val = rare in np.random.default_rng(seed).permutation(n)[n - n_val :]
        if in_val == want_val:
            return seed
    raise AssertionError("no such seed")


def test_a_category_only_in_the_validation_split_says_so(cli, tmp_path):
    rows = [["a" if i % 2 else "b", i, 2.0 * i] for i in range(20)]
    rows[7][0] = "rare"
    data = write_csv(tmp_path / "cats.csv", ["kind", "x", "y"], rows)

    def config(seed: int) -> Path:
        return write_config(
            tmp_path / "c.yaml",
            {"seed": seed, "data": {"train": str(data), "target": "y", "val_fraction": 0.25}},
        )

    result = cli("validate", config(_rare_in_validation(20, 7, 0.25, want_val=True)))
    bad_input(result, "column `kind`: 'rare' only in 1 row(s) that fell in the validation split (line(s) 9)")
    assert "never saw" not in result.stderr
    assert "change `seed`" in result.stderr and "data.unknown_category: ignore" in result.stderr
    assert cli("validate", config(_rare_in_validation(20, 7, 0.25, want_val=False))).code == 0


def test_resume_accepts_the_same_data_at_a_new_path(cli, small_config, table, tmp_path):
    cfg = small_config()
    assert cli("run", cfg, "-q").code == 0
    moved = tmp_path / "elsewhere" / "table.csv"
    moved.parent.mkdir()
    shutil.copy(table, moved)
    table.unlink()
    resumed = cli("run", cfg, "-q", "--resume", "--set", f"data.train={moved}", "--set", "train.epochs=7")
    assert resumed.code == 0, resumed
    assert "sha256" not in resumed.stderr


def test_resume_with_other_data_at_a_new_path_names_both(cli, small_config, table, tmp_path):
    cfg = small_config()
    assert cli("run", cfg, "-q").code == 0
    other = tmp_path / "other.csv"
    other.write_text(table.read_text() + "0,0,0,0\n")
    result = cli("run", cfg, "-q", "--resume", "--set", f"data.train={other}", "--set", "train.epochs=7")
    bad_input(result, f"`data.train`: {other} holds other data than {table}, which the run was trained on")


def test_a_column_whose_spread_underflows_float32_is_treated_as_constant(cli, tmp_path):
    """Cells of 1e-45 and 5e-324 have a spread float32 cannot divide by: not a divergence."""
    table = write_csv(
        tmp_path / "t.csv",
        ["a", "b", "y"],
        [[-692604, -1.4013e-45, -572095], [247083, -4.94066e-324, 901404], [1000, 0.0, 3000]],
    )
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {"data": {"train": str(table), "target": "y"}, "train": {"epochs": 3}, "output": {"plot": False}},
    )
    result = cli("run", cfg, "-q")
    assert result.code == 0, result
    assert "diverged" not in result.stderr
