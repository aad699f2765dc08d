"""`mse-train cv` and `mse-train sweep`: folds, no leakage, the search, resume, bad input."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mse_train.config import load
from mse_train.data import folds, prepare

from conftest import (
    DATA,
    HANG_GUARD,
    leaderboard,
    linear_rows,
    run_process,
    start_process,
    sweep_config,
    sweep_study,
    write_config,
    write_csv,
)


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------ folds
@pytest.mark.parametrize(("n", "k"), [(10, 2), (10, 3), (103, 5), (7, 7)])
def test_folds_cover_every_row_once_with_sizes_within_one(n, k):
    splits = folds.kfold(n, k, seed=3)
    assert len(splits) == k
    held = np.concatenate([val for _, val in splits])
    assert sorted(held.tolist()) == list(range(n))
    sizes = [len(val) for _, val in splits]
    assert max(sizes) - min(sizes) <= 1
    for train, val in splits:
        assert not set(train.tolist()) & set(val.tolist())
        assert len(train) + len(val) == n
    again = folds.kfold(n, k, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(splits, folds.kfold(n, k, seed=4), strict=True))


def test_each_fold_learns_its_statistics_from_its_own_training_rows(tmp_path):
    """No leakage: means, stds, fill values and categories come from the fold's training rows."""
    rows = [[i, "A" if i < 10 else "B", float(i) if i % 7 else "", 2.0 * i] for i in range(40)]
    rows[3][1] = "rare"  # one row: in fold training rows or held out, never both
    data = write_csv(tmp_path / "t.csv", ["a", "c", "m", "y"], rows)
    cfg = load(
        write_config(
            tmp_path / "c.yaml",
            {"data": {"train": str(data), "target": "y", "missing": "mean", "unknown_category": "ignore"}},
        )
    )
    loaded = prepare.load_training(cfg.data, cfg.targets)
    frame = loaded.table.frame
    for i, (train_rows, test_rows) in enumerate(folds.kfold(40, 4, 0), start=1):
        prepared, held = prepare.fit_split(loaded, cfg.data, train_rows, test_rows, f"fold {i}", 0)
        pre = prepared.pre
        a, m = pre.numeric[0], pre.numeric[1]
        assert a.mean == pytest.approx(frame["a"].to_numpy()[train_rows].mean(), rel=1e-6)
        assert a.mean != pytest.approx(frame["a"].to_numpy().mean(), rel=1e-3)
        assert m.fill == pytest.approx(np.nanmean(frame["m"].to_numpy()[train_rows]), rel=1e-6)
        categories = pre.categorical[0].categories
        assert ("rare" in categories) == (3 in train_rows)
        assert len(prepared.train) == len(train_rows)
        assert held.y_true[:, 0].tolist() == frame["y"].to_numpy()[test_rows].tolist()


# ------------------------------------------------------------------------ cv
def test_cv_json_has_the_promised_shape_and_writes_its_files(cli, small_config, tmp_path):
    cfg = small_config(optimizer={"name": "lbfgs", "lr": 1.0}, train={"epochs": 3})
    result = cli("cv", cfg, "--folds", "4", "--json", "-o", tmp_path / "cv")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    assert out["folds"] == 4
    for metric in ("mse", "rmse", "mae", "r2"):
        assert set(out[metric]) == {"mean", "std"}
        values = [f[metric] for f in out["per_fold"]]
        assert out[metric]["mean"] == pytest.approx(np.mean(values))
        assert out[metric]["std"] == pytest.approx(np.std(values))
    assert sum(f["n"] for f in out["per_fold"]) == 200
    assert out["mse"]["mean"] < 0.05  # a linear table, noise 0.1: L-BFGS finds it
    assert json.loads((tmp_path / "cv" / "cv.json").read_text()) == out
    with open(tmp_path / "cv" / "cv.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["fold"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["mse"]) for r in rows] == [f["mse"] for f in out["per_fold"]]


def test_cv_writes_into_its_own_folder_beside_the_run_folder(cli, small_config, tmp_path):
    from mse_train.outputs import run_folder

    cfg = small_config(train={"epochs": 2})  # output.dir: tmp_path/run
    assert cli("run", cfg, "-q").code == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = cli("cv", cfg, "--folds", "2")
    assert result.code == 0, result
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # untouched
    assert {"cv.csv", "cv.json"} <= {p.name for p in (tmp_path / "run-cv").iterdir()}
    assert f"wrote {tmp_path / 'run-cv' / 'cv.csv'}" in result.stderr
    # The cv folder is held from the start: a second cv into it is refused before training.
    with run_folder.lock(tmp_path / "run-cv"):
        busy = cli("cv", cfg, "--folds", "2")
    assert busy.code == 2 and "another mse-train run is using this folder" in busy.stderr
    assert "fold 1/2" not in busy.stderr
    # A cv that fails writes nothing, not even the folder it would have made.
    failed = cli("cv", cfg, "--folds", "500", "-o", tmp_path / "failed")
    assert failed.code == 2 and not (tmp_path / "failed").exists()


def test_run_and_sweep_of_one_config_leave_each_other_s_files_alone(cli, small_config, tmp_path):
    lrs = {"optimizer.lr": [0.01, 0.1]}
    sweep = {"method": "grid", "folds": 0, "refit": True, "params": lrs}
    cfg = small_config(train={"epochs": 2}, data={"val_fraction": 0.25}, sweep=sweep)  # output.dir: run

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert cli("run", cfg, "-q").code == 0
    run, swept = tmp_path / "run", tmp_path / "run-sweep"
    ran = files(run)
    result = cli("sweep", cfg)
    assert result.code == 0, result
    assert files(run) == ran  # the sweep wrote nothing into the run folder
    assert {"leaderboard.csv", "best.yaml", "sweep.journal", "best/best.pt"} <= set(files(swept))
    assert f"wrote {swept / 'leaderboard.csv'}" in result.stderr
    assert load(swept / "best.yaml").output.dir == str(swept / "best")
    searched = files(swept)
    # the sweep lets go of its journal when it ends: no lock file left, no SQLite database made
    assert not {"sweep.journal.lock", "sweep.db"} & set(searched)
    assert cli("run", cfg, "-q", "--overwrite").code == 0
    assert files(swept) == searched  # nor the run into the sweep's folder
    assert len(leaderboard(swept)) == 2
    # -o names the sweep's folder itself.
    assert cli("sweep", cfg, "-q", "--set", "sweep.refit=false", "-o", tmp_path / "mine").code == 0
    assert len(leaderboard(tmp_path / "mine")) == 2 and files(swept) == searched


def test_cv_and_sweep_say_why_a_config_trains_one_model_at_a_time(cli, small_config, tmp_path):
    embedded = small_config(model={"type": "mlp", "hidden": [4], "dropout": 0.1})
    result = cli("cv", embedded, "--folds", "2", "-o", tmp_path / "cv")
    assert result.code == 0, result
    assert "not in one stack: model.dropout above 0" in result.stderr
    assert "the folds train in 2 processes side by side" in result.stderr or "one at a time" in result.stderr
    plain = small_config(model={"type": "mlp", "hidden": [4]})
    packed = cli("cv", plain, "--folds", "2", "-o", tmp_path / "p")
    assert packed.code == 0 and "one at a time" not in packed.stderr
    unpacked = cli("cv", embedded, "--folds", "2", "--no-pack", "-o", tmp_path / "n")
    assert unpacked.code == 0 and "one at a time" not in unpacked.stderr  # asked for, no note
    lrs = {"optimizer.lr": [0.01, 0.1]}
    sweep = {"method": "random", "trials": 2, "folds": 0, "refit": False, "params": lrs}
    swept = small_config(optimizer={"name": "rmsprop", "lr": 0.01}, data={"val_fraction": 0.25}, sweep=sweep)
    result = cli("sweep", swept, "-o", tmp_path / "s")
    assert result.code == 0, result
    assert "the sweep's trials train one at a time: optimizer.name rmsprop" in result.stderr


def test_cv_reports_each_target_with_several(cli, tmp_path):
    header, values = linear_rows(60, n_features=2)
    values = np.column_stack([values, values[:, -1] * 2 + 1])
    data = write_csv(tmp_path / "two.csv", [*header, "y2"], values.round(6).tolist())
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "data": {"train": str(data), "target": ["y", "y2"]},
            "train": {"epochs": 2},
            "output": {"plot": False},
        },
    )
    result = cli("cv", cfg, "-k", "3", "--json", "-o", tmp_path / "cv")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    fold = out["per_fold"][0]
    assert set(fold["targets"]) == {"y", "y2"}
    assert set(out["targets"]) == {"y", "y2"}
    y2 = [f["targets"]["y2"]["mse"] for f in out["per_fold"]]
    assert out["targets"]["y2"]["mse"]["mean"] == pytest.approx(np.mean(y2))
    header_line = (tmp_path / "cv" / "cv.csv").read_text().splitlines()[0]
    assert "mse_y2" in header_line


@pytest.mark.parametrize(("k", "words"), [("1", "at least 2"), ("500", "200 row")])
def test_cv_refuses_folds_that_cannot_be(cli, small_config, tmp_path, k, words):
    result = cli("cv", small_config(), "--folds", k, "-o", tmp_path / "cv")
    assert result.code == 2, result
    assert words in result.stderr
    assert not (tmp_path / "cv" / "cv.json").exists()


def test_cv_scores_the_held_out_fold_not_the_rows_that_chose_the_epoch(cli, tmp_path):
    """With val_fraction, each fold's best epoch is chosen on rows carved from its training
    rows; the held-out fold is only scored. The diabetes config says the fold sizes."""
    result = cli("cv", DATA.parent / "configs" / "diabetes.yaml", "-k", "5", "--json", "-o", tmp_path / "cv",
                 "--set", "train.epochs=5")  # fmt: skip
    assert result.code == 0, result
    out = strict_json(result.stdout)
    assert [f["n"] for f in out["per_fold"]] == [89, 89, 88, 88, 88]


# ------------------------------------------------------------------------ sweep
def test_a_grid_runs_every_combination_once(cli, table, tmp_path):
    params: dict[str, list[Any]] = {
        "optimizer.lr": [0.01, 0.1],
        "regularization.l2": [0.0, 0.001],
        "model.hidden": [[4], [8, 8]],
    }
    cfg = sweep_config(tmp_path, table, {"method": "grid", "refit": False, "params": params})
    result = cli("sweep", cfg, "--json")
    assert result.code == 0, result
    rows = leaderboard(tmp_path / "run-sweep")
    seen = {(float(r["optimizer.lr"]), float(r["regularization.l2"]), r["model.hidden"]) for r in rows}
    assert len(rows) == 8
    assert seen == {(a, b, json.dumps(c)) for a, b, c in itertools.product(*params.values())}
    out = strict_json(result.stdout)
    assert set(out) == {"best", "trials", "checkpoint"}
    assert set(out["best"]) == {"trial", "params", "score", "config"}
    assert out["trials"] == 8 and out["checkpoint"] is None
    scores = {int(r["trial"]): float(r["score_mean"]) for r in rows}
    assert out["best"]["score"] == min(scores.values()) == scores[out["best"]["trial"]]


def test_a_switched_choice_drops_the_keys_that_do_not_apply(cli, table, tmp_path):
    params = {"model.type": ["linear", "mlp"], "model.hidden": [[4], [8]], "optimizer.name": ["sgd", "adam"]}
    cfg = sweep_config(
        tmp_path,
        table,
        {"method": "grid", "refit": False, "params": params},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},  # momentum does not apply to adam
    )
    result = cli("sweep", cfg, "-q")
    assert result.code == 0, result
    rows = leaderboard(tmp_path / "run-sweep")
    assert len(rows) == 8
    assert all(r["model.hidden"] == "" for r in rows if r["model.type"] == "linear")
    assert all(r["model.hidden"] != "" for r in rows if r["model.type"] == "mlp")


def test_an_invalid_combination_is_refused_before_any_training(cli, table, tmp_path):
    params = {"optimizer.nesterov": [True, False], "optimizer.momentum": [0.0, 0.9]}
    cfg = sweep_config(
        tmp_path,
        table,
        {"method": "random", "trials": 3, "params": params},
        optimizer={"name": "sgd", "lr": 0.01},
    )
    result = cli("sweep", cfg)
    assert result.code == 2, result
    assert "optimizer.nesterov" in result.stderr and "momentum" in result.stderr
    assert not (tmp_path / "run-sweep" / "sweep.journal").exists()


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"optimizer.lr": {"low": 0.1, "high": 0.01}}, "above high"),
        ({"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log scale"),
        ({"output.dir": ["a", "b"]}, "cannot be searched"),
        ({"optimizer.lrr": [0.1]}, "optimizer.lrr"),
        ({"optimizer.lr": "fast"}, "sweep.params.optimizer.lr"),
    ],
)
def test_bad_sweep_params_are_named_with_their_line(cli, table, tmp_path, params, words):
    cfg = sweep_config(tmp_path, table, {"method": "tpe", "trials": 2, "params": params})
    result = cli("sweep", cfg)
    assert result.code == 2, result
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run-sweep" / "sweep.journal").exists()


def test_a_config_without_a_sweep_section_says_so(cli, small_config):
    result = cli("sweep", small_config())
    assert result.code == 2, result
    assert "no `sweep:` section" in result.stderr


def test_a_holdout_sweep_needs_validation_rows(cli, table, tmp_path):
    cfg = sweep_config(
        tmp_path, table, {"params": {"optimizer.lr": [0.1]}}, data={"train": str(table), "target": "y"}
    )
    result = cli("sweep", cfg)
    assert result.code == 2, result
    assert "sweep.folds" in result.stderr


@pytest.mark.parametrize("method", ["tpe", "random"])
def test_a_search_tries_the_config_it_was_started_from_first(cli, table, tmp_path, method):
    # lr 0.05 and hidden [8] are the config's; its l2 (0) is below the range, so its low end
    params = {
        "model.type": {"mlp": {"model.hidden": [[4], [8]]}, "linear": None},
        "optimizer.lr": {"low": 0.001, "high": 0.1, "log": True},
        "regularization.l2": {"low": 1.0e-5, "high": 0.01, "log": True},
    }
    sweep = {"method": method, "trials": 3, "refit": False, "params": params}
    result = cli("sweep", sweep_config(tmp_path, table, sweep))
    assert result.code == 0, result
    assert "the first trial is the config's own values" in result.stderr
    # and where it ranked, once the search ended
    ranked = r"trial 0, the config's own values, (scored best|ranked [23] of 3 finished)"
    assert re.search(ranked, result.stderr), result.stderr
    first = next(r for r in leaderboard(tmp_path / "run-sweep") if r["trial"] == "0")
    assert first["model.type"] == "mlp" and first["model.hidden"] == "[8]"
    assert float(first["optimizer.lr"]) == pytest.approx(0.05)
    assert float(first["regularization.l2"]) == pytest.approx(1.0e-5)
    # resumed, it is not queued again
    longer = cli("sweep", sweep_config(tmp_path, table, sweep), "-q", "--resume", "--trials", "5")
    assert longer.code == 0, longer
    rows = leaderboard(tmp_path / "run-sweep")
    assert len(rows) == 5 and sum(r["optimizer.lr"] == first["optimizer.lr"] for r in rows) == 1


def test_a_config_that_is_no_point_of_its_space_is_not_tried_first(cli, table, tmp_path):
    sweep = {"method": "tpe", "trials": 2, "refit": False, "params": {"optimizer.name": ["sgd"]}}
    result = cli("sweep", sweep_config(tmp_path, table, sweep))  # the config's optimizer is adam
    assert result.code == 0, result
    assert "own values" not in result.stderr


def test_the_same_config_and_seed_give_the_same_leaderboard(cli, table, tmp_path):
    lr = {"low": 0.001, "high": 0.1, "log": True}
    sweep = {"method": "tpe", "trials": 4, "folds": 2, "refit": False,
             "params": {"optimizer.lr": lr, "model.hidden": [[4], [8]]}}  # fmt: skip
    cfg = sweep_config(tmp_path, table, sweep)
    boards = []
    for name in ("a", "b"):
        result = cli("sweep", cfg, "-q", "-o", tmp_path / name)
        assert result.code == 0, result
        boards.append([{k: v for k, v in r.items() if k != "seconds"} for r in leaderboard(tmp_path / name)])
    assert boards[0] == boards[1]
    assert len({r["optimizer.lr"] for r in boards[0]}) == 4


def test_refit_trains_the_winner_into_best_and_best_yaml_runs_as_it_is(cli, table, tmp_path):
    cfg = sweep_config(
        tmp_path, table, {"method": "random", "trials": 2, "params": {"optimizer.lr": [0.01, 0.05]}}
    )
    result = cli("sweep", cfg, "--json")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    assert out["checkpoint"] == str(tmp_path / "run-sweep" / "best" / "best.pt")
    assert Path(out["checkpoint"]).exists()
    assert (tmp_path / "run-sweep" / "sweep.png").stat().st_size > 0
    checked = cli("validate", out["best"]["config"])
    assert checked.code == 0, checked
    scored = cli("eval", out["checkpoint"], table, "--json")
    assert scored.code == 0, scored


def test_the_sweeps_own_settings_can_be_set_on_the_command_line(cli, table, tmp_path):
    # a trial's config has no `sweep:` section; `--set sweep.KEY=...` must not bring one
    # back without its params (every trial was refused with "`sweep.params` is required")
    cfg = sweep_config(
        tmp_path, table, {"method": "random", "trials": 2, "params": {"optimizer.lr": [0.01, 0.05]}}
    )
    result = cli("sweep", cfg, "--set", "sweep.refit=false", "--set", "sweep.method=grid", "--json")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    assert out["checkpoint"] is None
    assert not (tmp_path / "run-sweep" / "best").exists()
    assert len(leaderboard(tmp_path / "run-sweep")) == 2


def test_an_interrupted_refit_is_redone_by_resume(cli, table, tmp_path, monkeypatch):
    """The refit is claimed in the study so that one worker of many does it; a refit that
    was interrupted gives its claim back, and `sweep --resume` refits the winner (before, it
    said another worker did, and best/ stayed without best.pt)."""
    from mse_train import recipe

    cfg = sweep_config(
        tmp_path, table, {"method": "random", "trials": 2, "params": {"optimizer.lr": [0.01, 0.05]}}
    )
    real = recipe.run

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # a Ctrl-C as the refit starts

    monkeypatch.setattr(recipe, "run", interrupted)
    stopped = cli("sweep", cfg, "-q")
    assert stopped.code == 130, stopped
    best = tmp_path / "run-sweep" / "best" / "best.pt"
    assert not best.exists()
    monkeypatch.setattr(recipe, "run", real)
    resumed = cli("sweep", cfg, "--resume")
    assert resumed.code == 0, resumed
    assert "another worker" not in resumed.stderr and best.exists()
    assert len(leaderboard(tmp_path / "run-sweep")) == 2  # no trial ran again
    again = cli("sweep", cfg, "--resume")  # the refit is done and claimed: not done twice
    assert again.code == 0 and f"is refitted already: {best}" in again.stderr, again


def test_a_sweep_folder_is_not_started_twice_and_resume_needs_one(cli, table, tmp_path):
    cfg = sweep_config(tmp_path, table, {"method": "random", "trials": 1, "refit": False,
                                         "params": {"optimizer.lr": [0.01]}})  # fmt: skip
    assert cli("sweep", cfg, "-q", "--resume", "-o", tmp_path / "none").code == 2
    assert cli("sweep", cfg, "-q").code == 0
    again = cli("sweep", cfg, "-q")
    assert again.code == 2 and "--resume" in again.stderr
    finished = cli("sweep", cfg, "-q", "--resume")
    assert finished.code == 0, finished
    assert len(leaderboard(tmp_path / "run-sweep")) == 1
    longer = cli("sweep", cfg, "-q", "--resume", "--trials", "3")
    assert longer.code == 0, longer
    assert len(leaderboard(tmp_path / "run-sweep")) == 3


def test_resume_refuses_a_changed_sweep_or_a_damaged_journal(cli, table, tmp_path):
    cfg = sweep_config(tmp_path, table, {"method": "random", "trials": 1, "refit": False,
                                         "params": {"optimizer.lr": [0.01]}})  # fmt: skip
    assert cli("sweep", cfg, "-q").code == 0
    changed = cli("sweep", cfg, "-q", "--resume", "--set", "optimizer.lr=0.2")
    assert changed.code == 2, changed
    assert "different config" in changed.stderr
    assert "optimizer.lr: 0.05 in the study, 0.2 now" in changed.stderr  # what differs, named
    journal = tmp_path / "run-sweep" / "sweep.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b'{"op_code": 5, "half a line\n' + b"".join(lines[1:]))
    damaged = cli("sweep", cfg, "-q", "--resume")
    assert damaged.code == 2, damaged
    assert f"{journal}: not a journal file mse-train can use, or a damaged one" in damaged.stderr
    assert "Traceback" not in damaged.stderr
    study_only = [line for line in lines if json.loads(line)["op_code"] in (0, 2, 3)]  # no trial
    journal.write_bytes(b"".join(study_only))  # a journal that lost the trial leaderboard.csv lists
    lost = cli("sweep", cfg, "-q", "--resume")
    assert lost.code == 2, lost
    assert "does not hold trial(s) 0" in lost.stderr
    for garbage in (b"not a journal at all\n", b"SQLite format 3\x00" + bytes(100), b'["op_code"]\n'):
        journal.write_bytes(garbage)
        refused = cli("sweep", cfg, "-q", "--resume")
        assert refused.code == 2, refused
        assert f"{journal}: not an Optuna journal file" in refused.stderr, refused.stderr


def test_an_interrupted_sweep_resumes_without_running_finished_trials_again(tmp_path):
    header, values = linear_rows(3000, n_features=4)
    table = write_csv(tmp_path / "big.csv", header, values.round(6).tolist())
    sweep = {"method": "grid", "refit": False,
             "params": {"optimizer.lr": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]}}  # fmt: skip
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 40, "batch_size": 16})
    process = start_process("sweep", cfg, "--no-pack")  # one trial at a time: some finish first
    deadline = time.monotonic() + HANG_GUARD
    assert process.stderr is not None
    for line in process.stderr:  # wait for the first finished trial
        if line.startswith("trial "):
            break
        assert time.monotonic() < deadline
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 130, err
    assert "--resume" in err
    before = leaderboard(tmp_path / "run-sweep")
    assert 1 <= len(before) < 6
    process = start_process("sweep", cfg, "--resume", "-q")  # the rest side by side
    _, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 0, err
    after = leaderboard(tmp_path / "run-sweep")
    assert len(after) == 6
    assert sorted(float(r["optimizer.lr"]) for r in after) == [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    by_trial = {r["trial"]: r for r in after}
    assert all(by_trial[r["trial"]] == r for r in before)  # finished trials were not run again


@pytest.mark.parametrize("name", ["diabetes_sweep.yaml", "penguins_sweep.yaml"])
def test_the_shipped_sweeps_run(cli, tmp_path, name):
    config = DATA.parent / "configs" / name
    result = cli("sweep", config, "--trials", "2", "--set", "train.epochs=2", "-o", tmp_path / "s", "--json")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    assert Path(out["checkpoint"]).exists()
    rows = leaderboard(tmp_path / "s")
    assert len(rows) == (9 if name.startswith("penguins") else 2)


def test_the_starter_config_sweeps_as_written(cli, table, tmp_path):
    config = tmp_path / "starter.yaml"
    assert cli("init", table, "--target", "y", "-o", config).code == 0
    result = cli("sweep", config, "--trials", "2", "--folds", "2", "--set", "train.epochs=2", "-q",
                 "-o", tmp_path / "s")  # fmt: skip
    assert result.code == 0, result
    assert len(leaderboard(tmp_path / "s")) == 2
    assert (tmp_path / "s" / "best" / "best.pt").exists()


def test_validate_checks_a_sweeps_trials_too(cli, table, tmp_path):
    params = {"optimizer.nesterov": [True], "optimizer.momentum": [0.0, 0.9]}
    cfg = sweep_config(tmp_path, table, {"params": params}, optimizer={"name": "sgd", "lr": 0.01})
    result = cli("validate", cfg)
    assert result.code == 2, result
    assert "optimizer.momentum=0.0" in result.stderr
    fine = sweep_config(tmp_path, table, {"params": {"optimizer.lr": {"low": 0.01, "high": 0.1}}})
    ok = cli("validate", fine)
    assert ok.code == 0, ok
    assert "2 trial config(s) checked" in ok.stderr


# ------------------------------------------------------------ packed == solo
PACKABLE = {
    "sgd-momentum-steplr-l1-l2": {
        "model": {"type": "mlp", "hidden": [16, 8], "activation": "tanh"},
        "init": {"scheme": "xavier_normal"},
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
        "scheduler": {"name": "step", "step_size": 5, "gamma": 0.5},
        "regularization": {"l1": 1e-4, "l2": 1e-3},
        "train": {"epochs": 30, "batch_size": 16, "early_stopping": {"patience": 4}},
    },
    "adamw-plateau-full-batch-sum": {
        "model": {"type": "mlp", "hidden": [32]},
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
        "scheduler": {"name": "plateau", "patience": 2},
        "loss": {"reduction": "sum"},
        "train": {"epochs": 25},
    },
    "linear-adam-no-validation": {
        "data": {"val_fraction": 0.0},
        "model": {"type": "linear"},
        "optimizer": {"name": "adam", "lr": 0.05, "weight_decay": 0.01},
        "train": {"epochs": 15, "batch_size": 32},
    },
    # each fold's bins come from its own training rows: the stack holds K sets of them
    "piecewise-embedding-sgd-l2": {
        "model": {"type": "mlp", "hidden": [16], "numeric_embedding": "piecewise_linear", "bins": 6},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "regularization": {"l2": 1e-3},
        "train": {"epochs": 15, "batch_size": 16},
    },
    "periodic-embedding-adamw-l1": {
        "model": {
            "type": "mlp",
            "hidden": [8],
            "numeric_embedding": "periodic",
            "frequencies": 4,
            "embedding_size": 4,
            "frequency_scale": 0.3,
        },
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "regularization": {"l1": 1e-4},
        "train": {"epochs": 10, "batch_size": 16},
    },
    "periodic-lite-embedding-tanh-sgd": {
        "model": {
            "type": "mlp",
            "hidden": [8],
            "activation": "tanh",
            "numeric_embedding": "periodic",
            "frequencies": 3,
            "embedding_size": 4,
            "periodic_lite": True,
        },
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.5},
        "train": {"epochs": 10, "batch_size": 32},
    },
    "piecewise-embedding-gelu-adam": {
        "model": {
            "type": "mlp",
            "hidden": [8, 8],
            "activation": "gelu",
            "numeric_embedding": "piecewise_linear",
        },
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 10, "batch_size": 32},
    },
}


@pytest.mark.parametrize("sections", PACKABLE.values(), ids=PACKABLE.keys())
def test_folds_trained_side_by_side_match_folds_trained_alone(cli, tmp_path, sections):
    header, values = linear_rows(150, n_features=3)
    table = write_csv(tmp_path / "t.csv", header, values.round(5).tolist())
    config: dict[str, Any] = {"seed": 3, "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
                              "output": {"plot": False}}  # fmt: skip
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    cfg = write_config(tmp_path / "c.yaml", config)
    results = []
    for extra in ([], ["--no-pack"]):
        result = cli("cv", cfg, "-k", "4", "--json", "-o", tmp_path / "cv", *extra)
        assert result.code == 0, result
        results.append(strict_json(result.stdout)["per_fold"])
    packed, alone = results
    for a, b in zip(packed, alone, strict=True):
        assert a["n"] == b["n"]
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-4), (packed, alone)


def test_sweep_trials_trained_side_by_side_match_trials_trained_alone(cli, table, tmp_path):
    params = {
        "optimizer.lr": [0.003, 0.03, 3.0],
        "optimizer.name": ["sgd", "adam"],
        "model.hidden": [[4], [8]],
    }
    sweep = {"method": "grid", "folds": 2, "refit": False, "params": params}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 6, "batch_size": 32})
    boards = []
    for name, extra in (("packed", []), ("alone", ["--no-pack"])):
        result = cli("sweep", cfg, "-q", "-o", tmp_path / name, *extra)
        assert result.code == 0, result
        boards.append({r["trial"]: r for r in leaderboard(tmp_path / name)})
    packed, alone = boards
    assert packed.keys() == alone.keys() and len(packed) == 12
    for trial, row in packed.items():
        other = alone[trial]
        assert (row["optimizer.lr"], row["optimizer.name"], row["model.hidden"]) == (
            other["optimizer.lr"], other["optimizer.name"], other["model.hidden"])  # fmt: skip
        assert row["status"] == other["status"], (row, other)
        assert row["epochs"] == other["epochs"]
        if row["score_mean"]:
            assert float(row["score_mean"]) == pytest.approx(float(other["score_mean"]), rel=1e-4)
    assert any(r["status"] == "diverged" for r in packed.values())  # lr 3.0 with sgd: frozen alone


def test_trials_that_differ_only_by_their_schedule_pack_with_each_its_own_lr(cli, table, tmp_path):
    """One Adam setting for every trial, but not one lr over time: no trial may follow another's."""
    params = {"scheduler.name": ["none", "cosine", "exponential"]}
    sweep = {"method": "grid", "folds": 0, "refit": False, "params": params}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 8, "batch_size": 16})
    scores = []
    for name, extra in (("packed", []), ("alone", ["--no-pack"])):
        result = cli("sweep", cfg, "-q", "-o", tmp_path / name, *extra)
        assert result.code == 0, result
        scores.append({r["trial"]: float(r["score_mean"]) for r in leaderboard(tmp_path / name)})
    assert scores[0].keys() == scores[1].keys() and len(scores[0]) == 3
    for trial, score in scores[0].items():
        assert score == pytest.approx(scores[1][trial], rel=1e-4)
    assert len(set(scores[0].values())) == 3  # the schedules did move the lrs apart


def test_a_trial_whose_data_fails_stops_the_sweep_and_leaves_nothing_to_resume(cli, table, tmp_path):
    params = {"data.features": [["x0", "x1"], ["x0", "nosuch"]]}
    cfg = sweep_config(tmp_path, table, {"method": "grid", "refit": False, "params": params})
    result = cli("sweep", cfg)
    assert result.code == 2, result
    assert "nosuch" in result.stderr and "in the sweep's trial with" in result.stderr
    assert not (tmp_path / "run-sweep" / "sweep.journal").exists()
    good = {"data.features": [["x0", "x1"], ["x0", "x2"]]}
    fixed = sweep_config(tmp_path, table, {"method": "grid", "refit": False, "params": good})
    again = cli("sweep", fixed, "-q")
    assert again.code == 0, again
    assert len(leaderboard(tmp_path / "run-sweep")) == 2


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu"])
def test_every_activation_packs_as_it_trains_alone(cli, table, tmp_path, activation):
    """The backward pass written out by hand (and autograd's, for GELU) gives solo's result."""
    config = {"seed": 1, "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
              "model": {"type": "mlp", "hidden": [8, 8], "activation": activation},
              "optimizer": {"name": "adam", "lr": 0.01}, "regularization": {"l1": 1e-4, "l2": 1e-3},
              "train": {"epochs": 8, "batch_size": 32}, "output": {"plot": False}}  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", config)
    folds = []
    for extra in ([], ["--no-pack"]):
        result = cli("cv", cfg, "-k", "3", "--json", "-o", tmp_path / "cv", *extra)
        assert result.code == 0, result
        folds.append([f["mse"] for f in strict_json(result.stdout)["per_fold"]])
    assert folds[0] == pytest.approx(folds[1], rel=1e-4)


# ------------------------------------------------------------------ resume that never repeats
@pytest.mark.parametrize("method", ["random", "tpe"])
def test_an_extended_sweep_searches_new_points_not_the_first_ones_again(cli, table, tmp_path, method):
    # Rebuilt from the config's seed, the sampler replayed its sequence: trials 3-5 were 0-2.
    lr = {"low": 0.001, "high": 0.1, "log": True}
    sweep = {"method": method, "trials": 3, "refit": False, "params": {"optimizer.lr": lr}}
    cfg = sweep_config(tmp_path, table, sweep)
    assert cli("sweep", cfg, "-q").code == 0
    longer = cli("sweep", cfg, "-q", "--resume", "--trials", "6")
    assert longer.code == 0, longer
    rows = leaderboard(tmp_path / "run-sweep")
    assert len(rows) == 6
    assert len({r["optimizer.lr"] for r in rows}) == 6  # as many points as a sweep of 6


def test_an_interrupted_random_sweep_resumes_with_as_many_distinct_points(tmp_path):
    header, values = linear_rows(2000, n_features=4)
    table = write_csv(tmp_path / "big.csv", header, values.round(6).tolist())
    lr = {"low": 0.001, "high": 0.01, "log": True}
    sweep = {"method": "random", "trials": 5, "refit": False, "params": {"optimizer.lr": lr}}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 30, "batch_size": 16})
    process = start_process("sweep", cfg, "--no-pack")
    assert process.stderr is not None
    for line in process.stderr:  # the first trial finished: the second is in flight
        if line.startswith("trial "):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    resumed = start_process("sweep", cfg, "--resume", "-q", "--no-pack")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    rows = leaderboard(tmp_path / "run-sweep")
    assert len(rows) == 5 and len({r["optimizer.lr"] for r in rows}) == 5


def test_resume_refuses_changed_data_naming_the_file(cli, table, tmp_path):
    sweep = {"method": "random", "trials": 1, "refit": False, "params": {"optimizer.lr": [0.01, 0.02]}}
    cfg = sweep_config(tmp_path, table, sweep)
    assert cli("sweep", cfg, "-q").code == 0
    with open(table, "a") as f:
        f.write("0.1,0.2,0.3,0.4\n")  # one row more
    changed = cli("sweep", cfg, "-q", "--resume", "--trials", "2")
    assert changed.code == 2, changed
    assert "data.train" in changed.stderr and "sha256" in changed.stderr
    assert len(leaderboard(tmp_path / "run-sweep")) == 1


def test_a_sweep_journal_that_is_a_folder_a_broken_link_or_unreadable_is_told_cleanly(cli, table, tmp_path):
    sweep = {"method": "random", "trials": 1, "refit": False, "params": {"optimizer.lr": [0.01]}}
    cfg = sweep_config(tmp_path, table, sweep)
    journal = tmp_path / "run-sweep" / "sweep.journal"
    journal.mkdir(parents=True)
    for args in ((), ("--resume",)):
        folder = cli("sweep", cfg, "-q", *args)
        assert folder.code == 2, folder
        assert f"{journal}: is a folder" in folder.stderr and "Traceback" not in folder.stderr
    journal.rmdir()
    journal.symlink_to(tmp_path / "gone.journal")
    broken = cli("sweep", cfg, "-q", "--resume")
    assert broken.code == 2, broken
    assert f"{journal}: is a broken link" in broken.stderr and "--output-dir" in broken.stderr
    journal.unlink()
    assert cli("sweep", cfg, "-q").code == 0
    if os.geteuid() != 0:  # root reads any file
        journal.chmod(0)
        unreadable = cli("sweep", cfg, "-q", "--resume", "--trials", "2")
        journal.chmod(0o644)
        assert unreadable.code == 2, unreadable
        assert f"{journal}: cannot read" in unreadable.stderr
    assert cli("sweep", cfg, "-q", "--resume", "--trials", "2").code == 0  # nothing was lost
    assert len(leaderboard(tmp_path / "run-sweep")) == 2


def test_the_refit_trains_the_epochs_its_folds_kept_as_best(cli, table, tmp_path):

    sweep = {"method": "random", "trials": 2, "folds": 2, "params": {"optimizer.lr": [0.2, 0.3]}}
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 60, "early_stopping": {"patience": 2}})
    result = cli("sweep", cfg, "--json")
    assert result.code == 0, result
    out = strict_json(result.stdout)
    trial = sweep_study(tmp_path / "run-sweep")
    best = next(t for t in trial.get_trials() if t.number == out["best"]["trial"])
    epochs = best.user_attrs["mse_train_result"]["best_epochs"]
    assert len(epochs) == 2 and max(epochs) < 60  # early stopped
    refit = load(Path(out["best"]["config"]))
    assert refit.train.epochs == max(1, round(sum(epochs) / 2))
    assert refit.data.val_fraction == 0


def test_a_time_limit_stops_asking_for_trials_and_keeps_what_finished(cli, table, tmp_path):
    lr = {"low": 0.001, "high": 0.1, "log": True}
    sweep = {
        "method": "random",
        "trials": 1000,
        "time_limit": 15,  # the whole command, a few seconds of it kept for writing the results
        "refit": False,
        "params": {"optimizer.lr": lr},
    }
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 2})
    result = cli("sweep", cfg, "--no-pack", "--json")
    assert result.code == 0, result
    assert "time_limit reached" in result.stderr
    rows = leaderboard(tmp_path / "run-sweep")
    assert 1 <= len(rows) < 1000 and strict_json(result.stdout)["trials"] == len(rows)
    assert (tmp_path / "run-sweep" / "best.yaml").exists()


@pytest.mark.parametrize(("pruner", "args", "trials"), [("median", (), 20), ("halving", ("--no-pack",), 8)])
def test_a_pruner_stops_lagging_trials_early_and_never_picks_one(cli, table, tmp_path, pruner, args, trials):

    lr = {"low": 1.0e-5, "high": 0.1, "log": True}
    sweep = {
        "method": "random",
        "trials": trials,
        "pruner": pruner,
        "refit": False,
        "params": {"optimizer.lr": lr},
    }
    cfg = sweep_config(tmp_path, table, sweep, train={"epochs": 30})
    result = cli("sweep", cfg, "--json", *args)
    assert result.code == 0, result
    rows = leaderboard(tmp_path / "run-sweep")
    assert len(rows) == trials
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert pruned and all(int(r["epochs"]) < 30 for r in pruned)  # frozen when pruned
    assert all(int(r["epochs"]) == 30 for r in rows if r["status"] == "completed")
    study = sweep_study(tmp_path / "run-sweep")
    states = {t.number: t.state for t in study.get_trials()}
    assert {int(r["trial"]) for r in pruned} == {n for n, s in states.items() if s.name == "PRUNED"}
    best = strict_json(result.stdout)["best"]["trial"]
    assert next(r for r in rows if int(r["trial"]) == best)["status"] == "completed"


def test_the_start_of_a_space_is_the_config_s_own_values_moved_into_its_ranges(tmp_path):
    from mse_train.config.schema import SweepRange
    from mse_train.selection.space import Space

    written = {
        "data": {"train": "t.csv", "target": "y"},
        "model": {"type": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "adam", "lr": 0.0125},
        "train": {"epochs": 7, "batch_size": 64},
    }
    cfg = load(write_config(tmp_path / "c.yaml", written))
    ranged = Space(
        {
            "optimizer.lr": SweepRange(low=0.01, high=0.1, step=0.01),  # 0.0125: the nearest step, 0.01
            "train.epochs": SweepRange(low=10, high=50, integer=True),  # 7: below, so 10
            "regularization.l2": SweepRange(low=1e-6, high=1e-2, log=True),  # 0: below, so 1e-6
            "model.type": {"mlp": {"model.hidden": [[64, 64], [256, 256]]}, "tabm": {"model.k": [8]}},
        }
    )
    start = ranged.start(cfg)
    assert start == {"optimizer.lr": pytest.approx(0.01), "train.epochs": 10,
                     "regularization.l2": 1e-6, "model.type": "mlp", "model.hidden": "[64, 64]"}  # fmt: skip
    assert isinstance(start["train.epochs"], int)
    assert ranged.decode(start)["model.hidden"] == [64, 64]
    # a value not among its choices, or a key this config's model does not have: no start
    assert Space({"train.batch_size": [128, 256]}).start(cfg) is None
    assert Space({"model.type": {"tabm": None}}).start(cfg) is None
    assert Space({"model.k": [8, 16]}).start(cfg) is None


def test_cv_folds_in_processes_score_as_folds_one_after_another(small_config, tmp_path):
    """Folds that do not stack (TabM with dropout) train in processes side by side
    (`train.processes`), each built and trained in one call as one after another: the
    same scores, to the last digit."""
    tabm = {"type": "tabm", "k": 2, "width": 8, "blocks": 1, "dropout": 0.2}
    cfg = small_config(model=tabm, data={"val_fraction": 0.25}, train={"epochs": 4})
    scores = {}
    for processes in (1, 2):
        done = run_process(
            "cv",
            cfg,
            "--folds",
            "3",
            "--json",
            "--set",
            f"train.processes={processes}",
            "-o",
            tmp_path / str(processes),
            env={**os.environ, "MSE_TRAIN_THREADS": "1"},  # a fresh process, one thread: it forks
        )
        assert done.returncode == 0, done.stderr
        said = "in 2 processes side by side" if processes == 2 else "one at a time"
        assert f"the folds train {said}, not in one stack" in done.stderr
        scores[processes] = json.loads(done.stdout)
    assert scores[1] == scores[2]
    assert len({row["mse"] for row in scores[2]["per_fold"]}) == 3
