"""The sweep `init` writes: a conditional space whose trials all pack, a time limit that
cuts packs in flight cleanly, and progress on stderr from the first second."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console

from mse_train.cli import console as view
from mse_train.config import load, yamlio
from mse_train.config.schema import SweepRange
from mse_train.selection import space, worker
from mse_train.training.stack import why_alone

from conftest import (
    HANG_GUARD,
    leaderboard,
    run_process,
    start_process,
    sweep_config,
    sweep_study,
    write_config,
)

# A choice with keys of its own: linear trials with one learning-rate range, MLP trials with
# widths and another range, both with Adam in batches (so a base config's L-BFGS never trains).
BRANCHES = {
    "model.type": {
        "linear": {"optimizer.lr": {"low": 0.01, "high": 0.3, "log": True}},
        "mlp": {"model.hidden": [[4], [8, 8]], "optimizer.lr": {"low": 0.001, "high": 0.01, "log": True}},
    },
    "optimizer.name": ["adam"],
    "train.batch_size": [32],
}


# ------------------------------------------------------------------ the space
def test_a_choice_with_keys_of_its_own_lists_each_branch_with_its_keys_only():
    the_space = space.Space({"a": {"x": {"b": [1, 2]}, "y": None}, "c": [True, False]}, "grid")
    assert the_space.grid() == [
        {"a": "x", "b": 1, "c": True},
        {"a": "x", "b": 1, "c": False},
        {"a": "x", "b": 2, "c": True},
        {"a": "x", "b": 2, "c": False},
        {"a": "y", "c": True},
        {"a": "y", "c": False},
    ]
    assert the_space.grid_size() == 6
    assert the_space.keys() == ["a", "b", "c"]
    assert the_space.decode({"a": "y", "c": False}) == {"a": "y", "c": False}
    p, q = SweepRange(low=0.1, high=0.5), SweepRange(low=1, high=2)
    ranged = space.Space({"m": {"p": {"lr": p}, "q": {"lr": q}}})
    assert list(ranged.combinations()) == [
        {"m": "p", "lr": 0.1},
        {"m": "p", "lr": 0.5},
        {"m": "q", "lr": 1},
        {"m": "q", "lr": 2},
    ]


def test_a_conditional_sweep_trains_each_trial_with_its_branchs_keys(cli, table, tmp_path):

    base = {"model": {"type": "linear"}, "optimizer": {"name": "lbfgs", "lr": 1.0}}
    sweep = {"method": "random", "trials": 8, "folds": 2, "refit": False, "params": BRANCHES}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 3, "batch_size": None}, **base)
    result = cli("sweep", cfg, "--json")
    assert result.code == 0, result
    assert "one at a time" not in result.stderr  # the trials' Adam packs, though the base's L-BFGS does not
    rows = leaderboard(tmp_path / "run-sweep")
    assert {r["model.type"] for r in rows} == {"linear", "mlp"}  # seed 0 draws both
    for row in rows:
        lr = float(row["optimizer.lr"])
        if row["model.type"] == "linear":
            assert row["model.hidden"] == "" and 0.01 <= lr <= 0.3
        else:
            assert row["model.hidden"] in ("[4]", "[8, 8]") and 0.001 <= lr <= 0.01
    study = sweep_study(tmp_path / "run-sweep")
    for trial in study.get_trials():  # Optuna holds only the keys of the trial's branch
        assert ("model.hidden" in trial.params) == (trial.params["model.type"] == "mlp")


@pytest.mark.parametrize(
    ("params", "anchor", "words"),
    [
        ({"model.type": {"linear": None, "mlp": 3}}, "mlp: 3", "`sweep.params.model.type.mlp` must be a"),
        (
            {"model.type": {"linear": {"optimizer.lr": {"low": 0.1}}}},
            "low: 0.1",
            "`sweep.params.model.type.linear.optimizer.lr.high` is required",
        ),
        (
            {"optimizer.lr": [0.1], "model.type": {"mlp": {"optimizer.lr": [0.2]}}},
            "- 0.2",
            "`optimizer.lr` is searched for every trial with `model.type: mlp` already",
        ),
        (
            {"model.type": {"linear": {"model.hidden": [[4]]}, "mlp": {"model.hidden": [[8]]}}},
            "- - 8",
            "`model.hidden` is also searched at ",
        ),
        (
            {"model.type": {"linear": {"train.epochs": [2]}, "mlp": {"train.epochs": {"low": 2, "high": 3}}}},
            "low: 2",
            "as a list there and a range here",
        ),
        ({"model.type": {"mlp": {"model.type": ["linear"]}}}, "- linear", "`model.type` is searched for"),
        ({"model.type": {"mlp": {"sweep.trials": [2]}}}, "- 2", "`sweep.trials` cannot be searched"),
        ({"model.type": {"linaer": None}}, None, "linaer"),  # not a model type: named before any training
    ],
)
def test_bad_conditional_params_are_named_with_their_line(cli, table, tmp_path, params, anchor, words):
    cfg = sweep_config(tmp_path, table, {"method": "random", "trials": 2, "params": params})
    lines = cfg.read_text().splitlines()
    for command in ("sweep", "validate"):
        result = cli(command, cfg)
        assert result.code == 2, result
        assert words in result.stderr, result.stderr
        if anchor is not None:  # the line that holds the bad value (or its first line)
            at = next(i for i, line in enumerate(lines, start=1) if line.strip().startswith(anchor))
            assert f"line {at}: " in result.stderr or f"line {at - 1}: " in result.stderr, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run-sweep" / "sweep.journal").exists()


def test_the_config_reference_still_lists_a_ranges_keys():
    from mse_train.config import reference

    text = reference.render()
    for key in ("low", "high", "log", "step", "integer"):
        assert f"| `sweep.params.KEY.{key}` |" in text


# ------------------------------------------------------------- init's sweep
def _init(cli: Any, tmp_path: Path, table: Path) -> Path:
    config = tmp_path / "config.yaml"
    result = cli("init", table, "--target", "y", "-o", config)
    assert result.code == 0, result
    return config


def _linear_starter(cli: Any, tmp_path: Path, table: Path) -> Path:
    """init's own config for `table` (a noisy linear one): the linear starter, L-BFGS on
    every row at once."""
    config = _init(cli, tmp_path, table)
    data = yaml.safe_load(config.read_text())
    assert data["model"] == {"type": "linear"} and data["optimizer"]["name"] == "lbfgs"
    assert data["data"]["val_fraction"] == 0.0
    return config


def test_every_trial_of_inits_sweep_trains_packed_whatever_the_starter(cli, table, tmp_path):
    mlp = tmp_path / "mlp.yaml"
    assert cli("init", table, "--target", "y", "-o", mlp, "--quick").code == 0
    linear = _linear_starter(cli, tmp_path, table)
    for path in (mlp, linear):
        text = path.read_text()
        assert "time_limit: " in text and "the whole sweep, the refit of the winner included" in text
        assert yaml.safe_load(text)["sweep"]["ensemble"] == 0  # nothing bagged: the best trial alone
        doc = yamlio.read(path)
        cfg = load(path)
        assert cfg.sweep is not None and cfg.sweep.time_limit is not None
        the_space = space.space_of(cfg.sweep, doc, cfg.sweep.method)
        built = 0
        for values in the_space.combinations():  # every choice, each range's ends
            trial = space.trial_config(doc, path.parent, [], values, "t")[0]
            assert why_alone(trial) is None, (values, why_alone(trial))
            # Adam in batches: validation rows to stop early, the MLP starter's epochs
            assert trial.data.val_fraction == 0.2 and trial.train.epochs == 200
            assert trial.train.early_stopping is not None and trial.train.early_stopping.patience == 20
            built += 1
        assert built >= 8 and {v["model.type"] for v in the_space.combinations()} == {"linear", "mlp"}


@pytest.mark.parametrize("folds", ["2", "0"])  # 0: scored on the validation rows the trials hold out
def test_inits_sweep_runs_packed_from_a_linear_starter_and_refits_on_every_row(cli, table, tmp_path, folds):
    linear = _linear_starter(cli, tmp_path, table)
    result = cli("sweep", linear, "--trials", "3", "--folds", folds, "--json")
    assert result.code == 0, result
    assert "one at a time" not in result.stderr
    assert json.loads(result.stdout)["trials"] == 3
    rows = leaderboard(tmp_path / "runs" / "config-sweep")
    assert {row["data.val_fraction"] for row in rows} == {"0.2"}
    refit = tmp_path / "runs" / "config-sweep" / "best"
    summary = json.loads((refit / "summary.json").read_text())
    assert summary["rows"] == {"train": 200, "val": 0}  # the refit, like the starter, uses every row
    assert cli("predict", refit / "best.pt", table).code == 0


# ------------------------------------------------------------- time limit
@pytest.mark.parametrize("args", [(), ("--no-pack",)])
def test_a_time_limit_cuts_the_trials_in_flight_keeps_the_finished_and_refits(cli, table, tmp_path, args):
    import optuna

    # Two trials, one pack, neither improving on its first epoch by 1000: patience 1 stops one
    # at epoch 2; the other would train 100,000 epochs, so the time limit cuts it, in flight.
    sweep = {"method": "grid", "time_limit": 8, "params": {"train.early_stopping.patience": [1, 100_000]}}
    train = {"epochs": 100_000, "early_stopping": {"min_delta": 1000.0}}
    cfg = sweep_config(tmp_path, table, sweep, train=train)
    result = cli("sweep", cfg, "--json", *args)
    assert result.code == 0, result
    out = json.loads(result.stdout)
    rows = {r["train.early_stopping.patience"]: r for r in leaderboard(tmp_path / "run-sweep")}
    assert rows["1"]["status"] == "early_stopped" and rows["100000"]["status"] == "cut"
    assert rows["100000"]["score_mean"] != ""  # scored on its best epoch before the cut: nothing lost
    assert 2 < int(rows["100000"]["epochs"]) < 100_000
    assert out["best"]["trial"] == int(rows["1"]["trial"])  # the refit's is a finished trial
    assert Path(out["checkpoint"]).exists()
    assert "1 cut by sweep.time_limit" in result.stderr
    trials = sweep_study(tmp_path / "run-sweep").get_trials()
    states = {t.params["train.early_stopping.patience"]: t for t in trials}
    assert states[1].state == optuna.trial.TrialState.COMPLETE
    cut = states[100_000]
    assert cut.state == optuna.trial.TrialState.PRUNED
    assert "cut by sweep.time_limit" in cut.user_attrs[worker.RESULT]["reason"]
    before = leaderboard(tmp_path / "run-sweep")
    again = cli("sweep", cfg, "--resume", "--json", "--set", "sweep.time_limit=1000", *args)
    assert again.code == 0, again
    assert leaderboard(tmp_path / "run-sweep") == before  # nothing trained again
    assert len(sweep_study(tmp_path / "run-sweep").get_trials()) == 2


def test_a_time_limit_that_lets_no_trial_finish_refits_the_best_cut_one(cli, table, tmp_path):
    sweep = {"method": "random", "trials": 2, "time_limit": 10, "params": {"optimizer.lr": [0.01, 0.02]}}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 100_000})
    result = cli("sweep", cfg, "--json")
    assert result.code == 0, result
    assert {r["status"] for r in leaderboard(tmp_path / "run-sweep")} == {"cut"}
    assert "no trial finished within sweep.time_limit" in result.stderr
    assert Path(json.loads(result.stdout)["checkpoint"]).exists()


def test_the_time_limit_keeps_the_refits_time_so_a_costly_refit_cuts_the_search(
    cli, table, tmp_path, monkeypatch
):
    # A refit that would take a million seconds per epoch: the search must stop after the
    # first epoch it sees, not train its 40 epochs and then start a refit the limit cannot hold.
    from mse_train.selection import budget

    def very_slow(cfg: Any, prepared: Any, device: Any, copies: int = 1, pack: bool = True) -> float:
        return 1.0e6 / len(prepared.train)

    monkeypatch.setattr(budget, "seconds_per_row", very_slow)
    sweep = {"method": "grid", "time_limit": 3000, "params": {"optimizer.lr": [0.01, 0.02]}}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 40})
    result = cli("sweep", cfg, "--json")
    assert result.code == 0, result
    rows = leaderboard(tmp_path / "run-sweep")
    assert {r["status"] for r in rows} == {"cut"}
    assert all(int(r["epochs"]) < 40 for r in rows)
    assert re.search(r"s left for the refit \(it needs about \d+ s\)", result.stderr), result.stderr


def test_a_budget_reserves_the_refit_of_the_best_trial_or_of_one_in_flight():
    from mse_train.selection import budget

    plan = budget.Budget(time.time() + 100, read_seconds=2.0)
    plan.per_row["mlp"] = 0.001
    plan.best = plan.refit_seconds("mlp", 1000, 10)  # 10 epochs of 1,000 rows at 1 ms a row
    assert plan.best == pytest.approx(10.0)
    assert plan.reserve() == pytest.approx(budget.MARGIN * 10 + 2 + budget.WRITES)
    assert not plan.time_up()
    plan.live = 90.0  # a trial in flight whose refit would need more than is left
    assert plan.time_up()
    plan.members = 0  # no refit: only the sweep's own files
    assert plan.reserve() == budget.WRITES and not plan.time_up()
    assert budget.Budget(None).time_up() is False


def test_a_shape_is_timed_alone_on_a_few_batches(table, tmp_path):
    from mse_train.data import prepare
    from mse_train.selection import budget

    config = {
        "data": {"train": str(table), "target": "y"},
        "model": {"type": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"batch_size": 8},
    }
    cfg = load(write_config(tmp_path / "c.yaml", config))
    prepared = prepare.prepare(cfg.data, cfg.targets, cfg.seed)
    per_row = budget.seconds_per_row(cfg, prepared, torch.device("cpu"))
    assert 0 < per_row < 1
    wider = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"lr": 0.5})})
    assert budget.shape_key(wider) == budget.shape_key(cfg)  # a learning rate is not a shape
    # sweep.refit_seeds: the copies timed together, as the refit trains them (a stack), or
    # one alone times the copies where they would train one at a time
    assert budget.seconds_per_row(cfg, prepared, torch.device("cpu"), copies=3) > 0
    calls: list[int] = []
    real = budget.seconds_per_row

    def counted(*args: Any, **kwargs: Any) -> float:
        calls.append(kwargs.get("copies", args[3] if len(args) > 3 else 1))
        return real(*args, **kwargs)

    budget.seconds_per_row = counted  # type: ignore[assignment]
    try:
        alone = budget.seconds_per_row(cfg, prepared, torch.device("cpu"), copies=3, pack=False)
    finally:
        budget.seconds_per_row = real  # type: ignore[assignment]
    assert alone > 0 and calls == [3, 1]  # one model timed, then counted three times


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the sweep silences it too
def test_a_new_study_counts_its_time_from_the_commands_start(tmp_path):
    from mse_train.selection import storage, study

    where = storage.connect(None, tmp_path, 10)
    try:
        the_study, created = study.open_study(where, "s", False, False, {}, "x.yaml", [], started=1000.0)
        assert created and study.deadline(the_study, 300) == 1300.0
    finally:
        storage.close(where)


# --------------------------------------------------------------- progress
def test_progress_shows_on_stderr_before_the_first_trial_ends_and_json_stays_one_object(table, tmp_path):
    sweep = {"method": "grid", "refit": False, "params": {"optimizer.lr": [0.01, 0.02]}}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 300})
    process = start_process("sweep", cfg, "--json")
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("trial "):
            break
    # read on from the stream: communicate() would read the pipe past the lines readline() buffered
    with process:  # closes the pipes
        rest = process.stderr.read()
        assert process.stdout is not None
        stdout = process.stdout.read()
    assert process.wait(timeout=HANG_GUARD) == 0, rest
    first_trial = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    before = "".join(lines[:first_trial])
    assert before.startswith("sweep: 2 trials, each scored on its validation rows;"), before
    assert "no time limit" in before
    assert "pack of 2 trials starts, up to 300 epochs" in before
    assert "\x1b" not in "".join(lines) + rest  # not a terminal: plain lines, no control characters
    assert "search ended: 2 trials finished" in rest
    assert json.loads(stdout)["trials"] == 2 and stdout.count("\n") == 1


def test_on_a_terminal_progress_is_a_live_bar_with_trials_best_and_time_left():
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=160, highlight=False)  # as the CLI's
    progress = view.SweepProgress(terminal, quiet=False)
    plan = worker.Plan(4, 0, 5, 16, 60.0, time.time() + 60, Path("runs/x-sweep"))
    progress.begin(plan)
    progress.pack(2, 10, 100)
    progress.epoch(3, 100, 7, 10)
    progress.trial(1, 4, {"trial": 0, "score_mean": 0.25, "status": "completed", "seconds": 1.0})
    progress.end(1, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the bar's control sequences
    assert "\x1b[" in out.getvalue()  # a live display: redrawn in place
    assert "sweep: 4 trials, each 5-fold CV; asked 16 at a time" in text and "budget 60 s" in text
    assert "best 0.25" in text and "left" in text and "1/4" in text
    assert "search ended: 1 trial finished" in text
    assert progress.bar is None  # stopped, so the refit's own bar can start


# ------------------------------------------------- trials that do not pack, in processes
TABM = {"type": "tabm", "k": 2, "width": 8, "blocks": 1, "dropout": 0.2}  # dropout: no pack
ONE_THREAD = {**os.environ, "MSE_TRAIN_THREADS": "1"}  # where training/apart.py may fork


def test_trials_that_do_not_pack_train_their_folds_in_processes_with_the_same_scores(table, tmp_path):
    """TabM's folds train as torch modules: in processes side by side (`train.processes`),
    beside the sweep's heartbeat thread, with the scores of one at a time, bit for bit."""
    sweep = {"method": "grid", "folds": 2, "refit": False, "params": {"optimizer.lr": [0.01, 0.02]}}
    cfg = sweep_config(tmp_path, table, sweep, model=TABM, train={"epochs": 6})
    boards, said = {}, {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        args = ("sweep", cfg, "-o", out, "--set", f"train.processes={processes}")
        done = run_process(*args, env=ONE_THREAD)
        assert done.returncode == 0, done.stderr
        boards[processes] = [{k: v for k, v in r.items() if k != "seconds"} for r in leaderboard(out)]
        said[processes] = done.stderr
    assert boards[1] == boards[2] and len(boards[1]) == 2
    assert "1 trial (2 models) start in 2 processes side by side" in said[2]  # asked one at a time
    assert "processes side by side" not in said[1]
    assert "Traceback" not in said[2]


def test_a_time_limit_cuts_trials_training_in_processes_and_keeps_the_finished(table, tmp_path):
    """As one at a time (above): the trial with patience 1 ends, the other is cut in flight in
    its processes and scored on its best epoch so far."""
    sweep = {
        "method": "grid",
        "folds": 2,
        "time_limit": 8,
        "params": {"train.early_stopping.patience": [1, 100_000]},
    }
    train = {"epochs": 100_000, "early_stopping": {"min_delta": 1000.0}}
    cfg = sweep_config(tmp_path, table, sweep, model=TABM, train=train)
    done = run_process("sweep", cfg, "--json", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    assert "start in 2 processes side by side" in done.stderr
    rows = {r["train.early_stopping.patience"]: r for r in leaderboard(tmp_path / "run-sweep")}
    assert rows["1"]["status"] == "early_stopped" and rows["100000"]["status"] == "cut"
    assert rows["100000"]["score_mean"] != "" and 2 < int(rows["100000"]["epochs"]) < 100_000
    assert Path(json.loads(done.stdout)["checkpoint"]).exists()
