"""The run folder: one run at a time, never a system folder, an overwrite that cannot lose
the old run, and `Saver`, which writes checkpoints and metrics into it."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch

from mse_train import config
from mse_train.config import Config
from mse_train.data.prepare import Prepared
from mse_train.data.stream import Rows
from mse_train.data.stream_fit import Streamed
from mse_train.errors import OutputError
from mse_train.models import inference, networks
from mse_train.outputs import checkpoint, fsio, metrics
from mse_train.training import ridge
from mse_train.training.loop import Loop

MLFLOW_RECORD = "mlflow.json"  # with output.mlflow: the MLflow run this folder logs into
# What a run folder holds; a folder holding any of these is a previous run.
# Exact leave-one-out residuals keep an [n, min(n, inputs)] float64 basis: above these, none
LOO_MOST_SIDE = 4000  # inputs (or rows, when fewer): its eigendecomposition's side
LOO_MOST_CELLS = 50_000_000  # rows x that side (400 MB a copy)
RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "last.pt",
    "best.pt",
    "summary.json",
    "loss.png",
    MLFLOW_RECORD,
    "bags.csv",  # a bagged run's (outputs/bags.py)
)


def check(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to mix runs in one folder; True when resuming."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
        if not (out / "last.pt").exists():
            raise OutputError(
                f"{out}: nothing to resume: no last.pt in the run folder",
                ["run without --resume to start, or point --output-dir at the run to continue"],
            )
        return True
    if present and not overwrite:
        go_on = "continue it with --resume, " if "last.pt" in present else ""
        raise OutputError(
            f"{out}: already holds a run ({', '.join(present)})",
            [f"{go_on}replace it with --overwrite, or choose another folder with --output-dir"],
        )
    return False


def model_spec(cfg: Config, prepared: Prepared | Streamed) -> dict[str, Any]:
    """`networks.spec` of `cfg`'s model on `prepared`'s inputs: what a checkpoint stores."""
    return networks.spec(
        cfg.model,
        prepared.train.inputs,
        prepared.train.outputs,
        len(prepared.pre.numeric),
        **networks.category_sizes(prepared.pre.category_counts, cfg.data.category_embedding_size),
    )


class Saver:
    """Writes last.pt, best.pt and metrics.csv for one run."""

    def __init__(self, out: Path, cfg: Config, prepared: Prepared | Streamed) -> None:
        self.out = out
        self.cfg = config.to_dict(cfg)
        self.prepared = prepared
        self.model_spec = model_spec(cfg, prepared)
        self.metrics = metrics.MetricsFile(
            out / "metrics.csv", metrics.columns_for(cfg.targets, prepared.val is not None)
        )
        self._best_written: int | None = None
        self._config = cfg
        self._ridge: ridge.Ridge | None = None  # the closed form, fitted once for best.pt and last.pt

    def checkpoint(self, loop: Loop, final: bool = False) -> None:
        """metrics.csv, then best.pt if it changed, then last.pt: each atomically.

        The `final` call, when the loop has stopped, also stores in each checkpoint the
        absolute residuals of the validation rows under its own weights, from which
        `predict --interval` builds split-conformal intervals; best.pt is then rewritten. A
        linear model trained on every row (no validation rows) stores instead its training
        rows' exact leave-one-out residuals (the jackknife), where its weights are the ridge
        solution they are exact for.
        """
        state = loop.state_dict()
        progress = loop.progress
        best = {"epoch": progress.best_epoch, "loss": progress.best_loss}
        self.metrics.write(state["history"])
        if loop.best_weights is not None and (final or progress.best_epoch != self._best_written):
            residuals, why = self._residuals(loop.best_weights) if final else (None, None)
            self._save("best", progress.best_epoch, loop.best_weights, best, residuals, why)
            self._best_written = progress.best_epoch
        weights = state.pop("model")
        residuals, why = self._residuals(weights) if final else (None, None)
        self._save("last", progress.epoch, weights, best, residuals, why, training=state)

    def _residuals(self, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, str | None]:
        """|actual - predicted| of the validation rows (or the leave-one-out residuals of the
        training rows: `_leave_one_out`) in the targets' units, sorted per target; or None and
        why not (a key of checkpoint.NO_RESIDUALS)."""
        val = self.prepared.val
        model = networks.from_spec(self.model_spec)
        model.load_state_dict({k: v.detach().cpu() for k, v in weights.items()})
        if val is None:
            return self._leave_one_out(model)
        if isinstance(val, Rows):  # streamed validation rows: no intervals (README)
            return None, "streamed"
        predicted = inference.predict(model, torch.from_numpy(val.x)).numpy()
        pre = self.prepared.pre
        residuals = np.abs(pre.unscale_targets(predicted) - pre.unscale_targets(val.y))
        if not np.isfinite(residuals).all():  # weights that overflow on some row: no intervals
            return None, "not_finite"
        return torch.from_numpy(np.sort(residuals, axis=0)), None

    def _leave_one_out(self, model: torch.nn.Module) -> tuple[torch.Tensor | None, str | None]:
        """A linear model (`nn.Linear` on the inputs) trained on every row, unweighted: each
        training row's residual under the fit on every other row, e_i / (1 - h_ii), with h_ii
        the hat matrix's diagonal of the ridge problem its loss and `regularization.l2` define
        (training/ridge.py). As with validation residuals, a new row drawn like the training
        rows falls within the ceil((n + 1)P)-th smallest of them with probability about P
        (the jackknife; Barber et al. 2021 bound its coverage for stable fits like ridge)."""
        train, cfg = self.prepared.train, self._config
        if not isinstance(model, torch.nn.Linear):
            return None, "no_validation"
        if isinstance(train, Rows):
            return None, "streamed"
        if train.w is not None:
            return None, "weighted"
        if cfg.regularization.l1 != 0:
            return None, "not_solved"
        n, p = train.x.shape
        if min(n, p) > LOO_MOST_SIDE or n * min(n, p) > LOO_MOST_CELLS:
            return None, "too_large"
        y = train.y.astype(np.float64).reshape(n, -1)
        alpha = ridge.alpha_of(cfg.regularization.l2, cfg.loss.reduction, n, y.shape[1], cfg.train.batch_size)
        if self._ridge is None:
            self._ridge = ridge.Ridge(train.x.astype(np.float64), y, alphas=(alpha,))
        predicted = inference.predict(model, torch.from_numpy(train.x)).numpy().astype(np.float64)
        loo = ridge.leave_one_out(self._ridge, y, predicted.reshape(n, -1), alpha)
        if loo is None:
            return None, "not_solved"
        pre = self.prepared.pre
        residuals = np.abs(pre.unscale_targets(y) - pre.unscale_targets(y - loo))
        if not np.isfinite(residuals).all():
            return None, "not_finite"
        return torch.from_numpy(np.sort(residuals, axis=0)), None

    def _save(
        self,
        kind: str,
        epoch: int,
        weights: dict[str, torch.Tensor],
        best: dict[str, Any],
        residuals: torch.Tensor | None,
        no_residuals: str | None,
        training: dict[str, Any] | None = None,
    ) -> None:
        checkpoint.save(
            self.out / f"{kind}.pt",
            checkpoint.build(
                kind,
                epoch,
                self.model_spec,
                weights,
                self.prepared.pre,
                self.cfg,
                self.prepared.digests,
                best,
                training=training,
                residuals=residuals,
                profile=self.prepared.profile,
                no_residuals=no_residuals,
                residuals_from="validation" if self.prepared.val is not None else "leave_one_out",
            ),
        )


# ------------------------------------------------------------------ one run at a time
# Seconds a run waits for the folder's lock: a holder keeps it for its whole run, so this
# only rides out the moment two processes open the lock's database together, where a
# lock that never waited refused both (15 of 150 pairs of processes forked to take it at
# once; tests/test_hostile_inputs.py takes 30 such pairs).
CONTENTION = 1.0
LOCK_FILE = ".mse-train.lock"  # in the folder; it stays after release, holding no lock


@contextlib.contextmanager
def lock(out: Path, shared: bool = False) -> Iterator[None]:
    """Hold the run folder for this process: a second run, resume or overwrite is refused.

    filelock's reader/writer lock on LOCK_FILE in the folder (SQLite's OS locks: fcntl on
    Unix, LockFileEx on Windows), so it is released however the process ends, even by
    kill -9: a lock file left by a dead process blocks nothing. `shared`: the workers of one
    sweep hold it together (each writes whole files atomically, from the study they share);
    a run, cv or overwrite, which take it alone, still cannot take the folder from them.
    """
    try:
        held = filelock.ReadWriteLock(out / LOCK_FILE, timeout=CONTENTION, is_singleton=False)
        (held.acquire_read if shared else held.acquire_write)()
    except filelock.Timeout:
        raise OutputError(
            f"{out}: another mse-train run is using this folder",
            ["wait for it to finish, or choose another folder with --output-dir"],
        ) from None
    except (OSError, sqlite3.Error, ValueError, NotImplementedError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutputError(
            f"{out}: cannot lock the run folder: {why or type(exc).__name__}",
            ["choose a folder on a local disk (its file system must support file locks)"],
        ) from None
    try:
        yield
    finally:
        held.release()
        held.close()


# ------------------------------------------------------------------- folders to refuse
# Folders that are never a run folder: writing config.yaml or last.pt into them harms the system.
_SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
)
_SYSTEM_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var")


def check_not_a_system_folder(out: Path) -> None:
    """Refuse `/`, the home folder, and system folders as the run folder."""
    folder = Path(os.path.realpath(out))
    home = Path(os.path.realpath(Path.home()))
    inside = [t for t in _SYSTEM_TREES if folder == Path(t) or Path(t) in folder.parents]
    if inside or str(folder) in _SYSTEM_FOLDERS or folder == home:
        what = f"is inside the system folder {inside[0]}" if inside else "is a system or home folder"
        raise OutputError(
            f"output.dir {out} {what}; a run writes config.yaml, checkpoints and metrics there",
            ["give the run its own folder, e.g. runs/NAME next to the config (the default)"],
        )


# ------------------------------------------------------------- --overwrite, safely
PREVIOUS = ".previous-run"  # where --overwrite keeps the old run until the new one finishes


class Replacement:
    """`--overwrite` without losing the old run to a new one that fails.

    The old run's files move into `.previous-run/` inside the folder. When the new run
    finishes (`done`), they are deleted; when it diverges or fails (`undo`), its files are
    removed and the old ones move back. An interrupted new run keeps them aside until a
    resume of it finishes.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.aside = out / PREVIOUS

    def move_aside(self) -> None:
        """Put the old run's files aside (a folder already aside is the last finished run: kept)."""
        keep = not self.aside.exists()
        self.aside.mkdir(exist_ok=True)
        for name in (*RUN_FILES, "tensorboard"):
            path = self.out / name
            if not path.exists():
                continue
            if keep:
                os.replace(path, self.aside / name)
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def done(self) -> None:
        shutil.rmtree(self.aside, ignore_errors=True)

    def discard(self) -> None:
        """Remove the new run's files, where no old run was put aside (a folder without a run
        before: `check` refused any other), for a run that keeps nothing unless it finishes."""
        if self.aside.exists():
            return
        self._remove_new(ignore_errors=True)
        fsio.remove_stale_temporaries(self.out)

    def _remove_new(self, ignore_errors: bool = False) -> None:
        """The new run's files, gone."""
        for name in (*RUN_FILES, "tensorboard"):
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=ignore_errors)
            else:
                path.unlink(missing_ok=True)

    def undo(self) -> bool:
        """Put the old run back in place of the new one; False when there was none aside."""
        if not self.aside.is_dir():
            return False
        self._remove_new()
        for saved in self.aside.iterdir():
            os.replace(saved, self.out / saved.name)
        self.aside.rmdir()
        return True
