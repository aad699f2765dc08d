"""MLflow tracking for a run or a sweep (`output.mlflow: true`), an optional extra.

Everything goes through one `MlflowClient` (no global MLflow state): the resolved config
as params, each epoch's metrics.csv row (step = epoch), the summary, and the run folder's
files as artifacts at the end. The store is `MLFLOW_TRACKING_URI`, else MLflow's own
default, a SQLite file `mlflow.db` in the current folder. `mlflow.json` in the run (or
sweep) folder records the MLflow run, so `--resume` continues logging into it.

A store that cannot be reached is an error before training; once training runs, a
logging failure is reported and logging stops, but training goes on: the run folder
holds everything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mse_train import __version__
from mse_train.config import Config
from mse_train.errors import EnvironmentProblem, TrainingInterrupted
from mse_train.outputs import fsio, run_folder
from mse_train.outputs.summary import Summary
from mse_train.training.records import Status

ENV = "MLFLOW_TRACKING_URI"
DEFAULT_STORE = "mlflow.db"  # current MLflow 3's own default: sqlite:///mlflow.db in the current folder
RECORD = run_folder.MLFLOW_RECORD  # in the run (or sweep) folder: which MLflow run it logs into
PARAM_LIMIT = 6000  # MLflow's longest param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
BATCH = 100  # MLflow takes at most 100 params or tags in one log_batch
CONNECT_TIMEOUT = "10"  # seconds, for the check before training (MLflow would retry for minutes)
VERSION_TAG = "mse_train.version"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a child under its parent

Note = Callable[[str], None]


def tracking_uri() -> str:
    """The store to log into: $MLFLOW_TRACKING_URI, else ./mlflow.db (made absolute)."""
    return os.environ.get(ENV) or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def check_available(uri: str) -> None:
    """Fail before anything is written, with the fix, when the mlflow extra is missing."""
    fixes = ["install it with: pip install 'mse-train[mlflow]'", "or set output.mlflow: false"]
    if importlib.util.find_spec("mlflow") is None:
        raise EnvironmentProblem("output.mlflow is true, but the mlflow package is not installed", fixes)
    lacking = [name for name in ("sqlalchemy", "alembic") if importlib.util.find_spec(name) is None]
    if uri.startswith("sqlite:") and lacking:
        raise EnvironmentProblem(
            f"output.mlflow is true and the MLflow store is {uri}, but {' and '.join(lacking)} "
            "(which MLflow's SQLite store needs) is not installed",
            fixes,
        )


def connect(experiment: str) -> Store:
    """Open the store and the experiment (created if missing): a clear error if either fails."""
    uri = tracking_uri()
    check_available(uri)
    source = f"from {ENV}" if os.environ.get(ENV) else f"the default, as {ENV} is not set"
    try:
        with _quiet(), _fail_fast():
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage == "deleted":
                raise EnvironmentProblem(
                    f"MLflow experiment {experiment!r} in {uri} is deleted",
                    [
                        "restore it (mlflow experiments restore), or set output.mlflow_experiment "
                        "to another name"
                    ],
                )
            experiment_id = found.experiment_id if found else _create_experiment(client, experiment, uri)
    except EnvironmentProblem:
        raise
    except Exception as exc:
        raise EnvironmentProblem(
            f"cannot use the MLflow tracking store {uri} ({source}): {_first_line(exc)}",
            [
                *_read_only(exc),
                f"set {ENV} to a store you can reach, e.g. sqlite:///mlflow.db or http://HOST:5000 "
                "for a running `mlflow server`",
                "or set output.mlflow: false",
            ],
        ) from None
    return Store(client, uri, experiment_id)


def _create_experiment(client: Any, name: str, uri: str) -> str:
    # With a local SQLite store MLflow would put artifacts in ./mlruns of whichever folder a
    # run starts from; beside the database, the store is one folder wherever runs start.
    location = None
    database = _sqlite_file(uri)
    if database is not None:
        folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        location = (database.parent / "mlruns" / folder).resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:
        found = client.get_experiment_by_name(name)  # another run created it just now
        if found is None:
            raise
        return str(found.experiment_id)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, also in SQLite's URI form
    (`sqlite:///file:PATH?mode=ro&uri=true`, which read it as a folder named `file:`);
    None for another store or an in-memory one."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if database.startswith("file:"):
        database = urllib.parse.urlparse(database).path
    return Path(database) if database and database != ":memory:" and "mode=memory" not in uri else None


class Store:
    """The MLflow store and experiment that runs log into."""

    def __init__(self, client: Any, uri: str, experiment_id: str) -> None:
        self.client, self.uri, self.experiment_id = client, uri, experiment_id

    def start(
        self, folder: Path, params: dict[str, str], tags: dict[str, str], resume: bool, note: Note
    ) -> Run:
        """An MLflow run for `folder`: the one its mlflow.json names when resuming, else a new one.

        Called before training, so a store that fails here stops the run with exit 2.
        """
        try:
            with _quiet():
                run_id = self._recorded(folder) if resume else None
                if run_id is not None:
                    self.client.update_run(run_id, status="RUNNING")
                    note(f"MLflow: continuing run {run_id} in {self.uri}")
                else:
                    tags = {VERSION_TAG: __version__, "mse_train.folder": str(folder), **tags}
                    created = self.client.create_run(self.experiment_id, run_name=folder.name, tags=tags)
                    note(f"MLflow: run {created.info.run_id} in {self.uri}")
        except Exception as exc:
            raise EnvironmentProblem(
                f"cannot start an MLflow run in {self.uri}: {_first_line(exc)}",
                [*_read_only(exc), f"check the store {ENV} names, or set output.mlflow: false"],
            ) from None
        continued = run_id is not None
        run_id = run_id or str(created.info.run_id)
        record = {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": run_id}
        fsio.write_text(folder / RECORD, json.dumps(record) + "\n")
        run = Run(self.client, self.experiment_id, run_id, note, continued)
        run.params(params)
        return run

    def _recorded(self, folder: Path) -> str | None:
        """The run id in folder's mlflow.json, if it is in this store and experiment and not deleted."""
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            if record["tracking_uri"] != self.uri or record["experiment_id"] != self.experiment_id:
                return None
            run = self.client.get_run(record["run_id"])
        except Exception:  # no record, a damaged one, or a run the store no longer has: start anew
            return None
        return None if run.info.lifecycle_stage == "deleted" else str(run.info.run_id)


class Run:
    """One MLflow run. After a logging failure it is reported once, and the rest is skipped."""

    def __init__(
        self, client: Any, experiment_id: str, run_id: str, note: Note, continued: bool = False
    ) -> None:
        self.client, self.experiment_id, self.run_id, self.note = client, experiment_id, run_id, note
        self.continued = continued  # an earlier run's MLflow run, reopened by --resume
        self.ended = False
        self._broken = False

    def params(self, params: dict[str, str]) -> None:
        """Log params; on a continued run, a value that changed (e.g. train.epochs) becomes a tag."""

        def log() -> None:
            logged = self.client.get_run(self.run_id).data.params
            new = {k: v for k, v in params.items() if k not in logged}
            changed = {f"mse_train.resumed_with.{k}": v for k, v in params.items() if logged.get(k, v) != v}
            self._batch(params=new, tags=changed)

        self._guarded(log)

    def metrics(self, values: dict[str, Any], step: int = 0) -> None:
        """Log the numbers among `values` (None is skipped: an empty metrics.csv cell)."""
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self._guarded(lambda: self._batch(metrics=numbers, step=step))

    def epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row, under its column names, at step = epoch."""
        self.metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def tags(self, tags: dict[str, str]) -> None:
        self._guarded(lambda: self._batch(tags=tags))

    def artifacts(self, folder: Path, names: tuple[str, ...]) -> None:
        """Upload the files (and folders) among `names` that `folder` holds."""

        def upload() -> None:
            for name in names:
                path = folder / name
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
                elif path.is_file():
                    self.client.log_artifact(self.run_id, str(path))

        self._guarded(upload)

    def model(self, save: Callable[[Path], None], name: str) -> None:
        """Log the MLflow Model that `save(folder)` writes, as the artifact folder `name`
        (`runs:/<run id>/<name>`, which mlflow.pyfunc loads and the registry registers)."""

        def log() -> None:
            with tempfile.TemporaryDirectory(prefix="mse-train-mlflow-") as tmp:
                folder = Path(tmp) / name
                save(folder)
                self.client.log_artifacts(self.run_id, str(folder), artifact_path=name)

        self._guarded(log)

    def child(
        self, name: str, params: dict[str, str], metrics: dict[str, Any], tags: dict[str, str], status: str
    ) -> None:
        """A finished run nested under this one (a sweep's trial), logged whole at once."""

        def log() -> None:
            tags_ = {PARENT_TAG: self.run_id, VERSION_TAG: __version__, **tags}
            created = self.client.create_run(self.experiment_id, run_name=name, tags=tags_)
            child = Run(self.client, self.experiment_id, str(created.info.run_id), self.note)
            numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            child._batch(params=params, metrics=numbers)
            self.client.set_terminated(child.run_id, status=status)

        self._guarded(log)

    def children(self, tag: str) -> set[str]:
        """The values of `tag` on this run's children (a sweep's logged trial numbers)."""
        found: set[str] = set()

        def search() -> None:
            token = None
            while True:
                page = self.client.search_runs(
                    [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.run_id}'", page_token=token
                )
                found.update(run.data.tags[tag] for run in page if tag in run.data.tags)
                token = page.token
                if not token:
                    return

        self._guarded(search)
        return found

    def end(self, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED; only the first call counts."""
        if self.ended:
            return
        self.ended = True
        if self._broken:  # a store that failed may be back: one quiet try, so it is not left RUNNING
            with contextlib.suppress(Exception), _quiet():
                self.client.set_terminated(self.run_id, status=status)
            return
        self._guarded(lambda: self.client.set_terminated(self.run_id, status=status))

    def abort(self, exc: BaseException) -> None:
        """End the run after an exception: KILLED for Ctrl-C, FAILED otherwise."""
        interrupted = isinstance(exc, (KeyboardInterrupt, TrainingInterrupted))
        self.end("KILLED" if interrupted else "FAILED")

    def _batch(
        self,
        params: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        entries: list[Any] = [Param(k, v) for k, v in (params or {}).items()]
        entries += [RunTag(k, v) for k, v in (tags or {}).items()]
        entries += [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        for start in range(0, len(entries), BATCH):
            chunk = entries[start : start + BATCH]
            self.client.log_batch(
                self.run_id,
                metrics=[e for e in chunk if isinstance(e, Metric)],
                params=[e for e in chunk if isinstance(e, Param)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
            )

    def _guarded(self, work: Callable[[], None]) -> None:
        if self._broken:
            return
        try:
            with _quiet():
                work()
        except Exception as exc:
            self._broken = True
            self.note(
                f"MLflow logging stopped: {_first_line(exc)}; training goes on and the run folder "
                "holds every result"
            )


# ------------------------------------------------------------------ one training run
STATUS = {  # how a training ended -> MLflow's RunStatus
    Status.COMPLETED: "FINISHED",
    Status.EARLY_STOPPED: "FINISHED",
    Status.DIVERGED: "FAILED",
    Status.INTERRUPTED: "KILLED",
}


def start_training(
    store: Store,
    out: Path,
    cfg: Config,
    resume: bool,
    history: Sequence[dict[str, Any]],
    tags: dict[str, str],
    note: Note,
) -> Run:
    """The MLflow run of `mse-train run`; a new MLflow run for a resumed training gets the
    restored epochs first, so its curves are whole."""
    run = store.start(out, config_params(cfg), tags, resume, note)
    if not run.continued:
        for row in history:
            run.epoch(row)
    return run


def end_training(run: Run, status: Status, result: Summary, out: Path | None) -> None:
    """Log the summary and (when `out` holds this run's files) the run folder; end the run."""
    final, best = result["final"], result["best"]
    run.metrics(
        {
            "epochs_run": result["epochs_run"],
            "wall_seconds": result["wall_seconds"],
            "rows.train": result["rows"]["train"],
            "rows.val": result["rows"]["val"],
            **{f"final.{k}": v for k, v in final.items()},
            **{f"best.{k}": v for k, v in best.items() if k != "watched"},
        }
    )
    run.tags(
        {
            "mse_train.status": result["status"],
            "mse_train.best_watched": best["watched"],
            "mse_train.loss_units": result["loss_units"],
            "mse_train.device": result["device"],
        }
    )
    if out is not None:
        run.artifacts(out, (*run_folder.RUN_FILES, "tensorboard"))
    run.end(STATUS[status])


# ------------------------------------------------------------------ params
def config_params(cfg: Config) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, strings as written, the rest as JSON."""
    return flatten(cfg.model_dump(mode="json"))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": "0.1"}; values cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        # config.yaml (an artifact) keeps the whole value; the param says it was cut
        out[name] = text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - 3] + "..."
    return out


# ------------------------------------------------------------------ quiet, and fast to fail
_THEIR_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3", "git")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow and its database layer log INFO lines, log a whole SQLAlchemy error with its SQL
    before raising it (a read-only SQLite store), and warn about their own deprecations
    (SQLAlchemy 2.1 warns on MLflow's models); mse-train reports what matters itself, from
    the exception, so none of them print while MLflow works for us."""
    import mlflow  # noqa: F401  (importing it sets its logger's level: set ours after)

    loggers = [logging.getLogger(name) for name in _THEIR_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """For the check before training: no retries (MLflow's default backs off for minutes)."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": CONNECT_TIMEOUT}
    added = [name for name in settings if name not in os.environ]  # the user's own settings win
    os.environ.update({name: settings[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy puts a note on how the query was flushed before the database's own error.
    text = [line for line in str(exc).strip().splitlines() if not line.startswith("(raised as a result")]
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _read_only(exc: BaseException) -> list[str]:
    """The fix for a SQLite store that cannot be written, if that is what `exc` says."""
    if "readonly database" not in str(exc) and "read-only" not in str(exc):
        return []
    return [
        "the store's database (or its folder, where SQLite writes its journal) is read-only: "
        "make both writable, or point MLFLOW_TRACKING_URI at another store"
    ]
