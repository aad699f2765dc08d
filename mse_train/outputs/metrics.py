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
from typing import Any

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
    """The rows of a metrics.csv, numbers as floats (empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def write_json(path: Path, data: dict[str, Any]) -> None:
    fsio.write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
