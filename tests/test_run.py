"""`mse-train run` and `eval` end to end, as a user runs them."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, DATA, linear_rows, read_json, read_metrics, run_process, write_config, write_csv


def test_article_example_learns_y_equals_2x(cli, tmp_path):
    out = tmp_path / "linear"
    result = cli("run", CONFIGS / "linear.yaml", "--output-dir", out)
    assert result.code == 0, result
    scored = cli("eval", out / "best.pt", DATA / "linear.csv", "--json")
    assert scored.code == 0, scored
    metrics = json.loads(scored.stdout)
    assert metrics["mse"] < 1e-3
    assert metrics["n"] == 3
    weights = torch.load(out / "best.pt", weights_only=True)["weights"]
    assert abs(weights["weight"].item() - 2.0) < 0.05
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 500


def test_article_steplr_setting_stalls_as_documented(cli, tmp_path):
    out = tmp_path / "steplr"
    assert cli("run", CONFIGS / "linear_steplr.yaml", "--output-dir", out, "-q").code == 0
    rows = read_metrics(out / "metrics.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == lrs[9] == 0.01  # StepLR: 10x smaller every 10 epochs
    assert math.isclose(lrs[10], 1e-3) and math.isclose(lrs[20], 1e-4)
    assert float(rows[-1]["train_loss"]) > 0.1  # and the fit never gets there


def test_run_writes_every_output(cli, small_config, tmp_path):
    cfg = small_config(data={"val_fraction": 0.25}, train={"epochs": 7})
    result = cli("run", cfg)
    assert result.code == 0, result
    out = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,val_loss,train_end_loss,lr")
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 8))
    assert all(r["val_loss"] != "" for r in rows)
    summary = read_json(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["epochs_run"] == 7
    best_val = min(float(r["val_loss"]) for r in rows)
    assert summary["best"]["val_loss"] == best_val
    assert summary["best"]["epoch"] == next(int(r["epoch"]) for r in rows if float(r["val_loss"]) == best_val)
    assert {"torch", "mse_train", "python"} <= set(summary["versions"])
    assert summary["wall_seconds"] > 0
    assert summary["rows"] == {"train": 150, "val": 50}
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best"]["epoch"]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 7


def test_checkpoint_describes_itself(cli, small_config, tmp_path):
    assert cli("run", small_config(), "-q").code == 0
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["model"]["type"] == "linear"
    assert ckpt["model"]["n_inputs"] == 3
    assert ckpt["preprocess"]["features"] == ["x0", "x1", "x2"]
    assert [t["name"] for t in ckpt["preprocess"]["targets"]] == ["y"]
    assert all("mean" in c and "std" in c for c in ckpt["preprocess"]["numeric"])
    training = ckpt["training"]
    assert {"optimizer", "scheduler", "progress", "rng", "history"} <= set(training)
    assert training["progress"]["epoch"] == 5
    assert {"torch", "shuffle", "numpy", "python"} <= set(training["rng"])


def test_no_validation_leaves_val_loss_empty_and_best_follows_train_end_loss(cli, small_config, tmp_path):
    assert cli("run", small_config(), "-q").code == 0
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert all(r["val_loss"] == "" for r in rows)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    losses = [float(r["train_end_loss"]) for r in rows]
    assert best["epoch"] == losses.index(min(losses)) + 1


@pytest.mark.parametrize("val", [False, True], ids=["no-validation", "validation"])
@pytest.mark.parametrize("batch_size", [None, 16], ids=["full-batch", "mini-batch"])
def test_the_best_loss_reported_is_the_loss_of_the_weights_in_best_pt(
    cli, small_config, table, tmp_path, val, batch_size
):
    """An lr too large for SGD: the loss jumps around, so an off-by-one best is plain to see."""
    cfg = small_config(
        data={"standardize": False, **({"val": str(table)} if val else {})},
        optimizer={"name": "sgd", "lr": 0.1},
        train={"epochs": 6, "batch_size": batch_size},
    )
    assert cli("run", cfg, "-q").code in (0, 1)
    summary = read_json(tmp_path / "run" / "summary.json")
    watched = summary["best"]["watched"]
    assert watched == ("val_loss" if val else "train_end_loss")
    scored = json.loads(cli("eval", tmp_path / "run" / "best.pt", table, "--json").stdout)
    # standardize: false, so the loss is in the target's units; both are the MSE on `table`
    assert scored["mse"] == pytest.approx(summary["best"][watched], rel=1e-4)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert float(rows[summary["best"]["epoch"] - 1][watched]) == summary["best"][watched]


def test_a_loss_that_explodes_but_stays_finite_is_divergence(cli, tmp_path):
    """Summed loss over many rows at lr 0.01 grows by orders of magnitude each epoch.

    In four epochs it reaches ~6e32, still finite: this used to end "completed", exit 0.
    """
    header, values = linear_rows(2000)
    table = write_csv(tmp_path / "big.csv", header, (values * 10).round(4).tolist())
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(table), "target": "y", "standardize": False},
            "loss": {"reduction": "sum"},
            "optimizer": {"name": "sgd", "lr": 0.01},
            "train": {"epochs": 4},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        },
    )
    result = cli("run", cfg, "-q")
    assert result.code == 1, result
    assert "diverged" in result.stderr and "grew to" in result.stderr and "epoch 1" in result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "diverged"
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert all(float(r["train_end_loss"]) < 1e6 * float(rows[0]["train_end_loss"]) for r in rows)


def test_same_config_and_seed_give_identical_losses(cli, small_config, tmp_path):
    cfg = small_config(
        data={"val_fraction": 0.2},
        model={"type": "mlp", "hidden": [8], "dropout": 0.2},
        train={"epochs": 4, "batch_size": 16},
    )
    assert cli("run", cfg, "-q", "-o", tmp_path / "a").code == 0
    assert cli("run", cfg, "-q", "-o", tmp_path / "b").code == 0
    a, b = read_metrics(tmp_path / "a" / "metrics.csv"), read_metrics(tmp_path / "b" / "metrics.csv")
    assert [(r["train_loss"], r["val_loss"]) for r in a] == [(r["train_loss"], r["val_loss"]) for r in b]
    assert cli("run", cfg, "-q", "-o", tmp_path / "c", "--set", "seed=1").code == 0
    c = read_metrics(tmp_path / "c" / "metrics.csv")
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in c]


def test_resolved_config_reruns_the_same_run(cli, small_config, tmp_path):
    cfg = small_config(model="mlp", train={"epochs": 3, "batch_size": 50})
    assert cli("run", cfg, "-q").code == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["optimizer"] == {
        "name": "adam",
        "lr": 0.05,
        "betas": [0.9, 0.999],
        "eps": 1e-08,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    assert resolved["model"]["hidden"] == [64, 64]
    assert Path(resolved["data"]["train"]).is_absolute()
    again = shutil.copy(tmp_path / "run" / "config.yaml", tmp_path / "again.yaml")
    assert cli("run", again, "-q", "-o", tmp_path / "rerun").code == 0
    first = read_metrics(tmp_path / "run" / "metrics.csv")
    second = read_metrics(tmp_path / "rerun" / "metrics.csv")
    assert [r["train_loss"] for r in first] == [r["train_loss"] for r in second]


def test_paths_are_relative_to_the_config_folder(cli, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    shutil.copy(DATA / "linear.csv", folder / "data" / "points.csv")
    write_config(
        folder / "cfg.yaml",
        {
            "data": {"train": "data/points.csv", "target": "y", "standardize": False},
            "train": {"epochs": 2},
            "output": {"dir": "out", "plot": False},
        },
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli("run", folder / "cfg.yaml", "-q").code == 0
    assert (folder / "out" / "last.pt").is_file()
    assert not (elsewhere / "out").exists()


def test_eval_reads_columns_by_name_in_any_order(cli, small_config, table, tmp_path):
    assert cli("run", small_config(), "-q").code == 0
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    order = [3, 2, 0, 1]  # y, x2, x0, x1
    shuffled = [",".join(["note", *[header[i] for i in order]])]
    for line in lines[1:]:
        cells = line.split(",")
        shuffled.append(",".join(["hello", *[cells[i] for i in order]]))
    (tmp_path / "shuffled.csv").write_text("\n".join(shuffled) + "\n")
    a = json.loads(cli("eval", tmp_path / "run" / "best.pt", table, "--json").stdout)
    b = json.loads(cli("eval", tmp_path / "run" / "best.pt", tmp_path / "shuffled.csv", "--json").stdout)
    assert a == b
    assert set(a) == {"mse", "rmse", "mae", "r2", "n", "drift"} and a["drift"] == []
    assert math.isclose(a["rmse"], math.sqrt(a["mse"]))


def test_eval_table_shows_every_metric(cli, small_config, table, tmp_path):
    assert cli("run", small_config(), "-q").code == 0
    result = cli("eval", tmp_path / "run" / "best.pt", table)
    assert result.code == 0
    for word in ("MSE", "RMSE", "MAE", "R²", "200"):
        assert word in result.stdout


def test_validation_file(cli, small_config, tmp_path):
    header, _ = ["x0", "x1", "x2", "y"], None
    write_csv(tmp_path / "val.csv", header, [[0.1, 0.2, 0.3, 1.0], [1, 2, 3, 4], [0, 0, 0, 0.5]])
    assert cli("run", small_config(data={"val": str(tmp_path / "val.csv")}), "-q").code == 0
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["rows"] == {"train": 200, "val": 3}
    assert summary["best"]["watched"] == "val_loss"


def test_existing_run_is_never_clobbered(cli, small_config, tmp_path):
    cfg = small_config()
    assert cli("run", cfg, "-q").code == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    again = cli("run", cfg, "-q")
    assert again.code == 2
    assert (
        "already holds a run" in again.stderr and "--resume" in again.stderr and "--overwrite" in again.stderr
    )
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert cli("run", cfg, "-q", "--overwrite", "--set", "train.epochs=2").code == 0
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 2


def test_progress_lines_when_not_a_terminal_and_quiet(cli, small_config):
    result = cli("run", small_config(train={"epochs": 30}))
    assert result.code == 0
    # Progress on stderr, as in cv and sweep; stdout holds only the result, the summary.
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/30") and lines[-1].startswith("epoch 30/30")
    assert 2 < len(lines) < 30  # now and then, not every epoch
    assert "\x1b[" not in result.stderr  # no bar, no escape codes
    assert "training on" not in result.stdout and "epoch 1/30" not in result.stdout
    assert result.stdout.startswith("completed: 30 epochs")
    quiet = cli("run", small_config(train={"epochs": 30}), "-q", "--overwrite")
    assert quiet.code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_run_json_prints_only_the_summary(cli, small_config):
    result = cli("run", small_config(), "--json")
    assert result.code == 0
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"


def test_help_and_version(cli):
    for args in (["--help"], ["run", "--help"], ["eval", "--help"], ["predict", "--help"]):
        result = cli(*args)
        assert result.code == 0, args
        assert "Usage" in result.stdout
    version = cli("--version")
    assert version.code == 0 and version.stdout.startswith("mse-train ")


def test_help_shows_no_value_after_a_flag(cli):
    """A flag takes no value, so no command's help shows one after it (`--resume <bool>`)."""
    import typer

    from mse_train.cli import app

    group = typer.main.get_command(app)
    names = sorted(group.commands)  # type: ignore[attr-defined]
    assert {"run", "cv", "sweep", "eval", "predict"} <= set(names)
    for args in ([], *([name] for name in names)):
        result = cli(*args, "--help")
        assert result.code == 0, args
        assert "<bool>" not in result.stdout, (args, result.stdout)
        assert "--help" in result.stdout
    # Options that do take a value still say what it is.
    assert "<path>" in cli("run", "--help").stdout and "KEY=VALUE" in cli("run", "--help").stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from mse_train.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


# The optional extras a plain `run` never needs: each costs start-up time (optuna + sqlalchemy
# alone took 2.2 s of a small sweep's 8.8 s, issue 23). pyarrow is not here: pandas imports it.
NOT_ON_THE_RUN_PATH = ("optuna", "sqlalchemy", "mlflow", "onnx", "onnxruntime", "tensorboard")


@pytest.mark.parametrize(("command", "written"), [(["run"], "best.pt"), (["cv", "--folds", "2"], "cv.json")])
def test_a_plain_run_does_not_import_the_optional_extras(tmp_path, command, written):
    code = (
        "import sys\n"
        "from mse_train.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"print(sorted(m for m in {NOT_ON_THE_RUN_PATH!r} if m in sys.modules))"
    )
    args = [*command, CONFIGS / "linear.yaml", "--set", "train.epochs=1", "-o", tmp_path / "out"]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / written).exists()
    assert done.stdout.strip().splitlines()[-1] == "[]"


STACKED_MLP = (  # an MLP with Adam and a schedule: trained by the stack, as init's MLP starter is
    "model={type: mlp, hidden: [4]}",
    "optimizer={name: adam, lr: 0.01}",
    "scheduler={name: step, step_size: 1, gamma: 0.5}",
)


MODULE_TABM = (  # TabM with dropout and Adam: trained as a torch module, stepped by torch.optim
    "model={type: tabm, k: 4, width: 8, blocks: 1, dropout: 0.1}",
    "optimizer={name: adam, lr: 0.01}",
)
MODULE_RESNET = ("model={type: resnet, width: 8, dropout: 0.1}", "optimizer={name: rmsprop, lr: 0.01}")


@pytest.mark.parametrize(
    ("command", "sets"),
    [
        (["run"], ()),
        (["run"], STACKED_MLP),
        (["cv", "--folds", "2"], STACKED_MLP),
        (["run"], MODULE_TABM),
        (["run"], MODULE_RESNET),
    ],
    ids=["sgd", "adam-steplr", "cv", "tabm-adam", "resnet-rmsprop"],
)
def test_a_run_does_not_import_torch_dynamo(tmp_path, command, sets):
    """torch.optim's first optimizer imports torch._dynamo (1.7 s of a 4 s run here) unless
    training/optimizers.py's `_eager_only` says the process compiles nothing, and so does
    every `Optimizer.step` unless `optimizers.step` calls the optimizer's own step; a model
    built on the meta device for its footprint must not draw values there (sympy, then
    torch._dynamo). Then a resume (load_state_dict)."""
    code = (
        "import sys\n"
        "from mse_train.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('torch._dynamo' in sys.modules or 'sympy' in sys.modules)"
    )
    out = tmp_path / "out"

    def args(epochs: int) -> list[str]:
        sets_ = [part for value in (f"train.epochs={epochs}", *sets) for part in ("--set", value)]
        return [*command, str(CONFIGS / "linear.yaml"), *sets_, "-o", str(out)]

    done = subprocess.run([sys.executable, "-c", code, *args(3)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "lr_scheduler.step()" not in done.stderr  # the stack's scheduler steps without torch's warning
    if command == ["run"]:
        again = subprocess.run(
            [sys.executable, "-c", code, *args(5), "--resume"], capture_output=True, text=True
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == "False"
        assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 5


def test_a_run_without_loss_png_does_not_import_matplotlib(tmp_path):
    """matplotlib (~0.3-1 s of imports) is loaded to draw loss.png, after training, and only then."""
    code = (
        "import sys\n"
        "from mse_train.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('matplotlib' in sys.modules)"
    )
    out = tmp_path / "out"
    args = ["run", CONFIGS / "linear.yaml", "--set", "train.epochs=1", "--set", "output.plot=false"]
    args += ["-o", out]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "best.pt").exists() and not (out / "loss.png").exists()
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_python_dash_m_entry_point(tmp_path):
    result = run_process("--version")
    assert result.returncode == 0 and result.stdout.startswith("mse-train ")


def test_progress_bar_on_a_terminal():
    import io

    from rich.console import Console

    from mse_train.cli.console import Progress
    from mse_train.recipe import RunInfo
    from mse_train.training.records import EpochRecord

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    progress = Progress(console, quiet=False)
    progress.start(
        RunInfo(
            out="runs/x",
            device="cpu",
            rows=10,
            val_rows=2,
            inputs=3,
            targets=["y"],
            epochs=4,
            from_epoch=0,
            threads=1,
        )
    )
    assert progress.bar is not None
    for epoch in range(1, 5):
        progress.epoch(EpochRecord(epoch, 1.0 / epoch, 2.0 / epoch, None, 0.01, None, 0.1), 4)
    progress.finish()
    text = buffer.getvalue()
    assert "4/4" in text and "train 0.25" in text and "val 0.5" in text and "lr 0.01" in text


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: x.csv}\n")
    plain = run_process("run", bad)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = run_process("run", bad, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_divergence_in_the_first_epoch_promises_no_best_pt(cli, small_config, tmp_path):
    result = cli("run", small_config(optimizer={"name": "sgd", "lr": 1.0e30}), "-q")
    assert result.code == 1, result
    assert "diverged at epoch 1" in result.stderr and "there is no best.pt" in result.stderr
    assert not (tmp_path / "run" / "best.pt").exists()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 0


def test_resume_from_a_best_pt_copied_over_last_pt_says_what_it_lacks(cli, small_config, tmp_path):
    """A checkpoint without training state is named for what it is, with the fix."""
    cfg = small_config()
    assert cli("run", cfg, "-q").code == 0
    shutil.copyfile(tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt")
    result = cli("run", cfg, "--resume", "-q")
    assert result.code == 2, result
    assert "holds no training state" in result.stderr and "best.pt (kind 'best')" in result.stderr
    assert "--overwrite" in result.stderr and "Traceback" not in result.stderr
