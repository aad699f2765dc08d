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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mse_train.config import loading, yamlio
from mse_train.config.schema import Config, SweepConfig, SweepRange
from mse_train.errors import ConfigError

GRID_LIMIT = 4096  # combinations checked one by one before training (all of a grid's)
_PLAIN = (str, int, float, bool, type(None))


Values = list[Any] | SweepRange | dict[Any, Any]  # choices, a range, or choices with branches


@dataclass
class Space:
    """`params`: key -> a list of choices, a range, or (a dict) choices each with the keys
    searched only in its trials: `{choice: {key: values, ...} | None}` (branches may nest).
    Optuna names each parameter by its dotted key, in whichever branch it is searched."""

    params: dict[str, Values]
    method: str = "tpe"

    def suggest(self, trial: Any) -> None:
        """Ask `trial` (Optuna's, from `study.ask()`) for a value of every key that applies:
        the keys of a branch only once its choice is made (define-by-run, as Optuna's
        conditional search spaces are written)."""
        _suggest(trial, self.params, self.method)

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's params (labels) -> config values, in the sweep's key order."""
        out: dict[str, Any] = {}
        _decode(self.params, params, out)
        return out

    def keys(self) -> list[str]:
        """Every key searched, branches' keys after the choice that brings them, each once."""
        return list(self.flat())

    def flat(self) -> dict[str, list[Any] | SweepRange]:
        """Each key's values where it is first searched (a choice with branches: its choices)."""
        out: dict[str, list[Any] | SweepRange] = {}
        _flatten(self.params, out)
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of every key's values (labels, as Optuna stores them), in order;
        a choice with branches combines each choice with its own keys' combinations."""
        return list(_combos(self.params, lambda v: [_label(p) for p in _points(v)], labels=True))

    def start(self, cfg: Config) -> dict[str, Any] | None:
        """The point of `cfg`'s own values (labels, as Optuna stores them), for the search's
        first trial: so a sweep scores the config it was started from beside what it finds.
        A value below or above a range is taken at the range's end (`regularization.l2: 0`
        in a range from 1.0e-6); None when a value is not among its key's choices (the
        config is not a point of this space)."""
        values = cfg.model_dump(mode="json")
        point: dict[str, Any] = {}
        return point if _start(self.params, values, point) else None

    def grid_size(self) -> int:
        return _size(self.params)

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Every combination of the lists and each range's ends (config values)."""
        return _combos(self.params, _ends, labels=False)


def _suggest(trial: Any, params: dict[str, Values], method: str) -> None:
    for key, values in params.items():
        if isinstance(values, dict):
            label = trial.suggest_categorical(key, [_label(c) for c in values])
            branch = next(b for c, b in values.items() if _label(c) == label)
            _suggest(trial, branch or {}, method)
        elif method == "grid":  # every value listed, a stepped range as its points
            trial.suggest_categorical(key, [_label(v) for v in _points(values)])
        elif isinstance(values, list):
            trial.suggest_categorical(key, [_label(v) for v in values])
        elif values.integer:
            step = int(values.step or 1)
            trial.suggest_int(key, int(values.low), int(values.high), step=step, log=values.log)
        else:
            trial.suggest_float(key, values.low, values.high, step=values.step, log=values.log)


def _decode(space: dict[str, Values], params: dict[str, Any], out: dict[str, Any]) -> None:
    for key, values in space.items():
        if key not in params:
            continue
        label = params[key]
        if isinstance(values, dict):
            choice = next((c for c in values if _label(c) == label), None)
            if choice is None:
                raise ValueError(f"{key}: {label!r} is not one of its choices")
            out[key] = choice
            _decode(values[choice] or {}, params, out)
        elif isinstance(values, list):
            out[key] = next(v for v in values if _label(v) == label)
        elif isinstance(label, bool) or not isinstance(label, (int, float)):
            raise ValueError(f"{key}: {label!r} is not a number of its range")
        else:
            out[key] = int(label) if values.integer else float(label)


def _start(space: dict[str, Values], values: dict[str, Any], point: dict[str, Any]) -> bool:
    for key, choices in space.items():
        value: Any = values
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return False  # not a setting of this config (a key of another model type)
            value = value[part]
        if isinstance(choices, dict):
            choice = next((c for c in choices if _label(c) == _label(value)), _MISSING)
            if choice is _MISSING or not _start(choices[choice] or {}, values, point):
                return False
            point[key] = _label(choice)
        elif isinstance(choices, list):
            if _label(value) not in [_label(c) for c in choices]:
                return False
            point[key] = _label(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        else:
            point[key] = _nearest(choices, value)
    return True


def _nearest(values: SweepRange, value: float) -> float | int:
    """The point of the range `values` nearest to `value` (its step's, where it has one)."""
    near = min(max(float(value), values.low), values.high)
    if values.step is not None:
        near = min(values.low + round((near - values.low) / values.step) * values.step, values.high)
    return round(near) if values.integer else near


_MISSING = object()


def _flatten(space: dict[str, Values], out: dict[str, list[Any] | SweepRange]) -> None:
    for key, values in space.items():
        if isinstance(values, dict):
            out.setdefault(key, list(values))
            for branch in values.values():
                _flatten(branch or {}, out)
        else:
            out.setdefault(key, values)


def _combos(
    space: dict[str, Values], points: Callable[[Any], list[Any]], labels: bool
) -> Iterator[dict[str, Any]]:
    """Every combination of `space`, each value from `points` (a choice with branches: each
    choice, then its branch's combinations); `labels`: choices as Optuna stores them."""

    def one(key: str, values: Values) -> list[dict[str, Any]]:
        if not isinstance(values, dict):
            return [{key: v} for v in points(values)]
        return [
            {key: _label(choice) if labels else choice, **sub}
            for choice, branch in values.items()
            for sub in _combos(branch or {}, points, labels)
        ]

    parts = [one(k, v) for k, v in space.items()]
    for combo in itertools.product(*parts):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        yield merged


def _size(space: dict[str, Values]) -> int:
    return math.prod(
        sum(_size(b or {}) for b in v.values()) if isinstance(v, dict) else len(_points(v))
        for v in space.values()
    )


def space_of(sweep: SweepConfig, doc: yamlio.Document, method: str) -> Space:
    """Check the ranges and keys of `sweep.params` (file/line errors) and build the space."""
    problems: list[str] = []
    _check(dict(sweep.params), doc, method, ("sweep", "params"), frozenset(), {}, problems)
    if problems:
        raise ConfigError(f"{doc.source}: {len(problems)} problem(s) in `sweep.params`", problems)
    return Space(dict(sweep.params), method)


def _check(
    params: dict[str, Values],
    doc: yamlio.Document,
    method: str,
    at: tuple[Any, ...],
    above: frozenset[str],
    seen: dict[str, tuple[str, Values]],
    problems: list[str],
) -> None:
    """Problems of `params` (at key path `at` of the document). `above`: the keys a trial of
    this branch searches outside it; `seen`: each key where it was first searched (a key may be
    searched again in another choice's branch, with values Optuna can hold as one parameter)."""
    here = above | set(params)
    for key, values in params.items():
        place = doc.where((*at, key))
        head = key.split(".")[0]
        if head in ("sweep", "output"):
            problems.append(
                f"{place}: `{key}` cannot be searched; a sweep chooses model and training settings"
            )
        earlier = seen.setdefault(key, (place, values))
        if earlier[0] != place and (why := _clash(earlier[1], values, method)):
            problems.append(
                f"{place}: `{key}` is also searched at {earlier[0]}, {why}; Optuna keeps one kind of "
                "values per key: give both the same list, or ranges of one kind"
            )
        if isinstance(values, dict):
            choices = [_label(c) for c in values]
            if len(set(choices)) != len(choices):
                problems.append(f"{place}: `{key}` lists a choice twice")
            for choice, branch in values.items():
                twice = [k for k in branch or {} if k in here]
                for k in twice:
                    problems.append(
                        f"{doc.where((*at, key, choice, k))}: `{k}` is searched for every trial with "
                        f"`{key}: {choice}` already (outside this choice); search it in one place"
                    )
                inner = {k: v for k, v in (branch or {}).items() if k not in twice}
                _check(inner, doc, method, (*at, key, choice), here, seen, problems)
        elif isinstance(values, SweepRange):
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


def _clash(before: Values, now: Values, method: str) -> str:
    """Why one key's values in two branches cannot be one Optuna parameter ('' if they can)."""

    def kind(values: Values) -> str:
        return (
            "choices with keys of their own"
            if isinstance(values, dict)
            else ("a range" if isinstance(values, SweepRange) else "a list")
        )

    if kind(before) != kind(now):
        return f"as {kind(before)} there and {kind(now)} here"
    if isinstance(before, dict):
        return "with keys of their own in both places"
    assert not isinstance(now, dict)
    ranges = isinstance(before, SweepRange) and isinstance(now, SweepRange)
    if ranges and method == "grid" and None in (getattr(before, "step", 0), getattr(now, "step", 0)):
        return ""  # a grid's range without a step is its own problem
    if isinstance(before, list) or method == "grid":  # Optuna's categorical: the same choices
        same = [_label(v) for v in _points(before)] == [_label(v) for v in _points(now)]
        return "" if same else "with other choices"
    assert isinstance(before, SweepRange) and isinstance(now, SweepRange)
    return "" if before.integer == now.integer else "whole numbers in one place only"


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
