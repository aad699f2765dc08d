"""Each cross-validated sweep trial's out-of-fold predictions, kept for its ensemble.

A trial scored by K-fold CV predicts every training row once, from the fold that held it
out. Those predictions (target units, float64, in the table's row order) are written to
`<sweep folder>/oof/<study>-<trial>.npy` atomically, and the trial's result in the study
records the file's sha256, its shape and the digest of the data it predicts. Read back,
a file must match that record: one edited, truncated, or left by another study is refused,
never used (ensemble.py builds from these).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mse_train.config.schema import Config
from mse_train.errors import OutputError
from mse_train.outputs import fsio

FOLDER = "oof"
KEY = "oof"  # in a trial's result: {"file", "sha256", "rows", "targets", "data"}
# The out-of-fold predictions an ensemble's selection holds in memory at most (float64
# bytes): beyond it, only the trials of lowest out-of-fold MSE that fit take part (as
# Caruana et al. 2004 prune the model library to its best), so a sweep of many trials on
# many rows does not run out of memory. 1 GiB: 134 trials of a million rows, every trial of
# the sweeps init writes.
MEMORY = 1 << 30


def room(rows: int, targets: int) -> int:
    """How many trials' predictions of `rows` x `targets` fit in MEMORY (at least 2)."""
    return max(2, MEMORY // max(1, rows * targets * 8))


def data_key(cfg: Config) -> str:
    """What the predictions are of: the data section and targets (the same rows, the same
    preprocessing fitted on them). Trials with equal keys can share one ensemble."""
    text = json.dumps([cfg.data.model_dump(mode="json"), cfg.targets], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def combine(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """One array in table row order from each fold's (row indices, predictions); None unless
    the folds hold every row exactly once."""
    if not parts:
        return None
    n = sum(len(rows) for rows, _ in parts)
    out = np.full((n, parts[0][1].shape[1]), np.nan)
    seen = np.zeros(n, dtype=bool)
    for rows, predicted in parts:
        if len(rows) and (rows.max() >= n or seen[rows].any()):
            return None
        seen[rows] = True
        out[rows] = predicted
    return out if bool(seen.all()) else None


def file_name(study: str, number: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', study)}-{number}.npy"


def write(folder: Path, study: str, number: int, predictions: np.ndarray, data: str) -> dict[str, Any]:
    """Write one trial's out-of-fold predictions; returns the record its result keeps."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(predictions, dtype=np.float64), allow_pickle=False)
    raw = buffer.getvalue()
    name = file_name(study, number)
    fsio.ensure_writable_dir(folder / FOLDER)
    fsio.write_bytes(folder / FOLDER / name, raw)
    rows, targets = predictions.shape
    return {
        "file": name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "rows": rows,
        "targets": targets,
        "data": data,
    }


def read(folder: Path, record: Any, number: int, fix: str) -> np.ndarray | None:
    """Trial `number`'s predictions as its `record` describes them; None when the file is
    gone (its trial is left out); an OutputError (exit 2) when the file does not match."""
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        return None
    path = folder / FOLDER / Path(str(record["file"])).name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot read trial {number}'s out-of-fold predictions: {exc.strerror}"
        ) from None
    shape = (record.get("rows"), record.get("targets"))
    problem = None
    if hashlib.sha256(raw).hexdigest() != record.get("sha256"):
        problem = "its contents are not those the trial wrote (edited, truncated, or another study's)"
    else:
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError) as exc:
            problem = f"it is not a NumPy array file ({exc})"
        else:
            if array.dtype != np.float64 or array.shape != shape or not np.isfinite(array).all():
                problem = (
                    f"it holds {array.dtype} {list(array.shape)}, not {shape[0]} x {shape[1]} finite float64"
                )
    if problem is not None:
        raise OutputError(
            f"{path}: trial {number}'s out-of-fold predictions do not check out: {problem}",
            [f"put the sweep's own file back, or delete it to leave trial {number} out of the ensemble", fix],
        )
    checked: np.ndarray = array
    return checked
