"""`mse-train export`: a checkpoint as an ONNX file, checked against `predict` before it is written.

The graph (use/onnx_graph.py) takes the raw columns. Before the file is written, the
graph runs in onnxruntime on rows built from the checkpoint (each numeric column around
its mean, each category, empty cells and an unseen category) and on the rows of
`--check CSV`, and its predictions are compared with what `mse-train predict` writes for
the same rows, through predict's own code. A difference beyond TOLERANCE of a target's
standard deviation refuses the export (exit 1) and leaves nothing behind.
"""

from __future__ import annotations

import csv
import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mse_train import __version__
from mse_train.data import table
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import EXAMPLES, EnvironmentProblem, ExportMismatch
from mse_train.models import inference
from mse_train.outputs import fsio
from mse_train.use import evaluate, onnx_graph, predict

PACKAGES = ("onnx", "onnxruntime")
INSTALL = "pip install 'mse-train[onnx]'"
TOLERANCE = 1e-5  # of a target's standard deviation
# On top, float32 rounding, per row: a float32 output cannot come closer to predict's number
# than its own spacing, and onnxruntime rounds each intermediate value of the network
# differently (another summation order): allow a few units in the last place of the output
# and of every intermediate value, weighted by how much it moves the output
# (inference.rounding_scale). Rows far outside the training range (inputs at 1e6) have
# intermediate values at 1e6 and more, rounded at 0.06 and more, and get an allowance to
# match; rows near the training data keep one near 1e-5 std, where a wrong weight shows.
ULPS = 4
EPS32 = float(np.finfo(np.float32).eps)
SPREAD = (-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0)  # probe values: mean + k std of a numeric column
CHUNK_ROWS = 100_000


@dataclass
class Exported:
    path: Path
    inputs: dict[str, str]  # column -> float32 | string, in the graph's order
    targets: list[str]
    max_difference: float  # largest |graph - predict| over rows and targets, in target stds
    worst_target: str
    probe_rows: int  # rows built from the checkpoint
    check_rows: int  # rows of --check
    nan_rows: int  # rows the policies refuse, whose prediction is NaN in the graph and in predict

    def as_json(self) -> dict[str, Any]:
        return {
            "output": str(self.path),
            "inputs": self.inputs,
            "targets": self.targets,
            "max_difference": self.max_difference,
            "tolerance": TOLERANCE,
            "rows_compared": self.probe_rows + self.check_rows,
            "probe_rows": self.probe_rows,
            "check_rows": self.check_rows,
            "nan_rows": self.nan_rows,
        }


def check_available() -> None:
    """Stop before any work, with the fix, when the onnx extra is not installed."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise EnvironmentProblem(
            f"export needs the {' and '.join(missing)} package(s), which are not installed",
            [f"install them with: {INSTALL}"],
        )


def inputs_from_frame(frame: pd.DataFrame, pre: Preprocessor) -> dict[str, np.ndarray]:
    """The graph's inputs from columns as the CSV reader types them: float32 with NaN for an
    empty cell, strings with "" for one. Each is a [rows, 1] array."""
    feed = {}
    for name, kind in onnx_graph.input_types(pre).items():
        column = frame[name]
        if kind == "string":
            feed[name] = column.fillna("").to_numpy(dtype=object).reshape(-1, 1)
        else:
            feed[name] = column.to_numpy(dtype=np.float32).reshape(-1, 1)
    return feed


def export(ckpt_path: Path, out_path: Path, check_csv: Path | None = None) -> Exported:
    """Build the graph of `ckpt_path`, compare it with predict, and only then write `out_path`."""
    check_available()
    fsio.check_writable(out_path)
    _, pre, model, delimiter = evaluate.load(ckpt_path)
    if check_csv is not None:  # a missing column is reported before any work
        table.check_columns(
            check_csv,
            table.read_header(check_csv, delimiter),
            pre.features,
            "feature the model was trained on",
        )
    graph = onnx_graph.build(pre, model, __version__).SerializeToString()
    session = _session(graph)
    # (where a row comes from, the graph's predictions, predict's, float32 rounding of the
    # rows' intermediate values), one entry per set of rows
    compared: list[tuple[Callable[[int], str], np.ndarray, np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory(prefix="mse-train-export-") as tmp:
        folder = Path(tmp)
        accepted, refused = probe_rows(pre)
        probe = _write_rows(folder / "probe.csv", pre.features, accepted, delimiter)
        want = _predicted(ckpt_path, probe, folder, pre, delimiter)
        compared.append(
            (
                lambda r: f"row {r} built from the checkpoint,",
                _run(session, probe, pre, delimiter),
                want,
                _rounding(model, probe, pre, delimiter),
            )
        )
        if refused:  # predict stops at these rows: the graph must give NaN
            probe = _write_rows(folder / "refused.csv", pre.features, refused, delimiter)
            want = np.full((len(refused), len(pre.targets)), np.nan)
            compared.append(
                (
                    lambda r: f"row {r} built from the checkpoint, which predict refuses,",
                    _run(session, probe, pre, delimiter),
                    want,
                    np.zeros_like(want),
                )
            )
        if check_csv is not None:
            want = _predicted(ckpt_path, check_csv, folder, pre, delimiter)
            compared.append(
                (
                    lambda r: f"{check_csv}, data row {r},",
                    _run(session, check_csv, pre, delimiter),
                    want,
                    _rounding(model, check_csv, pre, delimiter),
                )
            )
    worst, target, problems = _compare(compared, pre)
    check_rows = len(compared[-1][1]) if check_csv is not None else 0
    if problems:
        raise ExportMismatch(
            f"{out_path}: not written: the ONNX graph's predictions differ from `mse-train predict`'s",
            [
                *problems,
                f"compared the graph in onnxruntime with predict on {len(accepted) + len(refused)} rows "
                f"built from the checkpoint{f' and {check_rows} rows of {check_csv}' if check_csv else ''}; "
                f"allowed: {TOLERANCE:g} of each target's standard deviation, plus {ULPS} float32 "
                "units in the last place of the prediction and of each value the network computes "
                "on the way",
                "this is a bug in mse-train's export; please report it with the checkpoint",
            ],
        )
    fsio.write_bytes(out_path, graph)
    nan_rows = sum(int(np.isnan(want).any(axis=1).sum()) for _, _, want, _ in compared)
    return Exported(
        out_path, onnx_graph.input_types(pre), pre.target_names, worst, target,
        len(accepted) + len(refused), check_rows, nan_rows,
    )  # fmt: skip


def probe_rows(pre: Preprocessor) -> tuple[list[list[str]], list[list[str]]]:
    """CSV cells of rows that exercise every step: rows predict accepts, and rows it refuses.

    Numbers around each column's mean (and its fill value); every category; then, one
    column at a time, an empty cell and an unseen category. Which of those predict
    accepts depends on the policies (an empty cell under `drop` is accepted and left empty).
    """
    values: dict[str, list[str]] = {}
    for num in pre.numeric:
        values[num.name] = [repr(num.mean + k * num.std) for k in SPREAD]
        if num.fill is not None:
            values[num.name].append(repr(num.fill))
    for cat in pre.categorical:
        values[cat.name] = list(cat.categories)
    rows = max(len(v) for v in values.values())
    base = [[values[f][r % len(values[f])] for f in pre.features] for r in range(rows)]
    accepted: list[list[str]] = list(base)
    refused: list[list[str]] = []
    for i, name in enumerate(pre.features):
        edits = [("", pre.missing != "error")]
        if name in pre.categorical_names:
            known = set(values[name])
            unseen = next(f"unseen-{k}" for k in range(len(known) + 1) if f"unseen-{k}" not in known)
            edits.append((unseen, pre.unknown_category == "ignore"))
        for cell, accepts in edits:
            row = list(base[0])
            row[i] = cell
            (accepted if accepts else refused).append(row)
    return accepted, refused


def _session(graph: bytes) -> Any:
    import onnxruntime  # type: ignore[import-untyped]  # ships no type hints

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _write_rows(path: Path, header: Sequence[str], rows: list[list[str]], delimiter: str) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _run(session: Any, path: Path, pre: Preprocessor, delimiter: str) -> np.ndarray:
    """The graph's predictions for a CSV, its cells read as predict reads them."""
    out = [np.empty((0, len(pre.targets)), np.float32)]
    for view, _ in table.read_chunks(
        path, pre.features, pre.categorical_names, delimiter, CHUNK_ROWS, pre.non_numeric
    ):
        out.append(session.run([onnx_graph.OUTPUT], inputs_from_frame(view.frame, pre))[0])
    return np.concatenate(out)


def _predicted(ckpt_path: Path, path: Path, folder: Path, pre: Preprocessor, delimiter: str) -> np.ndarray:
    """What `mse-train predict` writes for the rows of `path` (NaN where it leaves a cell empty)."""
    out = folder / "predicted.csv"
    predict.predict(ckpt_path, path, out)
    names = [f"{t}_pred" for t in pre.target_names]
    # predict writes the shortest text of each float32 (predict.float32_text): read back as
    # float32, it is the value predict computed; an empty cell is a skipped row.
    with open(out, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader)
        at = [len(header) - len(names) + j for j in range(len(names))]  # predict appends them last
        if [header[k] for k in at] != names:
            raise RuntimeError(f"predict wrote the columns {header[-len(names) :]}, not {names}")
        rows = [[float(np.float32(row[k])) if row[k] else np.nan for k in at] for row in reader]
    return np.array(rows, dtype=np.float64).reshape(-1, len(names))


def _rounding(model: torch.nn.Module, path: Path, pre: Preprocessor, delimiter: str) -> np.ndarray:
    """Per row and target, in the target's units: how far float32 rounding of the network's
    intermediate values can move the prediction (one unit in the last place of each)."""
    std = np.array([t.std for t in pre.targets])
    out = [np.zeros((0, len(pre.targets)))]
    for view, _ in table.read_chunks(
        path, pre.features, pre.categorical_names, delimiter, CHUNK_ROWS, pre.non_numeric
    ):
        x = torch.from_numpy(np.nan_to_num(pre.features_array(view)))  # a refused row: no allowance
        scale = inference.rounding_scale(model, x).numpy()
        out.append(np.where(np.isfinite(scale), scale, 0.0) * EPS32 * std)
    return np.concatenate(out)


def _compare(
    compared: list[tuple[Callable[[int], str], np.ndarray, np.ndarray, np.ndarray]], pre: Preprocessor
) -> tuple[float, str, list[str]]:
    """The largest difference in target stds, its target, and the rows beyond tolerance."""
    std = np.array([t.std for t in pre.targets])
    worst, target, problems, failed = 0.0, pre.target_names[0], [], 0
    for source, got32, want, rounding in compared:
        got = got32.astype(np.float64)
        nan_mismatch = np.isnan(got) != np.isnan(want)
        diff = np.abs(got - want)
        diff[np.isnan(got) & np.isnan(want)] = 0.0
        last_place = np.spacing(np.abs(np.nan_to_num(want)).astype(np.float32)).astype(np.float64)
        allowed = TOLERANCE * std + ULPS * (last_place + rounding)
        bad = nan_mismatch | (diff > allowed)
        relative = np.where(nan_mismatch, 0.0, diff) / std
        if relative.size and float(relative.max()) > worst:
            worst = float(relative.max())
            target = pre.target_names[int(np.argmax(relative.max(axis=0)))]
        for row, col in zip(*np.nonzero(bad), strict=True):
            failed += 1
            if failed <= EXAMPLES:
                problems.append(
                    f"{source(row + 1)} target `{pre.target_names[col]}` (std {std[col]:.6g}): graph "
                    f"{float(got[row, col]):.9g}, predict {_shown(float(want[row, col]))}"
                )
    if failed > EXAMPLES:
        problems.append(f"and {failed - EXAMPLES} more")
    return worst, target, problems


def _shown(value: float) -> str:
    return "none (it refuses the row or leaves it empty)" if np.isnan(value) else f"{value:.9g}"
