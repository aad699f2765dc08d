"""Where a sweep's study lives: Optuna storages, heartbeats, and claims.

One study is shared by every worker of a sweep, on one machine or many: the sweep folder's
`sweep.journal` (Optuna's journal file: opened in milliseconds, no SQLAlchemy to import) by
default, or `--storage`: any database URL Optuna takes (postgresql://, mysql://, sqlite:///)
or a journal file's path on a filesystem the workers share. A sweep folder made before the
journal was the default holds `sweep.db` (SQLite): `--resume` and `--report` go on with it.

A worker records a heartbeat for its trials in flight; one that stops (kill -9, a lost
machine) has them failed by another worker after 3 missed heartbeats and run again, once
(Optuna's heartbeat and RetryHeartbeatStaleTrialCallback; the journal file gets the same
through its `Journal` subclass). Claims ("who refits") are studies created by name:
creating one that exists fails for every worker but the first, atomically, in every storage.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mse_train.config.schema import SweepConfig
from mse_train.errors import EnvironmentProblem, OutputError

ENV = "MSE_TRAIN_SWEEP_STORAGE"
DEFAULT_FILE = "sweep.journal"  # a new sweep's study, in its folder
OLD_FILE = "sweep.db"  # the SQLite study of a sweep folder made before: continued, reported
SQLITE_HEADER = b"SQLite format 3\x00"
RETRIES = 1  # a trial of a worker that died runs again once (a trial that kills its worker stops)
MISSED = 3  # heartbeats missed before a worker's trials count as lost
HEARTBEAT_ATTR = "mse_train_heartbeat"  # the journal's heartbeat: a trial system attr, epoch seconds


@dataclass
class Where:
    """A study's storage: the Optuna storage object and how to name it to a person."""

    storage: Any
    shown: str  # the URL without its password, or the file's path
    default: bool  # the sweep folder's own study file (sweep.journal, or an older sweep.db)


def storage_spec(option: str | None, sweep: SweepConfig) -> str | None:
    """--storage, else $MSE_TRAIN_SWEEP_STORAGE, else `sweep.storage`; None: the sweep folder's own file."""
    return option or os.environ.get(ENV) or sweep.storage


def default_file(out: Path) -> Path:
    """The sweep folder's own study file: its sweep.journal, or the sweep.db of a folder made
    before the journal was the default, or (neither there) the sweep.journal a new sweep makes."""
    for name in (DEFAULT_FILE, OLD_FILE):
        path = out / name
        if path.exists() or path.is_symlink():
            return path
    return out / DEFAULT_FILE


def connect(spec: str | None, out: Path, heartbeat: int) -> Where:
    """Open the storage (creating a new one's tables or file); clear errors for what is wrong."""
    if spec is None:
        path = default_file(out)
        if path.exists() or path.is_symlink():
            check_default_file(path)
        if path.name == OLD_FILE:
            return Where(_rdb(f"sqlite:///{path}", str(path), heartbeat), str(path), True)
        return Where(_journal(path, heartbeat, default=True), str(path), True)
    if "://" in spec:
        return Where(_rdb(spec, shown_url(spec), heartbeat), shown_url(spec), False)
    path = Path(spec).expanduser().resolve()
    return Where(_journal(path, heartbeat), str(path), False)


def check_default_file(path: Path) -> None:
    """The sweep folder's study file must be a readable journal (or an older folder's SQLite
    sweep.db): say what it is instead, and what to do."""
    what = "a folder" if path.is_dir() else "a broken link" if not path.exists() else "not a regular file"
    if not path.is_file():
        raise OutputError(
            f"{path}: is {what}, where the sweep's study should be",
            ["move it out of the way, or choose another folder with --output-dir"],
        )
    try:
        with open(path, "rb") as f:
            head = f.readline(1 << 16)  # the journal's first line: its study's creation
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot read the sweep's study: {exc.strerror or exc}",
            ["check its permissions, or choose another folder with --output-dir"],
        ) from None
    if path.name == OLD_FILE:
        if head and not head.startswith(SQLITE_HEADER):
            raise OutputError(
                f"{path}: not an SQLite database, so not a sweep mse-train wrote",
                ["start the sweep again in another folder with --output-dir"],
            )
    elif head and not _journal_line(head):
        raise OutputError(
            f"{path}: not an Optuna journal file, so not a sweep mse-train wrote",
            ["start the sweep again in another folder with --output-dir"],
        )


def _journal_line(line: bytes) -> bool:
    """Whether a line is one of an Optuna journal's operations (a JSON object with its op_code)."""
    import json

    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and "op_code" in entry


def _rdb(url: str, shown: str, heartbeat: int) -> Any:
    import optuna

    # SQLite: a writer waits this long for another worker's write (Optuna's are short).
    engine = {"connect_args": {"timeout": 10}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        for attempt in range(5):
            try:
                rdb = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=heartbeat,
                    grace_period=MISSED * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(RETRIES),
                )
                if url.startswith("sqlite"):
                    _write_ahead(rdb.engine)
                return rdb
            except Exception as exc:  # workers started together race to create Optuna's tables
                text = " ".join(str(e) for e in _chain(exc))
                if attempt == 4 or not any(w in text for w in ("already exists", "duplicate key")):
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")
    except ModuleNotFoundError as exc:  # the database's driver, which Optuna imports lazily
        raise EnvironmentProblem(
            f"{shown}: needs the Python package `{exc.name}`, which is not installed",
            ["for PostgreSQL: pip install 'mse-train[postgres]'", "for MySQL: pip install pymysql"],
        ) from None
    except Exception as exc:
        raise storage_error(exc, shown) from None


def _write_ahead(engine: Any) -> None:
    """SQLite in WAL mode, synced at checkpoints: a trial's few writes cost about a tenth as
    much (bench/sweep_storage.py), workers read while one writes, and a killed process loses
    nothing committed (only a power cut can lose the last writes). For a local disk only,
    as SQLite itself is: several machines use a database server or a journal file."""
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        with contextlib.suppress(Exception):  # another worker switching it at the same moment
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections made before the listener reconnect with it


def storage_error(exc: BaseException, shown: str) -> OutputError:
    """An error of the storage as a person can act on it: locked, unreachable, not Optuna's."""
    text = " ".join(str(e) for e in _chain(exc))
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    if "database is locked" in text:
        return OutputError(
            f"{shown}: the sweep's database is locked by another program (a transaction left "
            "open, e.g. an `sqlite3` shell)",
            ["close that program and run the same command again; nothing of the sweep was lost"],
        )
    if any(isinstance(e, OSError) for e in _chain(exc)) and "://" not in shown:  # a journal file
        error = next(e for e in _chain(exc) if isinstance(e, OSError))
        return OutputError(
            f"{shown}: cannot read or write the study's journal file: {error.strerror or error}",
            ["check its and its folder's permissions and free space, then run the same command again"],
        )
    if "file is not a database" in text:
        return OutputError(
            f"{shown}: not an SQLite database, so not a sweep mse-train wrote",
            ["start the sweep again in another folder with --output-dir"],
        )
    return OutputError(
        f"{shown}: cannot open the study's storage ({type(exc).__name__}: {first})",
        ["check the URL, that the database server runs and that you may connect to it"],
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def shown_url(url: str) -> str:
    """A database URL as messages show it: without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _journal(path: Path, heartbeat: int, default: bool = False) -> Any:
    """A journal file's storage; `default`: the sweep folder's own sweep.journal (checked)."""
    if path.is_dir():
        raise OutputError(
            f"{path}: is a folder; --storage takes a journal file's path (or a database URL)",
            [f"name a file, e.g. {path / 'sweep.journal'}"],
        )
    if not path.parent.is_dir():
        raise OutputError(
            f"{path}: its folder {path.parent} does not exist",
            ["create it (on a filesystem every worker shares), or name another file"],
        )
    from optuna.storages.journal import JournalFileBackend

    try:
        backend = JournalFileBackend(str(path))
        return _journal_class()(backend, heartbeat)
    except (OSError, ValueError, RuntimeError) as exc:
        fix = (
            "start the sweep again in another folder with --output-dir"
            if default
            else ("name a new file, or the journal this sweep was started with")
        )
        raise OutputError(
            f"{path}: not a journal file mse-train can use, or a damaged one ({type(exc).__name__}: {exc})",
            [fix],
        ) from None


def _journal_class() -> type:
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    class Journal(JournalStorage, BaseHeartbeat):
        """A journal file with heartbeats (Optuna's journal has none): each trial's last
        heartbeat is a system attr, so any worker can tell which trials nobody runs."""

        def __init__(self, backend: Any, interval: int) -> None:
            import optuna

            super().__init__(backend)
            self._interval = interval
            self._callback = optuna.storages.RetryHeartbeatStaleTrialCallback(RETRIES)

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now, stale = time.time(), []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = trial.system_attrs.get(HEARTBEAT_ATTR)
                if beat is None and trial.datetime_start is not None:
                    beat = trial.datetime_start.timestamp()
                if beat is not None and now - float(beat) > MISSED * self._interval:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int:
            return self._interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self._callback

    return Journal


def close(where: Where | None) -> None:
    """Let go of a database: its connections closed, so SQLite folds its write-ahead log
    back into its file and removes -wal/-shm now, not whenever the process ends. A journal
    file holds nothing open (each write takes and releases its lock)."""
    engine = getattr(where.storage, "engine", None) if where is not None else None
    if where is not None and engine is not None:
        where.storage.remove_session()
        engine.dispose()


def claim(where: Where, name: str) -> bool:
    """True for exactly one of the workers that ask for `name` (a study created by name)."""
    import optuna
    from optuna.study import StudyDirection

    try:
        where.storage.create_new_study([StudyDirection.MINIMIZE], name)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def release(where: Where, name: str) -> None:
    """Undo `claim(where, name)`: the claimed work was not done (a refit interrupted or
    failed), so the next worker or `--resume` that asks claims it. Best effort: the error
    that stopped the work is the one to report, not this one's."""
    with contextlib.suppress(Exception):
        where.storage.delete_study(where.storage.get_study_id_from_name(name))


# Held while a heartbeat is written, and by any fork (os.register_at_fork): a process forked
# to train beside the sweep (training/apart.py) never starts in the middle of a write, so no
# lock of the storage's client is held in it (it never touches the storage either).
_WRITING = threading.Lock()
os.register_at_fork(
    before=_WRITING.acquire, after_in_parent=_WRITING.release, after_in_child=_WRITING.release
)


class Heartbeats:
    """Records a heartbeat for this worker's trials in flight, every interval, in a thread."""

    def __init__(self, storage: Any, interval: int) -> None:
        self.storage, self.interval = storage, interval
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sweep-heartbeat")
        from mse_train.training import apart  # torch: only where a sweep trains

        apart.fork_safe(self._thread)
        self._thread.start()

    def track(self, trial_ids: list[int]) -> None:
        with self._lock:
            self._ids = list(trial_ids)
        self._beat()

    def _beat(self) -> None:
        with self._lock:
            ids = list(self._ids)
        with _WRITING:
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a storage hiccup: the next beat tries again
                    self.storage.record_heartbeat(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
