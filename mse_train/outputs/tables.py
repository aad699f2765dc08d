"""Small CSV tables written whole and atomically: cv.csv and a sweep's leaderboard.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mse_train.outputs import fsio


def write_rows(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """One header line, then one line per row; None and missing keys are empty cells."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in columns])
    fsio.write_text(path, text.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
