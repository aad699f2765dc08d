"""The commands around `run`: config, validate, init, plot; TensorBoard; completion."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mse_train.config.schema import Config

from conftest import DATA, HANG_GUARD, linear_rows, read_metrics, write_config, write_csv

SECTIONS = set(Config.model_fields)  # seed, data, model, ..., output


def test_config_prints_the_resolved_config_with_overrides(cli, small_config):
    result = cli("config", small_config(), "--set", "optimizer.lr=0.5", "--set", "model=mlp")
    assert result.code == 0, result
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved) == SECTIONS
    assert resolved["optimizer"]["lr"] == 0.5 and resolved["model"]["hidden"] == [64, 64]
    assert Path(resolved["data"]["train"]).is_absolute()


def test_config_rejects_an_unknown_override(cli, small_config):
    result = cli("config", small_config(), "--set", "optimizer.momentun=0.9")
    assert result.code == 2 and "`optimizer.momentun`" in result.stderr


def test_validate_reports_columns_without_training(cli, tmp_path):
    table = write_csv(
        tmp_path / "t.csv",
        ["size", "cut", "price"],
        [[1.0, "Good", 3.0], [2.0, "Ideal", 5.0], [3.0, "Good", 6.5], [1.5, "Fair", 3.5]],
    )
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {"data": {"train": str(table), "target": "price"}, "output": {"dir": str(tmp_path / "run")}},
    )
    result = cli("validate", cfg)
    assert result.code == 0, result
    assert (
        "ok" in result.stdout and "categorical, 3 categories" in result.stdout and "numeric" in result.stdout
    )
    assert "4 training rows" in result.stdout
    assert not (tmp_path / "run").exists()


def test_validate_fails_like_run_does(cli, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("x,y\n1,2\n2\n")
    cfg = write_config(tmp_path / "cfg.yaml", {"data": {"train": str(table), "target": "y"}})
    validated = cli("validate", cfg)
    ran = cli("run", cfg)
    assert validated.code == ran.code == 2
    assert validated.stderr == ran.stderr and "line 3: 1 field" in validated.stderr


def test_init_writes_a_starter_config_that_validates_and_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    table = write_csv(
        tmp_path / "data" / "shop.csv",
        ["size", "cut", "price"],
        [[i * 0.1, ["Good", "Ideal", "Fair"][i % 3], i * 0.3 + (i % 3)] for i in range(40)],
    )
    result = cli("init", table, "--target", "price", "-o", "starter.yaml")
    assert result.code == 0, result
    text = (tmp_path / "starter.yaml").read_text()
    assert text.count("#") > 20  # commented
    parsed = yaml.safe_load(text)
    assert set(parsed) == SECTIONS
    assert parsed["data"]["train"] == "data/shop.csv"
    assert parsed["data"]["features"] == ["size", "cut"] and parsed["data"]["categorical"] == ["cut"]
    assert cli("validate", "starter.yaml").code == 0
    ran = cli("run", "starter.yaml", "-q", "--set", "train.epochs=2", "--set", "output.plot=false")
    assert ran.code == 0, ran
    assert (tmp_path / "runs" / "starter" / "best.pt").is_file()
    again = cli("init", table, "--target", "price", "-o", "starter.yaml")
    assert again.code == 2 and "already exists" in again.stderr
    assert cli("init", table, "-t", "price", "-o", "starter.yaml", "--force").code == 0


def test_init_with_a_missing_target(cli, tmp_path):
    table = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2]])
    result = cli("init", table, "--target", "c", "-o", tmp_path / "c.yaml")
    assert result.code == 2 and "`c` (target) is not a column" in result.stderr
    assert not (tmp_path / "c.yaml").exists()


def test_every_run_writes_loss_png(cli, small_config, tmp_path):
    assert cli("run", small_config(output={"plot": True}, data={"val_fraction": 0.2}), "-q").code == 0
    with Image.open(tmp_path / "run" / "loss.png") as image:
        assert image.format == "PNG" and image.size == (800, 500)


def test_plot_one_run_and_compare_several(cli, small_config, tmp_path, monkeypatch):
    assert cli("run", small_config(), "-q", "-o", tmp_path / "a").code == 0
    assert cli("run", small_config(), "-q", "-o", tmp_path / "b", "--set", "optimizer.lr=0.01").code == 0
    assert not (tmp_path / "a" / "loss.png").exists()  # small_config turns the plot off
    assert cli("plot", tmp_path / "a").code == 0
    with Image.open(tmp_path / "a" / "loss.png") as image:
        assert image.size == (800, 500)
    monkeypatch.chdir(tmp_path)
    assert cli("plot", tmp_path / "a", tmp_path / "b").code == 0
    with Image.open(tmp_path / "compare.png") as image:
        assert image.size == (800, 500)
    assert cli("plot", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "ab.png").code == 0
    assert (tmp_path / "ab.png").stat().st_size > 1000
    missing = cli("plot", tmp_path / "nowhere")
    assert missing.code == 2 and "no metrics.csv" in missing.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)
@pytest.mark.parametrize("bags", [1, 3])  # a bagged run logs the bags' mean curve, as metrics.csv holds it
def test_tensorboard_scalars(cli, small_config, tmp_path, bags):
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    train_section = {"epochs": 4, "bags": bags}
    cfg = small_config(output={"tensorboard": True}, data={"val_fraction": 0.2}, train=train_section)
    assert cli("run", cfg, "-q").code == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/train", "loss/val", "lr"} <= set(tags)
    train = [e.value for e in events.Scalars("loss/train")]
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert train == pytest.approx([float(r["train_loss"]) for r in rows])


def test_tensorboard_missing_is_a_clear_error(cli, small_config, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    result = cli("run", small_config(output={"tensorboard": True}))
    assert result.code == 2
    assert "pip install 'mse-train[tensorboard]'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_shell_completion_is_offered(cli):
    assert "--install-completion" in cli("--help").stdout


def test_linear_example_validates(cli):
    from conftest import CONFIGS

    result = cli("validate", CONFIGS / "linear.yaml")
    assert result.code == 0 and "3 training rows" in result.stdout
    assert (DATA / "linear.csv").is_file()


def test_init_on_a_table_with_empty_cells_fills_them(cli, tmp_path):
    out = tmp_path / "penguins.yaml"
    assert cli("init", DATA / "penguins.csv", "-t", "body_mass_g", "-o", out).code == 0
    parsed = yaml.safe_load(out.read_text())
    assert parsed["data"]["missing"] == "mean"
    assert parsed["data"]["categorical"] == ["island", "sex", "species"]
    result = cli("validate", out)
    assert result.code == 0, result
    assert "dropped 2 row(s) with an empty target" in result.stdout


def test_the_summary_line_names_only_the_files_written(cli, small_config, tmp_path):
    plain = cli("run", small_config(), "-o", tmp_path / "a")  # small_config turns the plot off
    assert plain.code == 0, plain
    line = next(x for x in plain.stdout.splitlines() if x.startswith("wrote "))
    assert "best.pt" in line and "summary.json" in line and "loss.png" not in line
    plotted = cli("run", small_config(output={"plot": True}), "-o", tmp_path / "b")
    assert "loss.png" in next(x for x in plotted.stdout.splitlines() if x.startswith("wrote "))


def test_predict_into_a_pipe_closed_early_stops_quietly(cli, small_config, tmp_path):
    import subprocess
    import sys

    assert cli("run", small_config(), "-q").code == 0
    header, values = linear_rows(20_000)
    big = write_csv(tmp_path / "big.csv", header, values.round(4).tolist())
    exe, ckpt = Path(sys.executable).with_name("mse-train"), tmp_path / "run" / "best.pt"
    piped = subprocess.run(
        ["bash", "-c", f"set -o pipefail; '{exe}' predict '{ckpt}' '{big}' | head -1"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert piped.returncode == 141, piped  # 128 + SIGPIPE, as any writer cut off by `head`
    assert piped.stderr == "" and piped.stdout == "x0,x1,x2,y,y_pred\n"


@pytest.mark.parametrize("command", ["eval", "cv"])
def test_a_table_printed_into_a_pipe_closed_early_stops_quietly_with_141(
    cli, small_config, tmp_path, command
):
    """eval's and cv's tables go through rich, whose own broken-pipe handling exits 1: they
    end as `predict` does, 141 and nothing on stderr but their progress."""
    import subprocess
    import sys

    cfg = small_config()
    assert cli("run", cfg, "-q").code == 0
    exe, ckpt = Path(sys.executable).with_name("mse-train"), tmp_path / "run" / "best.pt"
    header, values = linear_rows(200)
    table = write_csv(tmp_path / "t.csv", header, values.round(4).tolist())
    args = f"eval '{ckpt}' '{table}'" if command == "eval" else f"cv '{cfg}' -o '{tmp_path / 'cv'}'"
    piped = subprocess.run(  # the reader closes its end before anything is written
        ["bash", "-c", f"set -o pipefail; '{exe}' {args} | (exec 0<&-; sleep 1)"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert piped.returncode == 141, piped
    assert "Traceback" not in piped.stderr and "Exception ignored" not in piped.stderr, piped.stderr
    assert "error" not in piped.stderr, piped.stderr  # cv's fold lines are its progress, as ever
