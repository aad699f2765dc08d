"""What a run writes beside its checkpoints: metrics.csv, summary.json, config.yaml.

Each is rewritten whole and atomically (fsio), so a reader or a crash never sees a
half-written row. metrics.csv is rewritten at checkpoints and at most every few seconds,
so its cost stays small however many epochs there are.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from mse_train.errors import UserError
from mse_train.outputs import fsio

BASE_COLUMNS = ["epoch", "train_loss", "val_loss", "train_end_loss", "lr", "penalty", "seconds"]
REFRESH_SECONDS = 5.0  # how often metrics.csv is refreshed between checkpoints


def columns_for(targets: Sequence[str], has_val: bool) -> list[str]:
    """metrics.csv columns: the base ones, then per-target MSE when there are several targets."""
    extra: list[str] = []
    if len(targets) > 1:
        extra += [f"train_mse_{t}" for t in targets]
        if has_val:
            extra += [f"val_mse_{t}" for t in targets]
    return BASE_COLUMNS + extra


class MetricsFile:
    """metrics.csv for one run; `rows` is the history the loop keeps."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self._written_at = 0.0

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        fsio.write_text(self.path, buffer.getvalue())
        self._written_at = time.monotonic()

    def maybe_write(self, rows: Sequence[dict[str, Any]]) -> None:
        if time.monotonic() - self._written_at >= REFRESH_SECONDS:
            self.write(rows)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.csv, numbers as floats (empty cells as None).

    The file may have been edited or replaced: anything but what `MetricsFile` writes is
    a UserError naming the line and column.
    """
    fix = "metrics.csv is written by `mse-train run`; restore it from the run, or rerun"
    line = 1
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            lacking = [c for c in READ_COLUMNS if c not in header]
            if lacking:
                raise UserError(
                    f"{path}: not a metrics.csv written by mse-train: no column(s) {', '.join(lacking)}",
                    [f"its first line is {', '.join(header[:10]) or '(empty)'}", fix],
                )
            rows = []
            for cells in reader:
                line = reader.line_num
                if not cells:
                    continue  # a blank line
                if len(cells) != len(header):
                    raise UserError(
                        f"{path}, line {line}: {len(cells)} fields, the header has {len(header)}", [fix]
                    )
                rows.append(_history_row(dict(zip(header, cells, strict=True)), f"{path}, line {line}", fix))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})", [fix]) from None
    except csv.Error as exc:
        raise UserError(f"{path}, line {line}: cannot be parsed as CSV: {exc}", [fix]) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return rows


READ_COLUMNS = ("epoch", "train_loss", "lr")  # what a plot needs from every metrics.csv


def _history_row(cells: dict[str, str], where: str, fix: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, text in cells.items():
        try:
            row[name] = float(text) if text.strip() else None
        except ValueError:
            raise UserError(f"{where}: `{name}` is {text[:40]!r}, not a number", [fix]) from None
    epoch = row["epoch"]
    if epoch is None or not math.isfinite(epoch) or epoch != int(epoch) or epoch < 0:
        raise UserError(f"{where}: `epoch` is {cells['epoch'][:40]!r}, not a whole number >= 0", [fix])
    if row["lr"] is None:
        raise UserError(f"{where}: `lr` is empty; every epoch has a learning rate", [fix])
    return row


LossUnits = Literal["standardised targets", "target units"]


def loss_units(standardize_target: bool) -> LossUnits:
    """The units of the losses a run records (summary.json's `loss_units`)."""
    return "standardised targets" if standardize_target else "target units"


# What `loss.reduction` makes of the squared errors; the units are summary.json's `loss_units`.
_REDUCTION = {"mean": "MSE", "sum": "squared error summed over rows"}


def loss_label(reduction: str | None, units: str | None) -> str:
    """A loss axis's label: which loss (`loss.reduction`) in which units (`loss_units`);
    plain "loss (units unknown)" when the run does not say."""
    if reduction not in _REDUCTION or not units:
        return "loss (units unknown)"
    return f"loss: {_REDUCTION[reduction]}, {units}"


def read_loss_kind(folder: Path) -> tuple[str | None, str | None]:
    """(`loss.reduction`, `loss_units`) of the run in `folder`, from its config.yaml (written
    when the run starts); None for what it does not say (no config.yaml, an edited one)."""
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    saved = saved if isinstance(saved, dict) else {}
    data, loss = saved.get("data"), saved.get("loss")
    reduction = loss.get("reduction") if isinstance(loss, dict) else None
    standardize = None
    if isinstance(data, dict):
        standardize = data.get("standardize_target")
        standardize = data.get("standardize") if standardize is None else standardize
    return (
        reduction if isinstance(reduction, str) else None,
        loss_units(standardize) if isinstance(standardize, bool) else None,
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    fsio.write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
