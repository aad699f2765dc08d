"""Drift: new rows that do not look like the rows the model learned from.

At training time `profile` records, per feature, what the training rows held: the range of
a numeric column and how many cells were empty (the categories are already in the
preprocessing). At `eval`/`predict` time `Watch` counts, chunk by chunk, the rows outside
that range, the categories training never saw and the empty cells, and `Watch.findings`
says which of them are drift rather than chance.

The rule, so that clean data stays quiet. If the new rows were drawn like the training
rows, the share of them outside the training range of a column is Beta(2, n - 1)
distributed (n observed training values; the share outside the sample minimum and maximum
is the sum of two uniform spacings), so the count of m new rows outside it is
beta-binomial(m, 2, n - 1); the count of empty cells is beta-binomial(m, a + 1, n - a + 1)
after a empty cells in n training rows. A column is reported when its count is one that
chance gives less than once in a thousand (`ALPHA`), and
  - for empty cells, only when the share is also `MISSING_MARGIN` (5 points) above
    training's, so that a large table does not flag a tiny real change;
  - for a numeric column, also whenever a value lies more than the whole training range
    beyond it (`FAR`): that is extrapolation, however few rows do it.
An unseen category (kept under `data.unknown_category: ignore`, encoded as all zeros) is
always reported: the model has never seen it, whatever the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mse_train.data.preprocess import MISSING_CATEGORY, Preprocessor
from mse_train.errors import EXAMPLES

ALPHA = 1e-3  # a count reported as drift is one that chance gives less often than this
MISSING_MARGIN = 0.05  # and, for empty cells, a share at least this much above training's
FAR = 1.0  # a value beyond the training range by more than this many ranges is always reported


# ------------------------------------------------------------------ training side
# The profile (each numeric feature's range and empty cells, each categorical feature's
# empty cells, in the training rows) is made by fitting.fit, with the preprocessing.


def problems(data: Any, pre: Preprocessor, key: str = "profile") -> list[str]:
    """Everything wrong with a stored `profile`; empty when `Watch` may use it."""
    if not isinstance(data, dict) or set(data) != {"rows", "numeric", "categorical"}:
        return [f"`{key}` must be a mapping of rows, numeric and categorical, got {_short(data)}"]
    n = data["rows"]
    if not _whole(n) or n < 1:
        return [f"`{key}.rows` must be a whole number >= 1, got {_short(n)}"]
    found = []
    expected = {"numeric": [c.name for c in pre.numeric], "categorical": pre.categorical_names}
    for part, names in expected.items():
        entries = data[part]
        if not isinstance(entries, dict) or sorted(entries) != sorted(names):
            found.append(f"`{key}.{part}` must describe the columns {names}, got {_short(entries)}")
            continue
        for name, entry in entries.items():
            where = f"{key}.{part}.{name}"
            fields = {"min", "max", "missing"} if part == "numeric" else {"missing"}
            if not isinstance(entry, dict) or set(entry) != fields:
                found.append(f"`{where}` must hold {', '.join(sorted(fields))}, got {_short(entry)}")
                continue
            if not _whole(entry["missing"]) or not 0 <= entry["missing"] < n:
                found.append(f"`{where}.missing` must be a whole number from 0 to {n - 1}")
            if part == "numeric":
                low, high = entry["min"], entry["max"]
                if not (_number(low) and _number(high) and low <= high):
                    found.append(f"`{where}` must have finite numbers min <= max, got {low!r}, {high!r}")
    return found


# ------------------------------------------------------------------ use side
@dataclass
class Finding:
    """One column's drift: what, how many rows of how many, and a sentence saying so."""

    column: str
    kind: str  # "range", "words", "category" or "missing"
    rows: int
    of: int
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "rows": self.rows, "of": self.of, **self.details}


@dataclass
class _Range:
    below: int = 0
    above: int = 0
    observed: int = 0
    lowest: float = math.inf
    highest: float = -math.inf


class Watch:
    """Counts what new rows hold, chunk by chunk, against a training profile."""

    def __init__(self, stored: dict[str, Any], pre: Preprocessor) -> None:
        self.stored = stored
        self.pre = pre
        self.rows = 0
        self.ranges = {c.name: _Range() for c in pre.numeric}
        self.missing = dict.fromkeys(pre.features, 0)
        self.unseen: dict[str, dict[str, int]] = {c.name: {} for c in pre.categorical}
        # numeric feature -> cells that held words (read as empty), and the first few: (where, word)
        self.words: dict[str, tuple[int, list[tuple[str, str]]]] = {}

    def observe_words(self, name: str, count: int, examples: list[tuple[str, str]]) -> None:
        """`count` cells of numeric feature `name` held words (`data.non_numeric: missing` read
        them as empty); `examples`: (where, word) of some, "line 7" or "row 6"."""
        before, shown = self.words.get(name, (0, []))
        self.words[name] = (before + count, (shown + examples)[:EXAMPLES])

    def observe(self, frame: pd.DataFrame) -> None:
        """Count one chunk of raw rows (before empty cells are dropped or filled)."""
        self.rows += len(frame)
        for name, counts in self.ranges.items():
            values = frame[name].to_numpy(dtype=np.float64)
            empty = np.isnan(values)
            self.missing[name] += int(empty.sum())
            observed = values[~empty]
            if not len(observed):
                continue
            entry = self.stored["numeric"][name]
            counts.observed += len(observed)
            counts.below += int((observed < entry["min"]).sum())
            counts.above += int((observed > entry["max"]).sum())
            counts.lowest = min(counts.lowest, float(observed.min()))
            counts.highest = max(counts.highest, float(observed.max()))
        for col in self.pre.categorical:
            cells: pd.Series[Any] = frame[col.name]
            blank = cells.isna()
            self.missing[col.name] += int(blank.sum())
            if self.pre.unknown_category != "ignore":
                continue  # under `error` an unseen category stops the command instead
            unseen = cells[~blank & ~cells.isin(col.categories)]
            for value, count in unseen.value_counts(sort=False).items():
                self.unseen[col.name][str(value)] = self.unseen[col.name].get(str(value), 0) + int(count)

    def findings(self) -> list[Finding]:
        """The columns whose new rows are drift by the module's rule, in feature order."""
        found = []
        n = int(self.stored["rows"])
        for name in self.pre.features:
            if name in self.ranges:
                found += self._range(name)
            found += self._words(name)
            found += self._unseen(name)
            found += self._missing(name, n)
        return found

    def _range(self, name: str) -> list[Finding]:
        counts, entry = self.ranges[name], self.stored["numeric"][name]
        outside = counts.below + counts.above
        if not outside:
            return []
        low, high = float(entry["min"]), float(entry["max"])
        observed_training = int(self.stored["rows"]) - int(entry["missing"])
        width = high - low
        beyond = max(low - counts.lowest, counts.highest - high, 0.0)
        far = beyond > FAR * width
        chance = beta_binomial_sf(outside, counts.observed, 2.0, max(observed_training - 1, 1))
        if chance >= ALPHA and not far:
            return []
        furthest = counts.lowest if low - counts.lowest >= counts.highest - high else counts.highest
        how_far = (
            f"{beyond / width:.3g} training ranges beyond it" if width > 0 else "training held one value"
        )
        sides = [f"{k} below" for k in [counts.below] if k] + [f"{k} above" for k in [counts.above] if k]
        return [
            Finding(
                name,
                "range",
                outside,
                counts.observed,
                f"`{name}`: {outside} of {counts.observed} row(s) outside the training range "
                f"{_num(low)} to {_num(high)} ({', '.join(sides)}); furthest {_num(furthest)}, {how_far}",
                {
                    "below": counts.below,
                    "above": counts.above,
                    "train_min": low,
                    "train_max": high,
                    "furthest": furthest,
                    "ranges_beyond": beyond / width if width > 0 else None,
                },
            )
        ]

    def _words(self, name: str) -> list[Finding]:
        """Words where training had numbers: always reported, as an unseen category is."""
        count, examples = self.words.get(name, (0, []))
        if not count:
            return []
        shown = ", ".join(f"{where}: {word!r}" for where, word in examples)
        more = f" and {count - len(examples)} more" if count > len(examples) else ""
        return [
            Finding(
                name,
                "words",
                count,
                self.rows,
                f"`{name}`: {count} of {self.rows} cell(s) hold words where training had numbers "
                f"({shown}{more}); read as empty cells (`data.non_numeric: missing`)",
                {"examples": {where: word for where, word in examples}},
            )
        ]

    def _unseen(self, name: str) -> list[Finding]:
        seen = self.unseen.get(name)
        if not seen:
            return []
        rows = sum(seen.values())
        values = sorted(seen, key=lambda v: -seen[v])
        shown = ", ".join(repr(v) for v in values[:EXAMPLES]) + (" ..." if len(values) > EXAMPLES else "")
        return [
            Finding(
                name,
                "category",
                rows,
                self.rows,
                f"`{name}`: {rows} of {self.rows} row(s) hold categories training never saw ({shown}); "
                "they are encoded as all zeros",
                {"values": {v: seen[v] for v in values}},
            )
        ]

    def _missing(self, name: str, n: int) -> list[Finding]:
        empty, m = self.missing[name], self.rows
        part = "numeric" if name in self.ranges else "categorical"
        trained = int(self.stored[part][name]["missing"])
        share, trained_share = empty / m if m else 0.0, trained / n
        if not empty or share - trained_share < MISSING_MARGIN:
            return []
        if beta_binomial_sf(empty, m, trained + 1.0, n - trained + 1.0) >= ALPHA:
            return []
        treated = {
            "mean": "filled with the training mean",
            "median": "filled with the training median",
            "drop": "those rows get no prediction",
        }.get(self.pre.missing, "")
        if part == "categorical" and self.pre.missing in ("mean", "median"):
            treated = f"encoded as the {MISSING_CATEGORY!r} category"
        return [
            Finding(
                name,
                "missing",
                empty,
                m,
                f"`{name}`: {empty} of {m} row(s) empty ({share:.1%}; training rows: {trained_share:.1%})"
                + (f"; {treated}" if treated else ""),
                {"share": share, "train_share": trained_share},
            )
        ]


def beta_binomial_sf(k: int, m: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ beta-binomial(m, a, b).

    Summed over the shorter side, in log space: the terms from P(X = k) up to m, or one
    minus those from P(X = 0) below k; each term from the one before by their ratio.
    """
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    start, stop = (k, m + 1) if m - k < k else (0, k)
    j = np.arange(start, stop - 1, dtype=np.float64)  # P(X = j + 1) / P(X = j)
    log_ratio = np.log(m - j) - np.log(j + 1) + np.log(j + a) - np.log(m - j - 1 + b)
    log_first = _log_comb(m, start) + _log_beta(start + a, m - start + b) - _log_beta(a, b)
    total = float(np.exp(log_first + np.concatenate(([0.0], np.cumsum(log_ratio)))).sum())
    return min(1.0, total) if start == k else max(0.0, 1.0 - total)


def _log_comb(m: int, k: int) -> float:
    return math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _num(value: float) -> str:
    return f"{value:.6g}"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
