"""A `sweep:` section as a search space: Optuna distributions, and each trial's config.

Choices that are not plain values (a list of layer widths) go to Optuna as their JSON
text and come back as the value. A trial's config is the base config with its values
set, keys that do not apply to a swept choice dropped, and validated like any config.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mse_train.config import loading, yamlio
from mse_train.config.schema import Config, SweepConfig, SweepRange
from mse_train.errors import ConfigError

GRID_LIMIT = 4096  # combinations checked one by one before training (all of a grid's)
_PLAIN = (str, int, float, bool, type(None))


@dataclass
class Space:
    params: dict[str, list[Any] | SweepRange]
    method: str = "tpe"

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions by key (Optuna is an extra: imported only here)."""
        from optuna import distributions as dist

        out: dict[str, dist.BaseDistribution] = {}
        for key, values in self.params.items():
            if self.method == "grid":  # every value listed, a stepped range as its points
                out[key] = dist.CategoricalDistribution([_label(v) for v in _points(values)])
            elif isinstance(values, list):
                out[key] = dist.CategoricalDistribution([_label(v) for v in values])
            elif values.integer:
                step = int(values.step or 1)
                out[key] = dist.IntDistribution(int(values.low), int(values.high), log=values.log, step=step)
            else:
                out[key] = dist.FloatDistribution(values.low, values.high, log=values.log, step=values.step)
        return out

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's params (labels) -> config values, in the sweep's key order."""
        out = {}
        for key, values in self.params.items():
            if key not in params:
                continue
            label = params[key]
            if isinstance(values, list):
                out[key] = next(v for v in values if _label(v) == label)
            elif isinstance(label, bool) or not isinstance(label, (int, float)):
                raise ValueError(f"{key}: {label!r} is not a number of its range")
            else:
                out[key] = int(label) if values.integer else float(label)
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of every key's values (labels, as Optuna stores them), in order."""
        keys = list(self.params)
        points = [[_label(v) for v in _points(self.params[k])] for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*points)]

    def grid_size(self) -> int:
        return math.prod(len(_points(v)) for v in self.params.values())

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Every combination of the lists and each range's ends (config values)."""
        keys = list(self.params)
        for combo in itertools.product(*(_ends(self.params[k]) for k in keys)):
            yield dict(zip(keys, combo, strict=True))


def space_of(sweep: SweepConfig, doc: yamlio.Document, method: str) -> Space:
    """Check the ranges and keys of `sweep.params` (file/line errors) and build the space."""
    problems: list[str] = []
    for key, values in sweep.params.items():
        place = doc.where(("sweep", "params", key))
        head = key.split(".")[0]
        if head in ("sweep", "output"):
            problems.append(
                f"{place}: `{key}` cannot be searched; a sweep chooses model and training settings"
            )
        if isinstance(values, SweepRange):
            if values.low > values.high:
                problems.append(f"{place}: `{key}` has low {values.low:g} above high {values.high:g}")
            if values.log and values.low <= 0:
                problems.append(
                    f"{place}: `{key}` is on a log scale, so low must be > 0 (got {values.low:g})"
                )
            if values.log and values.step is not None:
                problems.append(f"{place}: `{key}`: give `log` or `step`, not both (Optuna takes one)")
            if values.integer and not all(float(v).is_integer() for v in (values.low, values.high)):
                problems.append(f"{place}: `{key}` is `integer: true`, so low and high must be whole numbers")
            if method == "grid" and values.step is None:
                problems.append(
                    f"{place}: `{key}` is a range without `step`, which a grid cannot list; "
                    "give a list of values or a step, or use method: random or tpe"
                )
        else:
            labels = [_label(v) for v in values]
            if len(set(labels)) != len(labels):
                problems.append(f"{place}: `{key}` lists a value twice")
    if problems:
        raise ConfigError(f"{doc.source}: {len(problems)} problem(s) in `sweep.params`", problems)
    return Space(dict(sweep.params), method)


def trial_config(
    doc: yamlio.Document, base: Path, overrides: Sequence[str], values: dict[str, Any], name: str
) -> tuple[Config, list[str]]:
    """The config of one trial (sweep section removed) and the keys dropped for its choices."""
    copied = yamlio.Document(copy.deepcopy(doc.data), doc.lines, doc.source)
    copied.data.pop("sweep", None)
    # a trial runs without the sweep section, so `--set sweep.KEY=...` (the sweep's own
    # settings, already applied to the sweep) must not bring back a `sweep:` without params
    trial_overrides = [o for o in overrides if not o.strip().startswith(("sweep.", "sweep="))]
    dropped: list[str] = []
    cfg = loading.from_document(copied, base, trial_overrides, name, values=values, dropped=dropped)
    return cfg, dropped


def check_trials(doc: yamlio.Document, base: Path, overrides: Sequence[str], space: Space, name: str) -> int:
    """Validate trial configs before any training: every combination of the lists and the
    ranges' ends, up to GRID_LIMIT of them. Returns how many were checked."""
    problems: list[str] = []
    checked = 0
    for values in itertools.islice(space.combinations(), GRID_LIMIT):
        checked += 1
        try:
            trial_config(doc, base, overrides, values, name)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
            for problem in exc.problems or [exc.summary]:
                line = f"with {shown}: {problem}"
                if line not in problems:
                    problems.append(line)
        if len(problems) >= 10:
            break
    if problems:
        raise ConfigError(
            f"{doc.source}: some trials of the sweep would not start; nothing was trained",
            [*problems, "change those values in `sweep.params`, or the base config they combine with"],
        )
    return checked


def _label(value: Any) -> Any:
    return value if isinstance(value, _PLAIN) else json.dumps(value)


def _points(values: list[Any] | SweepRange) -> list[Any]:
    if isinstance(values, list):
        return values
    assert values.step is not None
    count = math.floor((values.high - values.low) / values.step + 1e-9) + 1
    points = [values.low + i * values.step for i in range(count)]
    return [round(p) for p in points] if values.integer else points


def _ends(values: list[Any] | SweepRange) -> list[Any]:
    if isinstance(values, list):
        return values
    ends = [values.low, values.high] if values.low != values.high else [values.low]
    return [int(v) for v in ends] if values.integer else ends
