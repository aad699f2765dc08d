"""`mse-train init` chooses its starter model by a race of the candidates (selection/race.py)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mse_train.config import yamlio
from mse_train.data import prepare
from mse_train.selection import race
from mse_train.training import ridge

from conftest import DATA, write_config, write_csv


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
    mine = ridge.Ridge(x, y[:, None])
    theirs = RidgeCV(alphas=ridge.ALPHAS).fit(x, y)
    assert mine.alpha == pytest.approx(theirs.alpha_)
    np.testing.assert_allclose(mine.predict(x)[:, 0], theirs.predict(x), rtol=1e-6, atol=1e-6)


def race_scores(text: str) -> dict[str, float]:
    """The CV R² per candidate from the comments init writes above `model:`."""
    found = re.findall(r"^#   (linear|MLP|TabM)[^:]*: +(-?[0-9.]+) \(", text, flags=re.MULTILINE)
    return {name.lower(): float(r2) for name, r2 in found}


def table(tmp_path, name, rows):
    x, y = rows
    header = [f"x{i}" for i in range(x.shape[1])] + ["y"]
    return write_csv(tmp_path / name, header, np.column_stack([x, y]).round(5).tolist())


def init_run_eval(cli, tmp_path, name, train, test):
    """`init` on `train`, `run` as written, `eval` on the held-out `test`: the config text,
    and the held-out R²."""
    config = tmp_path / f"{name}.yaml"
    made = cli("init", table(tmp_path, f"{name}.csv", train), "-t", "y", "-o", config)
    assert made.code == 0, made
    assert "racing a linear model, an MLP and TabM by 5-fold CV" in made.stderr
    ran = cli("run", config, "-q", "--set", "output.plot=false", "-o", tmp_path / name)
    assert ran.code == 0, ran
    scored = cli("eval", tmp_path / name / "best.pt", table(tmp_path, f"{name}-test.csv", test), "--json")
    assert scored.code == 0, scored
    return config.read_text(), yaml.safe_load(scored.stdout)["r2"]


def test_a_linear_table_gets_the_linear_model_and_run_reproduces_the_race(cli, tmp_path):
    x, y = linear_rows(600, seed=3)
    text, held_out = init_run_eval(cli, tmp_path, "lin", (x[:400], y[:400]), (x[400:], y[400:]))
    parsed = yaml.safe_load(text)
    assert parsed["model"] == {"type": "linear"}
    assert parsed["optimizer"]["name"] == "lbfgs" and parsed["train"]["batch_size"] is None
    assert parsed["regularization"]["l2"] > 0
    scores = race_scores(text)
    assert "5-fold CV R² on all 400 rows, within 60 s" in text
    assert {"linear", "mlp"} <= set(scores) and scores["linear"] >= scores.get("tabm", -1.0)
    assert held_out == pytest.approx(scores["linear"], abs=0.02)
    ridge_r2 = RidgeCV(alphas=ridge.ALPHAS).fit(x[:400], y[:400, 0]).score(x[400:], y[400:, 0])
    assert held_out == pytest.approx(ridge_r2, abs=0.01)


def test_the_linear_starter_trains_on_every_row_and_predicts_as_ridgecv(cli, tmp_path):
    """No rows held out (L-BFGS solves the ridge problem; no epoch to choose): the run is
    scikit-learn's RidgeCV on the same standardised inputs, to float32 rounding."""
    x, y = linear_rows(600, seed=3)
    config = tmp_path / "lin.yaml"
    assert cli("init", table(tmp_path, "lin.csv", (x[:400], y[:400])), "-t", "y", "-o", config).code == 0
    parsed = yaml.safe_load(config.read_text())
    assert parsed["model"] == {"type": "linear"} and parsed["data"]["val_fraction"] == 0.0
    assert parsed["train"]["bags"] == 1  # solved on every row: nothing to bag
    ran = cli("run", config, "-q", "--json", "--set", "output.plot=false", "-o", tmp_path / "run")
    assert ran.code == 0, ran
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"] == {"train": 400, "val": 0} and summary["status"] == "early_stopped"
    predicted = cli("predict", tmp_path / "run" / "best.pt", table(tmp_path, "test.csv", (x[400:], y[400:])))
    assert predicted.code == 0, predicted
    ours = np.loadtxt(io.StringIO(predicted.stdout), delimiter=",", skiprows=1)[:, -1]
    theirs = make_pipeline(StandardScaler(), RidgeCV(alphas=ridge.ALPHAS)).fit(x[:400], y[:400, 0])
    assert parsed["regularization"]["l2"] * 400 == pytest.approx(theirs[-1].alpha_, rel=0.02)  # 2 digits
    np.testing.assert_allclose(ours, theirs.predict(x[400:]), atol=2e-3 * y.std())


def test_a_threshold_table_gets_the_mlp_and_run_reproduces_the_race(cli, tmp_path):
    x, y = threshold_rows(900)
    text, held_out = init_run_eval(cli, tmp_path, "thr", (x[:600], y[:600]), (x[600:], y[600:]))
    parsed = yaml.safe_load(text)
    scores = race_scores(text)
    # TabM, when it finished (a slow machine may see the budget cut it), stands for the networks
    standing = {k: v for k, v in scores.items() if k != "mlp" or "tabm" not in scores}
    winner = max(standing, key=lambda name: standing[name])
    assert winner in ("mlp", "tabm") and parsed["model"]["type"] == winner
    assert parsed["model"]["numeric_embedding"] == "piecewise_linear"
    assert parsed["optimizer"]["name"] == "adam" and parsed["train"]["batch_size"] == 64
    assert parsed["data"]["val_fraction"] == 0.2  # the network's best epoch is chosen on held-out rows
    assert parsed["train"]["bags"] == 5  # each network on its own validation rows, best.pt their mean
    assert scores[winner] > scores["linear"] + 0.1
    assert "MLP, piecewise-linear embedding, folds packed:" in text  # the MLP's folds trained as one stack
    assert held_out == pytest.approx(scores[winner], abs=0.04)


def test_a_candidate_cut_by_the_budget_is_reported_and_cannot_win(cli, tmp_path, monkeypatch):
    # The race's clock jumps 40 s at every look: the 60 s budget runs out during the
    # first candidate, which is stopped and reported; the second never starts.
    ticks = iter(range(0, 10**6, 40))
    monkeypatch.setattr(race, "clock", lambda: float(next(ticks)))
    csv = table(tmp_path, "lin.csv", linear_rows(300))
    made = cli("init", csv, "-t", "y", "-o", tmp_path / "cut.yaml")
    assert made.code == 0, made
    text = (tmp_path / "cut.yaml").read_text()
    assert "within 60 s" in made.stderr and "within 60 s:" in text
    assert re.search(r"#   linear.*: +not finished in the budget", text)
    assert re.search(r"#   MLP.*: +not started: the budget was spent", text)
    assert re.search(r"#   TabM.*: +not started: the budget was spent", text)
    assert "No candidate finished" in text and yaml.safe_load(text)["model"]["type"] == "mlp"
    assert cli("validate", tmp_path / "cut.yaml").code == 0


def test_a_tabm_starter_runs_evals_and_sweeps_with_tabm_trials(cli, tmp_path, monkeypatch):
    # TabM wins this race by fiat: what is tested is the config init writes for it.
    monkeypatch.setattr(race, "winner", lambda entries: next(e for e in entries if e.name == "tabm"))
    x, y = threshold_rows(400, seed=2)
    csv = table(tmp_path, "thr.csv", (x[:300], y[:300]))
    made = cli("init", csv, "-t", "y", "-o", tmp_path / "tabm.yaml")
    assert made.code == 0, made
    text = (tmp_path / "tabm.yaml").read_text()
    parsed = yaml.safe_load(text)
    assert parsed["model"]["type"] == "tabm" and parsed["model"]["k"] == 16
    assert parsed["model"]["numeric_embedding"] == "piecewise_linear" and "So TabM:" in text
    branches = parsed["sweep"]["params"]["model.type"]
    assert set(branches) == {"linear", "mlp", "tabm"}
    assert branches["mlp"]["model.dropout"] == [0.0]  # the TabM starter's dropout would unpack MLP trials
    ran = cli("run", tmp_path / "tabm.yaml", "-q", "--set", "output.plot=false", "-o", tmp_path / "r")
    assert ran.code == 0, ran
    scored = cli(
        "eval", tmp_path / "r" / "best.pt", table(tmp_path, "test.csv", (x[300:], y[300:])), "--json"
    )
    assert scored.code == 0 and yaml.safe_load(scored.stdout)["r2"] > 0.5, scored
    swept = cli(
        "sweep", tmp_path / "tabm.yaml", "--json", "--trials", "3", "--folds", "2",
        "--set", "train.epochs=2", "--set", "output.plot=false",
    )  # fmt: skip
    assert swept.code == 0, swept
    found = json.loads(swept.stdout)
    assert found["trials"] == 3
    # a bagged network starter's sweep ends in an ensemble of its trials, each refit as its bags
    assert parsed["sweep"]["ensemble"] == 20 and parsed["train"]["bags"] == 5
    assert found["checkpoint"].endswith("ensemble/best.pt") and found["ensemble"]["members"]
    assert cli("eval", found["checkpoint"], csv, "--json").code == 0


@pytest.mark.parametrize(
    ("tabm", "written"),
    [(0.80, "tabm"), (0.60, "linear"), (None, "mlp")],  # the MLP scores 0.90, the linear model 0.70
)
def test_tabm_once_finished_stands_for_the_networks(cli, tmp_path, monkeypatch, tabm, written):
    def raced(candidates, loaded, budget, device):
        scores = {"linear": 0.70, "mlp": 0.90, "tabm": tabm}
        note = "not finished in the budget" if tabm is None else ""
        return [
            race.Entry(name, scores[name], 1.0, name == "mlp", note if name == "tabm" else "")
            for name, _ in candidates
        ]

    monkeypatch.setattr(race, "run", raced)
    made = cli("init", table(tmp_path, "lin.csv", linear_rows(100)), "-t", "y", "-o", tmp_path / "c.yaml")
    assert made.code == 0, made
    text = (tmp_path / "c.yaml").read_text()
    assert yaml.safe_load(text)["model"]["type"] == written
    assert ("TabM's stand-in" in text) == (tabm is not None)  # the MLP's line says why it cannot win


@pytest.mark.parametrize(
    ("linear", "written"),
    # the network scores 0.70, so an error of 0.30: the linear model wins below 0.27 (10% less)
    [(0.75, "linear"), (0.72, "tabm"), (0.70, "tabm"), (0.60, "tabm")],
)
def test_the_linear_model_wins_only_by_a_tenth_of_the_network_error(
    cli, tmp_path, monkeypatch, linear, written
):
    from mse_train.selection import choose

    def raced(candidates, loaded, budget, device):
        scores = {"linear": linear, "mlp": 0.65, "tabm": 0.70}
        return [race.Entry(name, scores[name], 1.0, name == "mlp") for name, _ in candidates]

    monkeypatch.setattr(race, "run", raced)
    made = cli("init", table(tmp_path, "lin.csv", linear_rows(100)), "-t", "y", "-o", tmp_path / "c.yaml")
    assert made.code == 0, made
    text = (tmp_path / "c.yaml").read_text()
    assert yaml.safe_load(text)["model"]["type"] == written
    assert choose.LINEAR_EDGE == 0.1
    # the comments say why a network won with the lower CV score
    assert ("The linear model scored higher, but its CV error" in text) == (
        written == "tabm" and linear > 0.70
    )


def test_tables_above_tabms_rows_race_two_candidates(cli, tmp_path, monkeypatch):
    from mse_train.selection import choose

    monkeypatch.setattr(choose, "TABM_MOST_ROWS", 299)
    made = cli("init", table(tmp_path, "lin.csv", linear_rows(300)), "-t", "y", "-o", tmp_path / "two.yaml")
    assert made.code == 0, made
    assert "racing a linear model and an MLP by 5-fold CV" in made.stderr
    assert set(race_scores((tmp_path / "two.yaml").read_text())) == {"linear", "mlp"}


def test_the_budget_stops_training_that_would_run_far_longer(tmp_path):
    from mse_train.config import loading

    csv = table(tmp_path, "thr.csv", threshold_rows(300))
    base = {"data": {"train": str(csv), "target": "y"}, "model": {"type": "mlp"}}
    long = {**base, "train": {"epochs": 10**6, "batch_size": 8, "early_stopping": {"patience": 10**6}}}
    cfg = loading.from_document(yamlio.parse(yaml.safe_dump(long), "long.yaml"), tmp_path)
    loaded = prepare.load_training(cfg.data, cfg.targets)
    entries = race.run([("mlp", cfg), ("linear", cfg)], loaded, 1.0, torch.device("cpu"))
    assert [(e.r2, e.note) for e in entries] == [
        (None, "not finished in the budget"),
        (None, "not started: the budget was spent"),
    ]
    assert race.winner(entries) is None


def test_large_tables_race_on_a_seeded_sample(tmp_path):
    from mse_train.config import loading

    csv = table(tmp_path, "big.csv", linear_rows(race.MAX_ROWS + 500))
    doc = yamlio.parse(yaml.safe_dump({"data": {"train": str(csv), "target": "y"}}), "c.yaml")
    loaded = prepare.load_training(loading.from_document(doc, tmp_path).data, ["y"])
    one, two = race.sample(loaded, race.MAX_ROWS, 0), race.sample(loaded, race.MAX_ROWS, 0)
    assert one.table.n_rows == race.MAX_ROWS
    assert one.table.frame.equals(two.table.frame)  # the same rows under the same seed
    assert race.sample(loaded, 10**6, 0) is loaded


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_budget_is_refused(cli, tmp_path, value):
    csv = table(tmp_path, "lin.csv", linear_rows(50))
    result = cli("init", csv, "-t", "y", "-o", tmp_path / "b.yaml", "--budget", value)
    assert result.code == 2 and "--budget" in result.stderr
    assert not (tmp_path / "b.yaml").exists()


def test_init_quick_skips_the_race_and_tiny_tables_get_a_linear_model(cli, tmp_path):
    csv = table(tmp_path, "lin.csv", linear_rows(300))
    assert cli("init", csv, "-t", "y", "-o", tmp_path / "q.yaml", "--quick").code == 0
    quick = yaml.safe_load((tmp_path / "q.yaml").read_text())
    assert quick["model"]["type"] == "mlp" and quick["train"]["bags"] == 1
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


def rare_category_rows(n: int) -> list[list[object]]:
    """A categorical column with a value in one row only: the fold whose held-out rows take
    that row has one one-hot input fewer than the other folds."""
    rng = np.random.default_rng(5)
    out: list[list[object]] = []
    for i in range(n):
        x, c = float(rng.normal()), "rare" if i == 7 else "ab"[i % 2]
        out.append([round(x, 4), c, round(2 * abs(x) + (c == "a") + 0.1 * float(rng.normal()), 4)])
    return out


def test_folds_of_different_widths_pack_one_stack_per_width(cli, tmp_path):
    csv = write_csv(tmp_path / "rare.csv", ["x", "c", "y"], rare_category_rows(150))
    data = {"train": str(csv), "target": "y", "categorical": ["c"], "unknown_category": "ignore"}
    model = {"type": "mlp", "hidden": [16], "numeric_embedding": "piecewise_linear"}
    cfg = write_config(
        tmp_path / "c.yaml",
        {"data": data, "model": model, "train": {"epochs": 5, "batch_size": 16}, "output": {"plot": False}},
    )
    packed = cli("cv", cfg, "--folds", "5", "--json", "-o", tmp_path / "packed")
    assert packed.code == 0, packed  # was an internal error: a stack of models of two shapes
    alone = cli("cv", cfg, "--folds", "5", "--json", "--no-pack", "-o", tmp_path / "alone")
    assert alone.code == 0, alone
    ours, theirs = json.loads(packed.stdout)["per_fold"], json.loads(alone.stdout)["per_fold"]
    assert [f["r2"] for f in ours] == pytest.approx([f["r2"] for f in theirs], abs=1e-4)
    made = cli("init", csv, "-t", "y", "-o", tmp_path / "rare.yaml")
    assert made.code == 0, made
    assert set(race_scores((tmp_path / "rare.yaml").read_text())) >= {"linear", "mlp"}  # both finished


def test_the_mlp_batch_grows_with_the_rows_and_small_tables_keep_theirs():
    from mse_train.config.starter import LARGEST_BATCH, STEPS_PER_EPOCH, mlp_batch_size

    assert mlp_batch_size(5000) == 64  # 4,000 fitted rows: fewer than 32 steps of 128
    assert mlp_batch_size(None) == 64
    for rows in (5120, 6000, 12_000, 43_152, 10**7):
        batch = mlp_batch_size(rows)
        fitted = round(rows * 0.8)
        assert batch in (128, 256)
        assert fitted // batch >= STEPS_PER_EPOCH  # every epoch still has 32+ steps
        assert batch == LARGEST_BATCH or fitted // (2 * batch) < STEPS_PER_EPOCH
    assert (mlp_batch_size(6000), mlp_batch_size(43_152)) == (128, 256)


def test_a_larger_table_gets_larger_batches_the_race_sized_for_its_sample(cli, tmp_path, monkeypatch):
    # The race runs on a sample (here 400 rows): its MLP trains with the batches of a
    # 400-row table; the config written for the whole 6,000-row table has its own.
    monkeypatch.setattr(race, "MAX_ROWS", 400)
    raced = []
    real_run = race.run

    def spy(candidates, *args, **kwargs):
        raced.extend(candidates)
        return real_run(candidates, *args, **kwargs)

    monkeypatch.setattr(race, "run", spy)
    csv = table(tmp_path, "thr.csv", threshold_rows(6000))
    made = cli("init", csv, "-t", "y", "-o", tmp_path / "big.yaml")
    assert made.code == 0, made
    mlp = dict(raced)["mlp"]
    assert mlp.train.batch_size == 64
    written = yaml.safe_load((tmp_path / "big.yaml").read_text())
    assert written["model"]["type"] == "mlp" and written["train"]["batch_size"] == 128
    ran = cli("run", tmp_path / "big.yaml", "-q", "--json", "--set", "train.epochs=1", "-o", tmp_path / "r")
    assert ran.code == 0, ran
    quick = tmp_path / "quick.yaml"
    assert cli("init", csv, "-t", "y", "-o", quick, "--quick").code == 0
    assert yaml.safe_load(quick.read_text())["train"]["batch_size"] == 128  # --quick: the same budget


def test_the_linear_candidate_races_as_the_written_config_trains_on_every_row(cli, tmp_path, monkeypatch):
    """The race scores the linear model as `run` will train it: every row of each fold's
    training rows (no validation split), stopped once L-BFGS's training loss stops falling."""
    from mse_train.config import loading
    from mse_train.config.starter import LBFGS_EPOCHS, LBFGS_PATIENCE
    from mse_train.selection import cv

    raced = []
    real_run = race.run

    def spy(candidates, *args, **kwargs):
        raced.extend(candidates)
        return real_run(candidates, *args, **kwargs)

    monkeypatch.setattr(race, "run", spy)
    csv = table(tmp_path, "lin.csv", linear_rows(400, seed=5))
    assert cli("init", csv, "-t", "y", "-o", tmp_path / "lin.yaml").code == 0
    written = loading.load(tmp_path / "lin.yaml")
    short = dict(raced)["linear"]
    assert written.model.type == "linear" and written.data.val_fraction == 0.0
    assert written.train.epochs == LBFGS_EPOCHS and written.train.early_stopping is not None
    assert written.train.early_stopping.patience == LBFGS_PATIENCE
    for section in ("data", "model", "optimizer", "regularization", "train"):  # raced as written
        assert getattr(short, section) == getattr(written, section), section
    loaded = prepare.load_training(written.data, written.targets)
    result = cv.cross_validate(written, race.FOLDS, torch.device("cpu"), loaded=loaded)
    assert all(e < LBFGS_EPOCHS for e in result.epochs)  # it converged and stopped early
    scores = [cv.mean_std(result.per_fold)["r2"]["mean"]]
    assert f"{scores[0]:.4f}" in (tmp_path / "lin.yaml").read_text()  # the race's score, as written


def test_a_network_starter_bags_only_on_tables_up_to_bag_most_rows(cli, tmp_path, monkeypatch):
    from mse_train.config import starter
    from mse_train.selection import choose

    monkeypatch.setattr(race, "winner", lambda entries: next(e for e in entries if e.name == "mlp"))
    monkeypatch.setattr(choose, "TABM_MOST_ROWS", 0)
    csv = table(tmp_path, "thr.csv", threshold_rows(300))
    written = {}
    for most in (300, 299):
        monkeypatch.setattr(choose, "BAG_MOST_ROWS", most)
        config = tmp_path / f"b{most}.yaml"
        assert cli("init", csv, "-t", "y", "-o", config).code == 0
        written[most] = yaml.safe_load(config.read_text())
        assert written[most]["model"]["type"] == "mlp"
    assert written[300]["train"]["bags"] == starter.BAGS and written[299]["train"]["bags"] == 1
