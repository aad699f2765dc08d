"""`output.mlflow: true`: what a run and a sweep log to MLflow, read back with MlflowClient."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mse_train import __version__

from conftest import HANG_GUARD, read_json, read_metrics, run_process, signal_at_step, write_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed"
)


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One local MLflow store for the module: creating its tables takes a second or more.

    Tests share it but never mix: each finds its runs by the id its folder's mlflow.json holds.
    """
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client(uri).search_experiments()  # creates the tables
    return uri


@pytest.fixture
def store(store_uri, monkeypatch) -> Any:
    """A client on the module's store, which MLFLOW_TRACKING_URI names for the CLI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return client(store_uri)


def client(uri: str) -> Any:
    with warnings.catch_warnings():  # SQLAlchemy 2.1 warns about MLflow's models on import
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient

        return MlflowClient(uri)


def run_id(folder: Path) -> str:
    return str(json.loads((folder / "mlflow.json").read_text())["run_id"])


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The documented param rule: dotted keys; strings as written, other values as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def history(client, rid: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(rid, key))


def test_a_run_logs_its_config_epochs_summary_and_files(cli, small_config, tmp_path, store):
    cfg = small_config(output={"mlflow": True, "plot": True}, data={"val_fraction": 0.2}, train={"epochs": 4})
    result = cli("run", cfg, "--json")
    assert result.code == 0, result
    assert json.loads(result.stdout)["status"] == "completed"  # MLflow's notes stay off stdout
    folder = tmp_path / "run"
    run = store.get_run(run_id(folder))
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"  # the run folder's name
    assert run.data.tags["mse_train.version"] == __version__
    assert store.get_experiment(run.info.experiment_id).name == "cfg"  # null = the config's name

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert run.data.params == flat(config)
    assert run.data.params["optimizer.lr"] == "0.05" and run.data.params["train.epochs"] == "4"

    rows = read_metrics(folder / "metrics.csv")
    assert len(rows) == 4
    for column in rows[0]:
        if column == "epoch":
            continue
        expected = [(int(r["epoch"]), float(r[column])) for r in rows if r[column] != ""]
        assert history(store, run.info.run_id, column) == expected, column
    assert "train_end_loss" not in run.data.metrics  # an empty column is not a metric

    summary = read_json(folder / "summary.json")
    assert run.data.metrics["best.val_loss"] == summary["best"]["val_loss"]
    assert run.data.metrics["best.epoch"] == summary["best"]["epoch"]
    assert run.data.metrics["final.train_loss"] == summary["final"]["train_loss"]
    assert run.data.metrics["epochs_run"] == 4
    assert run.data.tags["mse_train.status"] == "completed"

    listed = {f.path for f in store.list_artifacts(run.info.run_id)}
    wanted = {"config.yaml", "metrics.csv", "best.pt", "last.pt", "summary.json", "loss.png", "mlflow.json"}
    assert wanted <= listed
    # A local store keeps its artifacts beside its database, not in the folder the run started from
    beside = Path(store.tracking_uri.removeprefix("sqlite:///")).parent / "mlruns" / "cfg"
    assert (beside / run.info.run_id / "artifacts" / "best.pt").is_file()
    assert not (Path.cwd() / "mlruns").exists()


def test_a_diverged_run_ends_failed(cli, small_config, tmp_path, store):
    cfg = small_config(output={"mlflow": True}, optimizer={"name": "sgd", "lr": 1.0e30})
    result = cli("run", cfg, "-q")
    assert result.code == 1, result
    run = store.get_run(run_id(tmp_path / "run"))
    assert run.info.status == "FAILED"
    assert run.data.tags["mse_train.status"] == "diverged"


def test_ctrl_c_ends_killed_and_resume_continues_the_same_run(
    cli, small_config, tmp_path, store, monkeypatch
):
    cfg = small_config(output={"mlflow": True}, train={"epochs": 5})
    restore = signal_at_step(monkeypatch, 3)  # one batch per epoch: Ctrl-C inside epoch 3
    assert cli("run", cfg, "-q").code == 130
    restore()
    folder = tmp_path / "run"
    first = run_id(folder)
    assert store.get_run(first).info.status == "KILLED"
    at_stop = read_metrics(folder / "metrics.csv")
    assert 1 <= len(at_stop) < 5
    assert [s for s, _ in history(store, first, "train_loss")] == [int(r["epoch"]) for r in at_stop]

    resumed = cli("run", cfg, "-q", "--resume", "--set", "train.epochs=6")
    assert resumed.code == 0, resumed
    assert run_id(folder) == first
    run = store.get_run(first)
    assert run.info.status == "FINISHED"
    rows = read_metrics(folder / "metrics.csv")
    assert history(store, first, "train_loss") == [(int(r["epoch"]), float(r["train_loss"])) for r in rows]
    assert [s for s, _ in history(store, first, "train_loss")] == [1, 2, 3, 4, 5, 6]  # each epoch once
    assert run.data.params["train.epochs"] == "5"  # a param cannot change; the new value is a tag
    assert run.data.tags["mse_train.resumed_with.train.epochs"] == "6"


def test_resume_without_a_record_starts_a_new_run_with_every_epoch(cli, small_config, tmp_path, store):
    cfg = small_config(output={"mlflow": True}, train={"epochs": 2})
    assert cli("run", cfg, "-q").code == 0
    folder = tmp_path / "run"
    first = run_id(folder)
    (folder / "mlflow.json").unlink()
    assert cli("run", cfg, "-q", "--resume", "--set", "train.epochs=3").code == 0
    second = run_id(folder)
    assert second != first
    rows = read_metrics(folder / "metrics.csv")
    assert history(store, second, "train_loss") == [(int(r["epoch"]), float(r["train_loss"])) for r in rows]
    assert len(rows) == 3


def test_a_renamed_config_resumes_into_the_experiment_its_new_name_gives(cli, small_config, tmp_path, store):
    """The default experiment is the config's name: a renamed config is no changed setting."""
    first = small_config("p5.yaml", output={"mlflow": True}, train={"epochs": 2})
    assert cli("run", first, "-q").code == 0
    folder = tmp_path / "run"
    before = run_id(folder)
    renamed = tmp_path / "p12.yaml"
    renamed.write_text(first.read_text().replace("epochs: 2", "epochs: 3"))
    first.unlink()
    result = cli("run", renamed, "-q", "--resume")
    assert result.code == 0, result
    after = run_id(folder)
    assert store.get_experiment(store.get_run(after).info.experiment_id).name == "p12"
    assert store.get_experiment(store.get_run(before).info.experiment_id).name == "p5"
    rows = read_metrics(folder / "metrics.csv")
    assert len(rows) == 3  # the new MLflow run has the whole curve, restored epochs first
    assert history(store, after, "train_loss") == [(int(r["epoch"]), float(r["train_loss"])) for r in rows]


def test_a_store_that_fails_during_training_stops_logging_not_training(
    cli, small_config, tmp_path, store, monkeypatch
):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def fail(*args, **kwargs):
        raise MlflowException("the server went away")

    monkeypatch.setattr(MlflowClient, "log_batch", fail)
    result = cli("run", small_config(output={"mlflow": True}, train={"epochs": 3}))
    assert result.code == 0, result
    assert result.stderr.count("MLflow logging stopped") == 1 and "the server went away" in result.stderr
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 3
    run = store.get_run(run_id(tmp_path / "run"))
    assert run.info.status == "FINISHED"  # its end is still recorded
    assert run.data.metrics == {} and run.data.params == {}


def test_without_the_extra_the_run_says_what_to_install_and_writes_nothing(
    cli, small_config, tmp_path, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = small_config(output={"mlflow": True})
    before = set(tmp_path.iterdir())
    for command in ("run", "validate"):
        result = cli(command, cfg)
        assert result.code == 2, result
        assert "pip install 'mse-train[mlflow]'" in result.stderr
    assert set(tmp_path.iterdir()) == before  # no run folder, no store


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("http://127.0.0.1:9", "127.0.0.1:9"),  # nothing listens on the discard port
        ("nosuchscheme://somewhere", "nosuchscheme"),
    ],
)
def test_a_store_that_cannot_be_used_is_a_clear_error_before_training(
    cli, small_config, tmp_path, monkeypatch, uri, words
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for command in (["run"], ["cv", "--folds", "2"]):
        result = cli(*command, small_config(output={"mlflow": True}))
        assert result.code == 2, result
        assert "MLFLOW_TRACKING_URI" in result.stderr and words in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "run").exists() and not (tmp_path / "run-cv").exists()


def test_param_values_are_cut_to_mlflows_limit():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from mse_train.outputs import mlflow_log

    assert mlflow_log.PARAM_LIMIT == MAX_PARAM_VAL_LENGTH
    params = mlflow_log.flatten({"a": {"b": "x" * 7000, "c": [1, 2]}, "d": None, "e": {}})
    assert params == {
        "a.b": "x" * (MAX_PARAM_VAL_LENGTH - 3) + "...",
        "a.c": "[1, 2]",
        "d": "null",
        "e": "{}",
    }


def sweep_config(tmp_path: Path, table: Path, sweep: dict[str, Any]) -> Path:
    return write_config(
        tmp_path / "sweep.yaml",
        {
            "data": {"train": str(table), "target": "y", "val_fraction": 0.25},
            "model": {"type": "mlp", "hidden": [8]},
            "optimizer": {"name": "adam", "lr": 0.05},
            "train": {"epochs": 2},
            "output": {"dir": str(tmp_path / "run"), "plot": False, "mlflow": True},
            "sweep": sweep,
        },
    )


def children(store, parent) -> list[Any]:
    where = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    return list(store.search_runs([parent.info.experiment_id], where))


def test_a_sweep_logs_a_parent_a_child_per_trial_and_the_refit(cli, table, tmp_path, store):
    grid = {"method": "grid", "params": {"optimizer.lr": [0.01, 0.1], "model.hidden": [[4], [8]]}}
    result = cli("sweep", sweep_config(tmp_path, table, grid), "-q")
    assert result.code == 0, result
    folder = tmp_path / "run-sweep"
    parent = store.get_run(run_id(folder))
    assert parent.info.status == "FINISHED" and parent.info.run_name == "run-sweep"  # after the sweep folder
    runs = children(store, parent)
    trials = {int(r.data.tags["mse_train.trial"]): r for r in runs if "mse_train.trial" in r.data.tags}
    with open(folder / "leaderboard.csv", newline="") as f:
        board = {int(row["trial"]): row for row in csv.DictReader(f)}
    assert set(trials) == set(board) == {0, 1, 2, 3}
    for number, row in board.items():
        child = trials[number]
        assert child.info.status == "FINISHED"
        assert child.data.params == {"optimizer.lr": row["optimizer.lr"], "model.hidden": row["model.hidden"]}
        assert child.data.metrics["score_mean"] == pytest.approx(float(row["score_mean"]), rel=1e-12)
        assert child.data.metrics["epochs"] == float(row["epochs"])
        assert child.data.tags["mse_train.status"] == row["status"]
    best = min(board.values(), key=lambda r: float(r["score_mean"]))
    refit = [r for r in runs if "mse_train.refit_of_trial" in r.data.tags]
    assert len(refit) == 1 and refit[0].data.tags["mse_train.refit_of_trial"] == best["trial"]
    assert refit[0].info.run_id == run_id(folder / "best") and refit[0].info.status == "FINISHED"
    assert parent.data.tags["mse_train.best_trial"] == best["trial"]
    assert {"leaderboard.csv", "best.yaml"} <= {f.path for f in store.list_artifacts(parent.info.run_id)}


def test_a_sweeps_ensemble_refit_is_logged_on_its_parent_as_an_mlflow_model(cli, table, tmp_path, store):
    seeds = {"method": "grid", "folds": 2, "refit_seeds": 2, "params": {"optimizer.lr": [0.01, 0.1]}}
    result = cli("sweep", sweep_config(tmp_path, table, seeds), "-q", "--json")
    assert result.code == 0, result
    folder = tmp_path / "run-sweep"
    ckpt = Path(json.loads(result.stdout)["checkpoint"])
    assert ckpt == folder / "ensemble" / "best.pt"
    rid = run_id(folder)
    assert {"ensemble.json", "ensemble-model"} <= {f.path for f in store.list_artifacts(rid)}
    out = tmp_path / "p.csv"
    assert cli("predict", ckpt, table, "-o", out).code == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's notes on loading (type hints, environment)
        got = pyfunc().load_model(f"runs:/{rid}/ensemble-model").predict(pd.read_csv(table).drop(columns="y"))
    np.testing.assert_allclose(got["y_pred"].to_numpy(), pd.read_csv(out)["y_pred"].to_numpy(), rtol=2**-23)


def test_a_resumed_sweep_continues_its_parent_run_and_logs_each_trial_once(cli, table, tmp_path, store):
    random = {"method": "random", "trials": 2, "refit": False, "params": {"optimizer.lr": [0.01, 0.03, 0.1]}}
    cfg = sweep_config(tmp_path, table, random)
    assert cli("sweep", cfg, "-q").code == 0
    folder = tmp_path / "run-sweep"
    first = run_id(folder)
    assert cli("sweep", cfg, "-q", "--resume", "--trials", "3").code == 0
    assert run_id(folder) == first
    parent = store.get_run(first)
    assert parent.info.status == "FINISHED"
    trials = sorted(int(r.data.tags["mse_train.trial"]) for r in children(store, parent))
    assert trials == [0, 1, 2]


def test_cv_logs_one_run_with_each_folds_metrics_and_their_mean(cli, table, tmp_path, store):
    cfg = sweep_config(tmp_path, table, {"method": "random", "params": {"optimizer.lr": [0.01]}})
    result = cli("cv", cfg, "--folds", "3", "-q", "-o", tmp_path / "cv")
    assert result.code == 0, result
    summary = read_json(tmp_path / "cv" / "cv.json")
    run = store.get_run(run_id(tmp_path / "cv"))
    assert run.info.status == "FINISHED" and run.data.tags["mse_train.kind"] == "cv"
    assert run.data.params["cv.folds"] == "3" and run.data.params["optimizer.lr"] == "0.05"
    assert run.data.metrics["mse_mean"] == pytest.approx(summary["mse"]["mean"], rel=1e-12)
    assert run.data.metrics["r2_std"] == pytest.approx(summary["r2"]["std"], rel=1e-12)
    folds = history(store, run.info.run_id, "fold_rmse")
    assert [step for step, _ in folds] == [1, 2, 3]
    assert [value for _, value in folds] == pytest.approx([f["rmse"] for f in summary["per_fold"]], rel=1e-12)
    assert {"cv.csv", "cv.json"} <= {f.path for f in store.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("experiment", ["fresh", "existing"])
def test_a_read_only_store_prints_only_our_message(small_config, tmp_path, experiment):
    """MLflow logged SQLAlchemy's whole error (SQL, parameters) on stderr before our exit-2
    message; in a real process, as a user sees it, stderr is our message and nothing else."""
    database = tmp_path / "ro" / "mlflow.db"
    database.parent.mkdir()
    writable = client(f"sqlite:///{database}")
    writable.create_experiment("existing")
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"  # read-only even for root
    cfg = small_config(output={"mlflow": True, "mlflow_experiment": experiment})
    here = tmp_path / "here"  # MLflow makes a folder "file:" for SQLite's URI form, wherever it runs
    here.mkdir()
    done = run_process("run", cfg, env={**os.environ, "MLFLOW_TRACKING_URI": read_only}, cwd=here)
    assert done.returncode == 2, done
    assert done.stderr.startswith("error: "), done.stderr
    assert "readonly database" in done.stderr and "read-only: make both writable" in done.stderr
    assert "[SQL:" not in done.stderr and "raised as a result" not in done.stderr
    assert not (tmp_path / "run" / "best.pt").exists()  # stopped before training


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("sqlite:////data/mlflow.db", "/data/mlflow.db"),
        ("sqlite:///runs/mlflow.db", "runs/mlflow.db"),
        ("sqlite:///file:/data/mlflow.db?mode=ro&uri=true", "/data/mlflow.db"),
        ("sqlite:///file:///data/mlflow.db?uri=true", "/data/mlflow.db"),
        ("sqlite:///:memory:", None),
        ("postgresql://host/db", None),
    ],
)
def test_the_artifact_folder_goes_beside_the_sqlite_file_in_either_form(uri, database):
    from mse_train.outputs.mlflow_log import _sqlite_file

    assert _sqlite_file(uri) == (None if database is None else Path(database))


# ------------------------------------------------------------------ the MLflow Model
def pyfunc() -> Any:
    with warnings.catch_warnings():  # MLflow warns about its own dependencies on import
        warnings.simplefilter("ignore")
        import mlflow.pyfunc

        return mlflow.pyfunc


def categorical_table(path: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(5)
    colour = rng.choice(["red", "green", "blue"], n)
    x = rng.normal(size=n).round(4)
    y = x * 2 + (colour == "red") * 3 + rng.normal(size=n).round(3) * 0.1
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["x", "colour", "y"])
        writer.writerows(zip(x, colour, y.round(4), strict=True))
    return path


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_a_run_logs_an_mlflow_model_that_predicts_as_predict_does(cli, small_config, tmp_path, store, kind):
    data: dict[str, Any] = {"val_fraction": 0.2}
    if kind == "categorical":
        data["train"] = str(categorical_table(tmp_path / "cat.csv"))
    cfg = small_config(output={"mlflow": True}, data=data, model={"type": "mlp", "hidden": [8]})
    assert cli("run", cfg).code == 0
    table = Path(yaml.safe_load(cfg.read_text())["data"]["train"])
    rid = run_id(tmp_path / "run")
    assert "model" in {f.path for f in store.list_artifacts(rid)}
    out = tmp_path / "p.csv"
    assert cli("predict", tmp_path / "run" / "best.pt", table, "-o", out).code == 0
    want = pd.read_csv(out)["y_pred"].to_numpy()
    frame = pd.read_csv(table).drop(columns="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's notes on loading (type hints, environment)
        model = pyfunc().load_model(f"runs:/{rid}/model")
        got = model.predict(frame)
    np.testing.assert_allclose(got["y_pred"].to_numpy(), want, rtol=2**-23, atol=0)
    signature = model.metadata.get_input_schema().to_dict()
    types = {c["name"]: c["type"] for c in signature}
    assert list(types) == list(frame.columns)
    assert types.get("colour", "string") == "string" and types[frame.columns[0]] == "double"
    # registrable: the registry takes it, and serves the same numbers back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow

        mlflow.set_tracking_uri(store.tracking_uri)
        version = mlflow.register_model(f"runs:/{rid}/model", f"mse-{kind}")
        again = pyfunc().load_model(f"models:/mse-{kind}/{version.version}").predict(frame.head(5))
        logged = model.predict(frame.head(5))
    # the same 5 rows through the logged model: a matmul over 5 rows may round its last bit
    # otherwise than over all of them (the CPU's kernels differ by row count)
    np.testing.assert_array_equal(again["y_pred"].to_numpy(), logged["y_pred"].to_numpy())
    np.testing.assert_allclose(again["y_pred"].to_numpy(), want[:5], rtol=2**-21, atol=0)


def test_mlflow_models_predict_answers_as_predict_does(cli, small_config, tmp_path, store):
    """MLflow's own command, offline, in this environment (`--env-manager local`)."""
    cfg = small_config(output={"mlflow": True}, data={"train": str(categorical_table(tmp_path / "cat.csv"))})
    assert cli("run", cfg).code == 0
    rows = tmp_path / "rows.csv"
    pd.read_csv(tmp_path / "cat.csv").drop(columns="y").head(8).to_csv(rows, index=False)
    out = tmp_path / "p.csv"
    assert cli("predict", tmp_path / "run" / "best.pt", rows, "-o", out).code == 0
    model = f"runs:/{run_id(tmp_path / 'run')}/model"
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", model, "-i", rows, "-t", "csv",
         "--env-manager", "local"],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])["predictions"]
    np.testing.assert_allclose(
        [row["y_pred"] for row in answer], pd.read_csv(out)["y_pred"].to_numpy(), rtol=2**-23, atol=0
    )


def test_mlflow_models_serve_answers_as_predict_does(cli, small_config, tmp_path, store):
    """`mlflow models serve`, MLflow's own REST server, on this environment's packages: it
    starts where the server's dependencies (FastAPI, uvicorn) are installed, as with the
    mlflow extra here; elsewhere the test says why it is skipped."""
    import socket
    import time
    import urllib.error
    import urllib.request

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("MLflow's scoring server needs fastapi and uvicorn, not installed here")
    cfg = small_config(output={"mlflow": True}, data={"train": str(categorical_table(tmp_path / "cat.csv"))})
    assert cli("run", cfg).code == 0
    frame = pd.read_csv(tmp_path / "cat.csv").drop(columns="y").head(8)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "p.csv"
    assert cli("predict", tmp_path / "run" / "best.pt", tmp_path / "rows.csv", "-o", out).code == 0
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    model = f"runs:/{run_id(tmp_path / 'run')}/model"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "-h", "127.0.0.1", "-p", str(port),
         "--env-manager", "local", "-w", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # MLflow starts `uvicorn` by name: the environment's scripts on PATH, as when it is active
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + HANG_GUARD
        while True:  # until it answers /ping
            assert server.poll() is None, server.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as answer:
            predictions = json.loads(answer.read())["predictions"]
    finally:
        server.terminate()
        server.communicate(timeout=60)
    np.testing.assert_allclose(
        [row["y_pred"] for row in predictions], pd.read_csv(out)["y_pred"].to_numpy(), rtol=2**-23, atol=0
    )


def test_a_bagged_run_logs_the_bags_mean_curve_out_of_bag_score_and_model(cli, small_config, tmp_path, store):
    cfg = small_config(
        output={"mlflow": True},
        data={"val_fraction": 0.25},
        model={"type": "mlp", "hidden": [8]},
        train={"epochs": 6, "bags": 3},
    )
    result = cli("run", cfg, "--json")
    assert result.code == 0, result
    folder = tmp_path / "run"
    rid = run_id(folder)
    run = store.get_run(rid)
    assert run.info.status == "FINISHED"
    rows = read_metrics(folder / "metrics.csv")
    assert [int(r["bags"]) for r in rows] == [3] * 6
    for column in ("train_loss", "val_loss"):
        assert history(store, rid, column) == [(int(r["epoch"]), float(r[column])) for r in rows], column
    assert run.data.metrics["best.val_loss"] == json.loads(result.stdout)["bags"]["oob_mse"]
    listed = {f.path for f in store.list_artifacts(rid)}
    assert {"best.pt", "bags.csv", "metrics.csv", "model"} <= listed and "last.pt" not in listed
    out = tmp_path / "p.csv"
    assert cli("predict", folder / "best.pt", tmp_path / "table.csv", "-o", out).code == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = (
            pyfunc()
            .load_model(f"runs:/{rid}/model")
            .predict(pd.read_csv(tmp_path / "table.csv").drop(columns="y"))
        )
    np.testing.assert_allclose(
        got["y_pred"].to_numpy(), pd.read_csv(out)["y_pred"].to_numpy(), rtol=2**-23, atol=0
    )
