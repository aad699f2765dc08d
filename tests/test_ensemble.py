"""A sweep's ensemble: greedy selection over out-of-fold predictions, its one checkpoint, and
the out-of-fold files it trusts only when they check out."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mse_train.selection import ensemble

from conftest import write_config, write_csv


# ------------------------------------------------------------------ the greedy selection
def test_greedy_selection_adds_the_trial_that_lowers_the_mean_s_error_most():
    y = np.array([[1.0], [-1.0]])
    a = np.array([[1.2], [-0.8]])  # MSE 0.04: the best alone
    b = np.array([[0.7], [-1.3]])  # MSE 0.09, but its errors cancel a's
    c = np.array([[3.0], [3.0]])  # never helps
    counts = ensemble.greedy(np.stack([a, b, c]), y, 3)
    # step 1: a alone; step 2: (a + b) / 2 (MSE 0.0025) beats a twice; step 3: (2a + b) / 3
    assert counts == [2, 1, 0]
    assert ensemble.greedy(np.stack([a, b, c]), y, 1) == [1, 0, 0]


def test_greedy_selection_breaks_ties_towards_the_lower_trial_and_repeats_itself():
    y = np.zeros((4, 1))
    plus, minus, far = np.ones((4, 1)), -np.ones((4, 1)), np.full((4, 1), 2.0)
    # step 1: +1 and -1 tie (the first wins); 2: -1 cancels it; 3: tie again; 4: -1
    assert ensemble.greedy(np.stack([plus, minus, far]), y, 4) == [2, 2, 0]
    assert ensemble.greedy(np.stack([minus, plus, far]), y, 3) == [2, 1, 0]


def test_greedy_selection_weighs_rows_by_their_sample_weights():
    """With data.weight the sweep scores trials by weighted MSE; the ensemble picks by it too."""
    y = np.zeros((2, 1))
    first, second = np.array([[0.0], [1.0]]), np.array([[1.0], [0.0]])  # each right on one row
    both = np.stack([first, second])
    assert ensemble.greedy(both, y, 1) == [1, 0]  # a tie: the lower trial
    assert ensemble.greedy(both, y, 1, np.array([1.0, 10.0])) == [0, 1]
    assert ensemble.greedy(both, y, 1, np.array([10.0, 1.0])) == [1, 0]


# ------------------------------------------------------------------ a sweep with an ensemble
def _table(tmp_path: Path) -> Path:
    """A curved target: linear models and MLPs of different widths err differently."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(160, 2))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.05 * rng.normal(size=160)
    rows = np.column_stack([x, y]).round(5).tolist()
    cats = ["a" if i % 3 else "b" for i in range(160)]
    return write_csv(
        tmp_path / "t.csv",
        ["x0", "x1", "c", "y"],
        [[*r[:2], k, r[2]] for r, k in zip(rows, cats, strict=True)],
    )


def _config(tmp_path: Path, table: Path, **sweep: Any) -> Path:
    config = {
        "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.02},
        "train": {"epochs": 6, "batch_size": 32},
        "output": {"dir": str(tmp_path / "run"), "plot": False},
        "sweep": {
            "method": "grid",
            "folds": 3,
            "ensemble": 6,
            "params": {"model.hidden": [[4], [16], [32, 32]], "optimizer.lr": [0.01, 0.05]},
            **sweep,
        },
    }
    return write_config(tmp_path / "sweep.yaml", config)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One sweep with an ensemble (refit), shared by the tests that use its checkpoint."""
    from typer.testing import CliRunner

    from mse_train.cli import app

    tmp_path = tmp_path_factory.mktemp("ensemble")
    table = _table(tmp_path)
    cfg = _config(tmp_path, table)
    out = tmp_path / "sw"
    result = CliRunner().invoke(app, ["sweep", str(cfg), "-o", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return {"out": out, "table": table, "json": json.loads(result.stdout), "stderr": result.stderr}


def test_a_sweep_with_an_ensemble_writes_one_checkpoint_of_its_chosen_trials(swept):
    found, out = swept["json"], swept["out"]
    chosen = found["ensemble"]
    assert found["checkpoint"] == str(out / "ensemble" / "best.pt")
    assert chosen["steps"] == 6 and sum(m["count"] for m in chosen["members"]) == 6
    assert len(chosen["members"]) >= 2, chosen  # a mix, not the winner alone
    assert sum(m["weight"] for m in chosen["members"]) == pytest.approx(1.0)
    # greedy from the empty set: its first pick is the best single trial, so it ends no worse
    assert chosen["oof_mse"] <= chosen["best_trial"]["oof_mse"]
    assert chosen["best_trial"]["trial"] == found["best"]["trial"]
    assert json.loads((out / "ensemble.json").read_text())["members"] == chosen["members"]
    assert not (out / "best").exists()  # the ensemble is the refit
    for name in (f"sweep-{t}.npy" for t in range(6)):
        assert (out / "oof" / name).is_file()


def test_the_ensemble_predicts_the_weighted_mean_of_its_members_trained_alone(swept, cli, tmp_path):
    out, table = swept["out"], swept["table"]
    trained = json.loads((out / "ensemble" / "ensemble.json").read_text())["trained"]
    mixed = _predictions(cli, out / "ensemble" / "best.pt", table, tmp_path / "mix.csv")
    alone = np.zeros_like(mixed)
    for member in trained:
        config = member["config"]
        config["output"]["dir"] = str(tmp_path / f"m{member['trial']}")
        path = write_config(tmp_path / f"m{member['trial']}.yaml", config)
        assert cli("run", path).code == 0
        predicted = _predictions(cli, tmp_path / f"m{member['trial']}" / "best.pt", table, tmp_path / "p.csv")
        alone += member["weight"] * predicted
    np.testing.assert_allclose(mixed, alone, rtol=1e-4, atol=1e-5)


def _predictions(cli: Any, ckpt: Path, table: Path, out: Path) -> np.ndarray:
    result = cli("predict", ckpt, table, "-o", out)
    assert result.code == 0, result
    with open(out, newline="") as f:
        return np.array([float(row["y_pred"]) for row in csv.DictReader(f)])


def test_every_command_that_takes_a_checkpoint_takes_the_ensemble(swept, cli, tmp_path):
    ckpt, table = swept["out"] / "ensemble" / "best.pt", swept["table"]
    report = json.loads(cli("eval", ckpt, table, "--json", "--interval", "0.8").stdout)
    assert report["mse"] < 0.5
    assert 0.6 <= report["interval"]["coverage"] <= 1.0
    result = cli("predict", ckpt, table, "--interval", "0.9", "-o", tmp_path / "p.csv")
    assert result.code == 0, result
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["y_lo"]) <= float(r["y_pred"]) <= float(r["y_hi"]) for r in rows)
    assert cli("explain", ckpt, table, "--json").code == 0
    exported = cli("export", ckpt, "-o", tmp_path / "m.onnx", "--check", table)
    assert exported.code == 0, exported
    drifted = write_csv(tmp_path / "far.csv", ["x0", "x1", "c", "y"], [[50.0, 0.0, "a", 1.0]])
    assert "x0" in cli("predict", ckpt, drifted).stderr  # the training profile travels with it


def test_an_edited_ensemble_checkpoint_is_refused(swept, cli, tmp_path):
    ckpt = torch.load(swept["out"] / "ensemble" / "best.pt", weights_only=True)
    ckpt["model"]["weights"] = [0.9] * len(ckpt["model"]["weights"])
    torch.save(ckpt, tmp_path / "edited.pt")
    result = cli("eval", tmp_path / "edited.pt", swept["table"])
    assert result.code == 2
    assert "`model.weights` must hold one weight in (0, 1] per member, summing to 1" in result.stderr


# ------------------------------------------------------------------ the out-of-fold files
def test_an_edited_out_of_fold_file_is_refused_and_a_missing_one_left_out(cli, tmp_path):
    table = _table(tmp_path)
    cfg = _config(tmp_path, table, refit=False, params={"optimizer.lr": [0.01, 0.03, 0.1]})
    out = tmp_path / "sw"
    first = cli("sweep", cfg, "-o", out, "--json")
    assert first.code == 0, first
    assert json.loads(first.stdout)["checkpoint"] is None
    best = json.loads(first.stdout)["best"]["trial"]
    other = next(t for t in range(3) if t != best)
    edited = out / "oof" / f"sweep-{other}.npy"
    values = np.load(edited)
    np.save(edited, values + 1.0)
    result = cli("sweep", cfg, "-o", out, "--report")
    assert result.code == 2
    assert f"{edited}: trial {other}'s out-of-fold predictions do not check out" in result.stderr
    assert "delete it to leave trial" in result.stderr
    assert "Traceback" not in result.stderr
    edited.unlink()
    again = cli("sweep", cfg, "-o", out, "--report", "--json")
    assert again.code == 0, again
    assert f"trial(s) {other} left out of the ensemble" in again.stderr
    assert json.loads(again.stdout)["ensemble"]["candidates"] == 2


def test_a_finished_sweep_without_an_ensemble_can_be_given_one_afterwards(cli, tmp_path):
    cfg = _config(tmp_path, _table(tmp_path), ensemble=0, refit=False, params={"optimizer.lr": [0.01, 0.05]})
    out = tmp_path / "sw"
    first = cli("sweep", cfg, "-o", out, "--json")
    assert first.code == 0, first
    assert "ensemble" not in json.loads(first.stdout)
    later = cli("sweep", cfg, "-o", out, "--report", "--json", "--set", "sweep.ensemble=3")
    assert later.code == 0, later
    chosen = json.loads(later.stdout)["ensemble"]
    assert chosen["steps"] == 3 and chosen["candidates"] == 2
    shown = cli("sweep", cfg, "-o", out, "--report", "--set", "sweep.ensemble=3")
    mix = ", ".join(f"{m['trial']} ({m['count']}/3)" for m in chosen["members"])
    said = f"ensemble: trial {mix}; out-of-fold MSE {chosen['oof_mse']:.6g}, best single trial"
    assert said in shown.stderr


def test_an_ensemble_of_more_trials_than_fit_in_memory_chooses_among_the_best_that_fit(
    cli, tmp_path, monkeypatch
):
    from mse_train.selection import oof

    cfg = _config(tmp_path, _table(tmp_path), ensemble=0, refit=False)
    out = tmp_path / "sw"
    assert cli("sweep", cfg, "-o", out).code == 0  # the grid's 6 trials
    with open(out / "leaderboard.csv", newline="") as f:
        scores = {int(r["trial"]): float(r["rmse"]) for r in csv.DictReader(f)}
    # room for 3 trials' predictions of the table's 160 rows
    monkeypatch.setattr(oof, "MEMORY", 3 * 160 * 8)
    result = cli("sweep", cfg, "-o", out, "--report", "--json", "--set", "sweep.ensemble=6")
    assert result.code == 0, result
    assert "chooses among the 3 trials of lowest out-of-fold MSE" in result.stderr
    assert "(3 left out)" in result.stderr
    chosen = json.loads(result.stdout)["ensemble"]
    assert chosen["candidates"] == 3
    best3 = sorted(scores, key=scores.__getitem__)[:3]
    assert {m["trial"] for m in chosen["members"]} <= set(best3)
    monkeypatch.setattr(oof, "MEMORY", 1 << 30)
    whole = cli("sweep", cfg, "-o", out, "--report", "--json", "--set", "sweep.ensemble=6")
    assert json.loads(whole.stdout)["ensemble"]["candidates"] == 6
    assert "chooses among" not in whole.stderr


def test_the_budget_s_pool_of_predictions_keeps_only_the_best_that_fit(cli, tmp_path, monkeypatch):
    from mse_train.selection import oof, worker

    pools: list[list[float]] = []
    real = worker.Trainer._choose

    def spy(self: Any, *args: Any) -> None:
        real(self, *args)
        pools.append([entry[1] for entry in self._pool])

    monkeypatch.setattr(worker.Trainer, "_choose", spy)
    monkeypatch.setattr(oof, "MEMORY", 2 * 160 * 8)  # room for 2 trials' predictions
    cfg = _config(tmp_path, _table(tmp_path), time_limit=600)
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    assert pools and max(len(p) for p in pools) == 2
    y = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1, usecols=3)[:, None]
    mse = [float(np.mean((np.load(f) - y) ** 2)) for f in (tmp_path / "sw" / "oof").glob("*.npy")]
    # the two best (the pool's scores are the loop's own, float32: within 0.5% of the files')
    assert len(mse) == 6 and sorted(pools[-1]) == pytest.approx(sorted(mse)[:2], rel=5e-3)
    assert sorted(mse)[2] > 1.01 * sorted(mse)[1]  # so the third could not pass for the second


def test_an_ensemble_needs_out_of_fold_predictions(cli, tmp_path):
    cfg = _config(tmp_path, _table(tmp_path), folds=0)
    result = cli("sweep", cfg, "-o", tmp_path / "sw")
    assert result.code == 2
    assert "sweep.ensemble is 6, but the trials are scored on validation rows (folds 0)" in result.stderr
    assert not (tmp_path / "sw").exists()


def test_a_single_model_checkpoint_is_written_as_before_without_an_ensemble(cli, tmp_path):
    cfg = _config(tmp_path, _table(tmp_path), ensemble=0, params={"optimizer.lr": [0.01, 0.05]})
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    found = json.loads(result.stdout)
    assert "ensemble" not in found and found["checkpoint"] == str(tmp_path / "sw" / "best" / "best.pt")
    spec = torch.load(found["checkpoint"], weights_only=True)["model"]
    assert spec["type"] == "mlp" and "members" not in spec
    assert yaml.safe_load((tmp_path / "sw" / "best" / "config.yaml").read_text())["model"]["type"] == "mlp"


# ------------------------------------------------------------------ sweep.refit_seeds
def test_refit_seeds_train_the_winner_once_per_seed_into_one_checkpoint_of_their_mean(cli, tmp_path):
    table = _table(tmp_path)
    cfg = _config(tmp_path, table, ensemble=0, refit_seeds=3, params={"optimizer.lr": [0.01, 0.05]})
    out = tmp_path / "sw"
    result = cli("sweep", cfg, "-o", out, "--json")
    assert result.code == 0, result
    found = json.loads(result.stdout)
    best = found["best"]["trial"]
    assert found["checkpoint"] == str(out / "ensemble" / "best.pt") and not (out / "best").exists()
    assert found["ensemble"]["members"] == [{"trial": best, "count": 1, "weight": 1.0}]
    assert found["ensemble"]["seeds"] == 3
    assert "the ensemble's 1 distinct trial(s) x 3 seeds train on all training rows" in result.stderr
    trained = json.loads((out / "ensemble" / "ensemble.json").read_text())["trained"]
    assert [(m["trial"], m["seed"]) for m in trained] == [(best, 0), (best, 1), (best, 2)]
    assert [m["weight"] for m in trained] == pytest.approx([1 / 3] * 3)
    mixed = _predictions(cli, out / "ensemble" / "best.pt", table, tmp_path / "mix.csv")
    alone = []
    for member in trained:
        config = member["config"]
        config["output"]["dir"] = str(tmp_path / f"s{member['seed']}")
        assert cli("run", write_config(tmp_path / f"s{member['seed']}.yaml", config)).code == 0
        ckpt = tmp_path / f"s{member['seed']}" / "best.pt"
        alone.append(_predictions(cli, ckpt, table, tmp_path / "p.csv"))
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # another seed, another model
    np.testing.assert_allclose(mixed, np.mean(alone, axis=0), rtol=1e-4, atol=1e-5)
    scored = cli("eval", out / "ensemble" / "best.pt", table, "--json", "--interval", "0.8")
    report = json.loads(scored.stdout)
    assert 0.6 <= report["interval"]["coverage"] <= 1.0  # the winner's out-of-fold residuals
    shown = cli("sweep", cfg, "-o", out, "--report")
    assert f"ensemble: trial {best} (1/1), each refit with 3 seeds;" in shown.stderr


def test_refit_seeds_without_folds_average_the_winner_and_say_why_there_are_no_intervals(cli, tmp_path):
    table = _table(tmp_path)
    cfg = _config(tmp_path, table, folds=0, ensemble=0, refit_seeds=2, params={"optimizer.lr": [0.01, 0.05]})
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    found = json.loads(result.stdout)
    assert found["checkpoint"] == str(tmp_path / "sw" / "ensemble" / "best.pt")
    trained = json.loads((tmp_path / "sw" / "ensemble" / "ensemble.json").read_text())["trained"]
    assert [m["seed"] for m in trained] == [0, 1]
    assert {m["trial"] for m in trained} == {found["best"]["trial"]}
    assert cli("eval", found["checkpoint"], table).code == 0
    refused = cli("eval", found["checkpoint"], table, "--interval", "0.9")
    assert refused.code == 2
    assert "scored its trials on validation rows (folds 0), so it kept no out-of-fold" in refused.stderr
    assert "sweep with `sweep.folds: 5`" in refused.stderr
    shown = cli("sweep", cfg, "-o", tmp_path / "sw", "--report")
    assert shown.code == 0, shown
    score = f"{found['best']['score']:.6g}"
    best = found["best"]["trial"]
    said = f"each refit with 2 seeds; validation MSE {score}, best single trial ({best}) {score}"
    assert said in shown.stderr


@pytest.mark.parametrize("value", ["0", "101", "two"])
def test_a_bad_refit_seeds_is_a_config_error_naming_the_key(cli, tmp_path, value):
    cfg = _config(tmp_path, _table(tmp_path), ensemble=0)
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--set", f"sweep.refit_seeds={value}")
    assert result.code == 2, result
    assert "sweep.refit_seeds" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "sw").exists()


# ------------------------------------------------------------------ the time its refit needs
def test_an_ensembles_reserve_is_the_refit_of_the_trials_it_would_choose_and_one_in_flight():
    from mse_train.selection import budget

    plan = budget.Budget(time.time() + 100, members=20, read_seconds=2.0)
    plan.best = 10.0  # nothing chosen yet: the winner's refit, not 20 of them
    assert plan.reserve() == pytest.approx(budget.MARGIN * 10 + 2 + budget.WRITES)
    plan.chosen, plan.live = 25.0, 5.0  # the trials chosen so far, and one of the pack in flight
    assert plan.reserve() == pytest.approx(budget.MARGIN * 30 + 2 + budget.WRITES)
    plan.members = 1  # the winner alone: the larger of the two
    assert plan.reserve() == pytest.approx(budget.MARGIN * 10 + 2 + budget.WRITES)


def test_the_chooser_picks_as_the_selection_does_among_predictions_of_the_rows():
    y = np.array([[0.0], [1.0], [2.0], [3.0]])
    below, above = y - 0.5, y + 0.5
    chosen = ensemble.chooser(y, None, 4)
    assert chosen({3: below, 5: above, 7: y + 2.0}) == [3, 5]  # their mean is exact
    assert chosen({3: below, 4: np.zeros((3, 1))}) == [3]  # another table's rows take no part
    assert chosen({}) == []


def test_a_sweep_with_an_ensemble_keeps_time_for_the_trials_it_chooses(cli, tmp_path, monkeypatch):
    from mse_train.selection import worker

    seen: list[float] = []
    real = worker.Trainer._choose

    def spy(self: Any, *args: Any) -> None:
        real(self, *args)
        seen.append(self.budget.chosen)

    monkeypatch.setattr(worker.Trainer, "_choose", spy)
    refits: dict[int, float] = {}
    real_refit = worker.Trainer.refit_seconds

    def refit(self: Any, values: dict[str, Any], best_epochs: list[int]) -> float:
        seconds = real_refit(self, values, best_epochs)
        refits[len(refits)] = seconds
        return seconds

    monkeypatch.setattr(worker.Trainer, "refit_seconds", refit)
    cfg = _config(tmp_path, _table(tmp_path), time_limit=600)
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    members = [m["trial"] for m in json.loads(result.stdout)["ensemble"]["members"]]
    # after the last pack, the time kept is the refit of the trials the ensemble chose, one
    # after another: the grid's 6 trials are pooled in order, each refit timed as it joins
    assert seen and seen[-1] == pytest.approx(sum(refits[n] for n in members)) and seen[-1] > 0
