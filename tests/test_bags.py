"""A bagged run (`train.bags`): K models, each stopped on validation rows of its own, saved as
one checkpoint of their mean, scored and calibrated out of bag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mse_train import config, recipe
from mse_train.data import bags as data_bags
from mse_train.data import prepare
from mse_train.data.folds import kfold as folds_of
from mse_train.errors import TrainingInterrupted
from mse_train.models import inference, networks
from mse_train.outputs import checkpoint
from mse_train.training import apart, distributed
from mse_train.training.distributed import World

from conftest import (
    HANG_GUARD,
    linear_rows,
    read_json,
    read_metrics,
    run_process,
    signal_at_step,
    sweep_config,
    write_csv,
)

MLP = {"type": "mlp", "hidden": [16], "activation": "relu"}


def _bagged(small_config: Any, bags: int = 3, **sections: Any) -> Path:
    train = {"epochs": 30, "bags": bags, "batch_size": 32, "early_stopping": {"patience": 5}}
    data = {"val_fraction": 0.25, **sections.pop("data", {})}
    model = sections.pop("model", MLP)
    path: Path = small_config(
        model=model, train={**train, **sections.pop("train", {})}, data=data, **sections
    )
    return path


def _members(path: Path) -> list[torch.nn.Module]:
    model = checkpoint.model(path, checkpoint.load(path))
    assert isinstance(model, networks.WeightedMean)
    return list(model.members)


def test_a_bagged_run_writes_one_checkpoint_of_its_bags_mean_scored_out_of_bag(cli, small_config, tmp_path):
    cfg = _bagged(small_config)
    result = cli("run", cfg, "--json")
    assert result.code == 0, result
    out = tmp_path / "run"
    summary = json.loads(result.stdout)
    assert summary["bags"]["count"] == 3 and summary == read_json(out / "summary.json")
    assert summary["rows"] == {"train": 150, "val": 50}
    assert "3 bags (seeds 0..2), each trains on 150 rows and stops on its own 50" in result.stderr
    assert not (out / "last.pt").exists()  # no resume: nothing to continue from
    rows = read_metrics(out / "bags.csv")
    assert [(r["bag"], r["seed"], r["val_rows"]) for r in rows] == [
        ("0", "0", "50"),
        ("1", "1", "50"),
        ("2", "2", "50"),
    ]
    members = _members(out / "best.pt")
    assert (
        len(members) == 3 and checkpoint.load(out / "best.pt")[checkpoint.K_MODEL]["weights"] == [1 / 3] * 3
    )

    # Out of bag, computed here row by row: each row held out by some bag, predicted by the
    # mean of the bags that held it out.
    loaded = config.load(cfg)
    bagged = data_bags.prepare_bags(loaded.data, loaded.targets, loaded.seed, 3)
    n = len(bagged.rows)
    held = [set(prepare.holdout(n, loaded.data, j)[0][150:].tolist()) for j in range(3)]
    assert [set(h.tolist()) for h in bagged.held_out] == held
    assert held[0] != held[1] != held[2]
    x = torch.from_numpy(bagged.rows.x)
    each = [inference.predict(m, x).numpy()[:, 0] for m in members]
    errors = []
    for row in range(n):
        by = [each[j][row] for j in range(3) if row in held[j]]
        if by:
            errors.append((np.mean(by) - bagged.rows.y[row, 0]) ** 2)
    assert summary["bags"]["oob_rows"] == len(errors) == len(set().union(*held))
    assert summary["bags"]["oob_mse"] == pytest.approx(float(np.mean(errors)), rel=1e-5)
    assert summary["best"]["val_loss"] == summary["bags"]["oob_mse"]

    # The mean curve: per epoch, the mean over the bags that trained it.
    curve = read_metrics(out / "metrics.csv")
    epochs = [int(r["epochs"]) for r in rows]
    assert len(curve) == max(epochs) and curve[0]["bags"] == "3"
    assert [int(r["bags"]) for r in curve] == [sum(e > i for e in epochs) for i in range(max(epochs))]

    predicted = tmp_path / "p.csv"
    done = cli("predict", out / "best.pt", tmp_path / "table.csv", "-o", predicted, "--interval", "0.8")
    assert done.code == 0, done
    scored = cli("eval", out / "best.pt", tmp_path / "table.csv", "--json", "--interval", "0.8")
    report = json.loads(scored.stdout)
    assert 0.6 <= report["interval"]["coverage"] <= 1.0


def test_the_bags_prediction_is_the_mean_of_its_members(cli, small_config, tmp_path):
    assert cli("run", _bagged(small_config, bags=2), "-q").code == 0
    path = tmp_path / "run" / "best.pt"
    members = _members(path)
    x = torch.randn(20, 3)
    mean = (inference.predict(members[0], x) + inference.predict(members[1], x)) / 2
    torch.testing.assert_close(inference.predict(checkpoint.model(path, checkpoint.load(path)), x), mean)
    assert not torch.allclose(inference.predict(members[0], x), inference.predict(members[1], x), atol=1e-3)


@pytest.mark.parametrize("processes", [1, 2])
def test_bags_trained_one_after_another_equal_bags_side_by_side(cli, small_config, tmp_path, processes):
    """As modules (`--no-pack`), one after another or in processes of their own, the bags
    equal those of the stack."""
    cfg = _bagged(small_config, bags=2, train={"processes": processes})
    assert cli("run", cfg, "-q", "-o", tmp_path / "packed").code == 0
    apart = alone("run", cfg, "--no-pack", "-o", tmp_path / "apart")
    assert apart.returncode == 0, apart.stderr
    assert ("one after another" if processes == 1 else "in 2 processes side by side") in apart.stderr
    x = torch.randn(50, 3)
    for a, b in zip(
        _members(tmp_path / "packed" / "best.pt"), _members(tmp_path / "apart" / "best.pt"), strict=True
    ):
        torch.testing.assert_close(inference.predict(a, x), inference.predict(b, x), rtol=1e-3, atol=1e-4)
    packed, apart_rows = (read_metrics(tmp_path / name / "bags.csv") for name in ("packed", "apart"))
    for row, other in zip(packed, apart_rows, strict=True):
        assert float(row.pop("best_val_loss")) == pytest.approx(float(other.pop("best_val_loss")), rel=1e-4)
        assert row == other


@pytest.mark.parametrize("case", ["no_fraction", "val_file"])
def test_a_bagged_run_without_validation_rows_of_its_own_is_a_config_error(cli, small_config, tmp_path, case):
    if case == "no_fraction":
        cfg, said = _bagged(small_config, data={"val_fraction": 0.0}), "data.val_fraction is 0"
    else:
        cfg, said = (
            _bagged(small_config, data={"val": str(tmp_path / "table.csv"), "val_fraction": 0.0}),
            "data.val names a validation file",
        )
    result = cli("run", cfg)
    assert result.code == 2, result
    assert "train.bags is 3, and this run cannot bag" in result.stderr and said in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many"])
def test_a_bad_processes_value_is_a_config_error_naming_the_key(cli, small_config, tmp_path, value):
    result = cli("run", _bagged(small_config), "--set", f"train.processes={value}")
    assert result.code == 2, result
    assert "train.processes" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "51", "three"])
def test_a_bad_bags_value_is_a_config_error_naming_the_key(cli, small_config, tmp_path, value):
    result = cli("run", _bagged(small_config), "--set", f"train.bags={value}")
    assert result.code == 2, result
    assert "train.bags" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_bagged_run_has_no_resume_and_says_so(cli, small_config, tmp_path):
    cfg = _bagged(small_config)
    assert cli("run", cfg, "-q").code == 0
    again = cli("run", cfg)
    assert again.code == 2 and "--overwrite" in again.stderr and "--resume" not in again.stderr, again
    resumed = cli("run", cfg, "--resume")
    assert resumed.code == 2 and "a bagged run writes no last.pt" in resumed.stderr, resumed


def test_an_interrupted_bagged_run_writes_nothing_and_keeps_the_run_it_would_replace(
    monkeypatch, small_config, tmp_path
):
    cfg = config.load(_bagged(small_config))
    recipe.run(cfg, recipe.Options(), recipe.Silent())
    before = (tmp_path / "run" / "best.pt").read_bytes()
    restore = signal_at_step(monkeypatch, 7)
    with pytest.raises(TrainingInterrupted, match=r"a bagged run keeps no last\.pt, so nothing was written"):
        recipe.run(cfg, recipe.Options(overwrite=True), recipe.Silent())
    restore()
    assert (tmp_path / "run" / "best.pt").read_bytes() == before
    assert not (tmp_path / "run" / ".previous-run").exists()


def test_a_bag_that_diverges_fails_the_run_and_writes_nothing(cli, small_config, tmp_path):
    cfg = _bagged(small_config, optimizer={"name": "sgd", "lr": 1.0e30})
    result = cli("run", cfg)
    assert result.code == 1, result
    assert (
        "bag 0 of the bagged run diverged at epoch 1" in result.stderr
        and "nothing was written" in result.stderr
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.pt"))


def test_a_plain_run_over_a_bagged_one_leaves_no_bags_file(cli, small_config, tmp_path):
    cfg = _bagged(small_config)
    assert cli("run", cfg, "-q").code == 0 and (tmp_path / "run" / "bags.csv").exists()
    assert cli("run", cfg, "-q", "--overwrite", "--set", "train.bags=1").code == 0
    assert not (tmp_path / "run" / "bags.csv").exists() and (tmp_path / "run" / "last.pt").exists()


def test_torchrun_refuses_a_bagged_run_before_it_starts(small_config):
    cfg = config.load(_bagged(small_config))
    with pytest.raises(Exception, match="a bagged run trains in one process"):
        distributed.check_config(cfg, World(rank=0, size=2, local_rank=0))


def test_bags_with_sample_weights_score_out_of_bag_by_weight(cli, tmp_path):
    header, values = linear_rows(120, seed=3)
    weights = np.where(np.arange(120) % 2 == 0, 1.0, 3.0)
    table = write_csv(
        tmp_path / "w.csv", [*header, "w"], np.column_stack([values, weights]).round(6).tolist()
    )
    cfg = tmp_path / "w.yaml"
    cfg.write_text(
        f"data: {{train: {table}, target: y, weight: w, val_fraction: 0.3}}\n"
        "model: {type: mlp, hidden: [8]}\n"
        f"optimizer: {{name: adam, lr: 0.01}}\ntrain: {{epochs: 5, bags: 2}}\n"
        f"output: {{dir: {tmp_path / 'wr'}, plot: false}}\n"
    )
    result = cli("run", cfg, "--json")
    assert result.code == 0, result
    loaded = config.load(cfg)
    bagged = data_bags.prepare_bags(loaded.data, loaded.targets, 0, 2)
    members = _members(tmp_path / "wr" / "best.pt")
    total, count = np.zeros(120), np.zeros(120)
    for m, held in zip(members, bagged.held_out, strict=True):
        total[held] += inference.predict(m, torch.from_numpy(bagged.rows.x[held])).numpy()[:, 0]
        count[held] += 1
    seen = count > 0
    assert bagged.rows.w is not None
    squared = (total[seen] / count[seen] - bagged.rows.y[seen, 0]) ** 2
    expected = float(np.average(squared, weights=bagged.rows.w[seen]))
    assert json.loads(result.stdout)["bags"]["oob_mse"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(float(squared.mean()), rel=1e-3)  # the weights count


def test_validate_refuses_a_bagged_config_that_run_would_refuse(cli, small_config):
    result = cli("validate", _bagged(small_config, data={"val_fraction": 0.0}))
    assert result.code == 2 and "train.bags is 3, and this run cannot bag" in result.stderr, result


def test_a_sweep_over_a_bagged_config_refits_its_winner_as_run_bags_it(cli, tmp_path, table):
    sweep = {"trials": 2, "folds": 2, "time_limit": 600, "params": {"optimizer.lr": [0.01, 0.05]}}
    cfg = sweep_config(tmp_path, table, sweep, model=MLP, train={"epochs": 3, "bags": 3})
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    text = (tmp_path / "sw" / "best.yaml").read_text()
    assert "It trains as 3 bags (train.bags), each stopped on its own" in text
    best = yaml.safe_load(text)
    assert best["train"]["bags"] == 3 and best["data"]["val_fraction"] == 0.25
    refit = tmp_path / "sw" / "best"
    assert len(read_metrics(refit / "bags.csv")) == 3 and not (refit / "last.pt").exists()
    assert json.loads(result.stdout)["checkpoint"] == str(refit / "best.pt")


def _predicted(cli: Any, ckpt: Path, table: Path, out: Path) -> np.ndarray:
    assert cli("predict", ckpt, table, "-o", out).code == 0
    return np.loadtxt(out, delimiter=",", skiprows=1, usecols=-1)


def test_a_sweep_refit_over_seeds_trains_each_seed_as_the_bagged_config_s_bags(cli, tmp_path, table):
    # refit_seeds 2 x bags 3: six networks, each stopped on its own validation rows, as a
    # bagged run of six bags trains them
    sweep = {"trials": 2, "folds": 2, "refit_seeds": 2, "params": {"optimizer.lr": [0.01, 0.05]}}
    cfg = sweep_config(tmp_path, table, sweep, model=MLP, train={"epochs": 3, "bags": 3})
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    assert "1 distinct trial(s) x 6 bags train on all training rows" in result.stderr
    trained = json.loads((tmp_path / "sw" / "ensemble" / "ensemble.json").read_text())["trained"]
    assert [(m["config"]["train"]["bags"], m["config"]["data"]["val_fraction"]) for m in trained] == [
        (3, 0.25)
    ] * 6
    assert [m["seed"] for m in trained] == list(range(6))
    best = yaml.safe_load((tmp_path / "sw" / "best.yaml").read_text())
    assert best["train"]["bags"] == 3 and best["data"]["val_fraction"] == 0.25
    best["train"]["bags"] = 6
    best["output"]["dir"] = str(tmp_path / "six")
    path = tmp_path / "six.yaml"
    path.write_text(yaml.safe_dump(best))
    assert cli("run", path).code == 0
    mixed = _predicted(cli, tmp_path / "sw" / "ensemble" / "best.pt", table, tmp_path / "mix.csv")
    six = _predicted(cli, tmp_path / "six" / "best.pt", table, tmp_path / "six.csv")
    np.testing.assert_allclose(mixed, six, rtol=1e-4, atol=1e-5)


def test_a_sweep_ensemble_of_a_bagged_config_trains_each_member_as_run_bags_it(cli, tmp_path, table):
    sweep = {"method": "grid", "folds": 2, "ensemble": 4, "params": {"optimizer.lr": [0.003, 0.05]}}
    cfg = sweep_config(tmp_path, table, sweep, model=MLP, train={"epochs": 4, "bags": 2})
    result = cli("sweep", cfg, "-o", tmp_path / "sw", "--json")
    assert result.code == 0, result
    chosen = json.loads(result.stdout)["ensemble"]
    trials = len(chosen["members"])
    assert f"{trials} distinct trial(s) x 2 bags train on all training rows" in result.stderr
    trained = json.loads((tmp_path / "sw" / "ensemble" / "ensemble.json").read_text())["trained"]
    assert len(trained) == 2 * trials
    mixed = _predicted(cli, tmp_path / "sw" / "ensemble" / "best.pt", table, tmp_path / "mix.csv")
    alone = np.zeros_like(mixed)
    for member in chosen["members"]:  # each trial run alone, as its bagged config: its bags' mean
        config = next(m["config"] for m in trained if m["trial"] == member["trial"] and m["seed"] == 0)
        config["output"]["dir"] = str(tmp_path / f"t{member['trial']}")
        path = tmp_path / f"t{member['trial']}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert cli("run", path).code == 0
        ckpt = tmp_path / f"t{member['trial']}" / "best.pt"
        alone += member["weight"] * _predicted(cli, ckpt, table, tmp_path / "p.csv")
    np.testing.assert_allclose(mixed, alone, rtol=1e-4, atol=1e-5)


def test_a_bagged_refit_is_timed_as_its_bags_side_by_side(cli, tmp_path, table, monkeypatch):
    from mse_train.selection import budget

    copies: list[int] = []
    real = budget.seconds_per_row

    def spy(cfg: Any, prepared: Any, device: Any, copies_: int = 1, pack: bool = True) -> float:
        copies.append(copies_)
        return real(cfg, prepared, device, copies_, pack)

    monkeypatch.setattr(budget, "seconds_per_row", spy)
    sweep = {"trials": 2, "folds": 2, "time_limit": 600, "params": {"optimizer.lr": [0.01, 0.05]}}
    for bags in (3, 1):
        copies.clear()
        cfg = sweep_config(tmp_path, table, sweep, model=MLP, train={"epochs": 3, "bags": bags})
        assert cli("sweep", cfg, "-o", tmp_path / f"sw{bags}").code == 0
        assert copies and set(copies) == {bags}


# ------------------------------------------------------------------ cv of a bagged config
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "one-at-a-time"])
def test_cv_scores_each_fold_as_a_bagged_run_on_its_rows_would(cli, small_config, table, tmp_path, pack):
    cfg = _bagged(small_config, bags=3, train={"epochs": 12})
    args = ["cv", cfg, "-k", "2", "--json", "-o", tmp_path / "cv", *([] if pack else ["--no-pack"])]
    result = cli(*args)
    assert result.code == 0, result
    folds_scored = json.loads(result.stdout)["per_fold"]
    # fold 1, by hand: `run` of the same bagged config on its training rows, `eval` on the rest
    frame = np.genfromtxt(table, delimiter=",", names=True)
    header = list(frame.dtype.names or ())
    values = np.array(frame.tolist())
    train_rows, test_rows = folds_of(len(values), 2, seed=0)[0]
    write_csv(tmp_path / "fold_train.csv", header, values[train_rows].tolist())
    write_csv(tmp_path / "fold_test.csv", header, values[test_rows].tolist())
    run = cli("run", cfg, "-q", "--set", f"data.train={tmp_path / 'fold_train.csv'}", "-o", tmp_path / "fold")
    assert run.code == 0, run
    scored = cli("eval", tmp_path / "fold" / "best.pt", tmp_path / "fold_test.csv", "--json")
    assert scored.code == 0, scored
    assert folds_scored[0]["n"] == len(test_rows)
    assert folds_scored[0]["mse"] == pytest.approx(json.loads(scored.stdout)["mse"], rel=1e-4)
    # and not as one model would: the same cv with one bag scores otherwise
    single = cli("cv", cfg, "-k", "2", "--json", "-o", tmp_path / "cv1", "--set", "train.bags=1")
    assert single.code == 0, single
    assert json.loads(single.stdout)["per_fold"][0]["mse"] != pytest.approx(folds_scored[0]["mse"], rel=1e-3)


def test_cv_of_a_bagged_config_without_validation_rows_is_refused(cli, small_config, tmp_path):
    cfg = _bagged(small_config, data={"val_fraction": 0.0})
    result = cli("cv", cfg, "-k", "2", "-o", tmp_path / "cv")
    assert result.code == 2 and "data.val_fraction is 0" in result.stderr, result
    assert not (tmp_path / "cv").exists()


TABM = {"type": "tabm", "k": 2, "width": 8, "blocks": 1, "dropout": 0.2}


def test_module_bags_in_processes_equal_the_same_bags_one_after_another(cli, small_config, tmp_path):
    """TabM with dropout does not stack: its bags train as modules, in processes side by side
    (`train.processes`). Each bag draws its dropout masks from where its own build left
    the generator, so the checkpoint is the same, bit for bit, as one after another."""
    cfg = _bagged(small_config, bags=3, model=TABM)
    runs, stderr = {}, {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        done = alone("run", cfg, "--set", f"train.processes={processes}", "-o", out)
        assert done.returncode == 0, done.stderr
        said = "in 2 processes side by side" if processes == 2 else "one after another"
        assert said in done.stderr
        runs[processes], stderr[processes] = out, done.stderr
    one, two = (checkpoint.load(runs[p] / "best.pt") for p in (1, 2))
    assert one["weights"].keys() == two["weights"].keys()
    assert all(torch.equal(one["weights"][k], two["weights"][k]) for k in one["weights"])
    assert (runs[1] / "bags.csv").read_text() == (runs[2] / "bags.csv").read_text()
    drop = ("seconds",)
    rows = [
        [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(runs[p] / "metrics.csv")]
        for p in (1, 2)
    ]
    assert rows[0] == rows[1]
    # the same epoch lines, in the same order: bag 0's as they come, then bag 1's, ...
    lines = [
        [line for line in said.splitlines() if line.startswith(("epoch ", "note: bag "))]
        for said in stderr.values()
    ]
    assert lines[0] == lines[1] and len(lines[0]) >= 3
    bags = [line for line in lines[1] if line.startswith("note: bag ")]
    assert bags == [f"note: bag {j} (seed {j}), {j + 1} of 3" for j in range(3)]  # each before its epochs
    assert all(lines[1][lines[1].index(b) + 1].startswith("epoch 1/") for b in bags)
    # the bags differ from each other: each its own seed and masks
    members = _members(runs[2] / "best.pt")
    x = torch.randn(20, 3)
    assert not torch.allclose(inference.predict(members[0], x), inference.predict(members[1], x), atol=1e-4)


def test_what_a_process_tells_reaches_the_command_while_it_trains(tmp_path):
    """`apart.tell` is heard while the child still works, not when it has ended: each task
    waits until the command has heard its first message (a file the command writes), then
    tells a second; each result comes after all that its task told."""
    heard: list[tuple[int, Any]] = []
    events: list[str] = []

    def on_heard(j: int, message: Any) -> None:
        heard.append((j, message))
        events.append(f"heard {j} {message}")
        (tmp_path / f"heard-{j}-{message}").touch()

    def work(j: int) -> bool:
        apart.tell("first")
        waited = _until((tmp_path / f"heard-{j}-first").exists)
        apart.tell("second")
        return waited

    done = []
    for j, waited in enumerate(apart.map(work, 3, 2, lambda: False, on_heard)):
        events.append(f"result {j}")
        done.append(waited)
    assert done == [True, True, True]  # no child gave up waiting to be heard
    for j in range(3):
        assert [m for i, m in heard if i == j] == ["first", "second"]
        assert events.index(f"heard {j} second") < events.index(f"result {j}")
    apart.tell("outside a task: nobody hears it, nothing fails")


_KILLED_COMMAND = """
import os, sys, time
from pathlib import Path
from mse_train.training import apart

out = Path(sys.argv[1])

def work(j):
    (out / f"child-{os.getpid()}").touch()
    time.sleep(20)  # a long bag: the command is killed meanwhile
    return j

for _ in apart.map(work, 2, 2, lambda: False):
    pass
"""


def test_children_end_quietly_when_the_command_is_killed(tmp_path):
    """SIGKILL ends the command with no cleanup: its forked children end themselves soon
    after, rather than training their task to the end and printing a BrokenPipeError
    traceback into the user's terminal when they hand back its result."""
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_COMMAND, str(tmp_path)], stderr=subprocess.PIPE, text=True
    ) as command:
        assert _until(lambda: len(list(tmp_path.glob("child-*"))) == 2)
        children = [int(p.name.split("-")[1]) for p in tmp_path.glob("child-*")]
        command.kill()
        command.wait(timeout=HANG_GUARD)
        assert command.stderr is not None
        stderr = command.stderr.read()  # its end: once every child holding the pipe has exited
    assert "Traceback" not in stderr, stderr
    assert _until(lambda: not any(_running(pid) for pid in children), 10.0)


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _until(condition: Any, seconds: float = 60.0) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False: a guard, not a timing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


_INTERRUPTED = """
import os, signal, sys
from pathlib import Path
from mse_train import config, recipe, runtime
from mse_train.errors import TrainingInterrupted
from mse_train.training.module import Module

runtime.use_threads()
parent, real, marker = os.getpid(), Module.step, sys.argv[2]

def step(self, *args, **kwargs):
    if os.getpid() != parent:  # in a bag's process: one Ctrl-C to the run, from the first
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(parent, signal.SIGINT)
    return real(self, *args, **kwargs)

Module.step = step
try:
    recipe.run(config.load(Path(sys.argv[1])), recipe.Options(), recipe.Silent())
except TrainingInterrupted as exc:
    print("interrupted:", exc)
"""


def test_a_bagged_run_in_processes_interrupted_writes_nothing(small_config, tmp_path):
    """Ctrl-C reaches the run, not the bags' processes: the run kills them and writes nothing."""
    cfg = _bagged(small_config, bags=3, model=TABM, train={"processes": 2, "epochs": 200})
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED, str(cfg), str(tmp_path / "signalled")],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert "interrupted: " in done.stdout and "a bagged run keeps no last.pt" in done.stdout
    assert (tmp_path / "signalled").exists()
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.pt"))


_SIGNAL_WHILE_WRITING = """
import os, signal, sys
from mse_train.outputs import bags

real, sig = bags.write, getattr(signal, sys.argv[1])

def write(out, *args, **kwargs):  # the bags have trained; their files are being written
    (out / "config.yaml").exists() or sys.exit("config.yaml is written first")
    os.kill(os.getpid(), sig)
    return real(out, *args, **kwargs)

bags.write = write
sys.argv = ["mse-train", *sys.argv[2:]]
from mse_train.cli.app import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_bagged_run_signalled_while_its_files_are_written_leaves_none(small_config, tmp_path, sig):
    """After training, outside its Ctrl-C handling, a signal leaves no half-written run folder
    (config.yaml and no best.pt, a temporary file) and says how to start again; SIGTERM,
    which would kill the process where it stands, is a Ctrl-C too."""
    cfg = _bagged(small_config, bags=2)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_WRITING, sig, "run", str(cfg), "-o", str(out)],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 130, done.stderr
    assert "a bagged run keeps no last.pt, so nothing was written" in done.stderr
    assert "start again: mse-train run" in done.stderr and "--overwrite" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != ".mse-train.lock") == []


def test_a_bag_that_diverges_in_its_process_fails_the_run(small_config, tmp_path):
    cfg = _bagged(small_config, model=TABM, optimizer={"name": "sgd", "lr": 1.0e30}, train={"processes": 2})
    result = alone("run", cfg)
    assert result.returncode == 1, result.stderr
    assert "in 2 processes side by side" in result.stderr
    assert (
        "bag 0 of the bagged run diverged at epoch 1" in result.stderr
        and "nothing was written" in result.stderr
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.pt"))


ONE_THREAD = {**os.environ, "MSE_TRAIN_THREADS": "1"}


def alone(*args: Any) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process with one torch thread and no other thread: where a
    config's bags or folds train in processes (training/apart.py forks only there)."""
    return run_process(*args, env=ONE_THREAD)
