"""Preprocessing read back from a checkpoint: checked value by value before it is used.

A checkpoint is input like a config: it may have been edited by hand. A string where a
mean belongs, a zero or NaN standard deviation, an empty feature list would otherwise
surface later as a crash or as silently wrong predictions. Each problem names its key.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import numpy as np

from mse_train.config.schema import DataConfig

MISSING_POLICIES = typing.get_args(DataConfig.model_fields["missing"].annotation)
UNKNOWN_POLICIES = typing.get_args(DataConfig.model_fields["unknown_category"].annotation)
NON_NUMERIC_POLICIES = typing.get_args(DataConfig.model_fields["non_numeric"].annotation)
ENCODINGS = typing.get_args(DataConfig.model_fields["categorical_encoding"].annotation)
FLOAT32_MAX = float(np.finfo(np.float32).max)
IN_RANGE = " (in float32's range)"
_FIELDS = {
    "numeric": ("name", "mean", "std", "fill"),
    "categorical": ("name", "categories"),
    "targets": ("name", "mean", "std"),
}


def problems(data: Any, key: str = "preprocess") -> list[str]:
    """Everything wrong with a stored `Preprocessor.to_dict()`; empty when `from_dict` may use it."""
    if not isinstance(data, dict):
        return [f"`{key}` must be a mapping, got {_kind(data)}"]
    # `categorical_encoding` is absent from checkpoints written before categorical embeddings,
    # `non_numeric` from those written before it
    found = _unexpected(
        data,
        ("features", "missing", "unknown_category", *_FIELDS),
        key,
        ("categorical_encoding", "non_numeric"),
    )
    if found:
        return found
    encoding = data.get("categorical_encoding", "onehot")
    if encoding not in ENCODINGS:
        found.append(
            f"`{key}.categorical_encoding` must be one of {', '.join(ENCODINGS)}, got {_short(encoding)}"
        )
    if data.get("non_numeric", "error") not in NON_NUMERIC_POLICIES:
        found.append(
            f"`{key}.non_numeric` must be one of {', '.join(NON_NUMERIC_POLICIES)}, "
            f"got {_short(data['non_numeric'])}"
        )
    features = data["features"]
    if not _names(features):
        found.append(f"`{key}.features` must be a non-empty list of column names, got {_short(features)}")
        features = []
    elif len(set(features)) != len(features):
        found.append(f"`{key}.features` names a column twice")
    for policy, allowed in (("missing", MISSING_POLICIES), ("unknown_category", UNKNOWN_POLICIES)):
        if data[policy] not in allowed:
            found.append(f"`{key}.{policy}` must be one of {', '.join(allowed)}, got {_short(data[policy])}")
    columns: dict[str, list[str]] = {}
    for part, fields in _FIELDS.items():
        items = data[part]
        if not isinstance(items, list) or (part == "targets" and not items):
            what = "a non-empty list" if part == "targets" else "a list"
            found.append(f"`{key}.{part}` must be {what} of column entries, got {_short(items)}")
            continue
        columns[part] = []
        for index, item in enumerate(items):
            where = f"{key}.{part}[{index}]"
            entry = _entry(item, fields, where, fill=data["missing"] in ("mean", "median"))
            found += entry
            if not entry:
                columns[part].append(item["name"])
    if found:
        return found
    inputs = columns["numeric"] + columns["categorical"]
    if sorted(inputs) != sorted(features):
        found.append(
            f"`{key}.numeric` and `{key}.categorical` must describe each feature in "
            f"`{key}.features` once: features {_short(features)}, described {_short(inputs)}"
        )
    targets = columns["targets"]
    if len(set(targets)) != len(targets) or set(targets) & set(features):
        found.append(f"`{key}.targets` must name distinct columns that are not features, got {targets}")
    return found


def _entry(item: Any, fields: tuple[str, ...], where: str, fill: bool) -> list[str]:
    if not isinstance(item, dict):
        return [f"`{where}` must be a mapping, got {_kind(item)}"]
    found = _unexpected(item, fields, where)
    if found:
        return found
    if not isinstance(item["name"], str) or not item["name"]:
        found.append(f"`{where}.name` must be a column name, got {_short(item['name'])}")
    if "mean" in fields and not _finite(item["mean"]):
        found.append(f"`{where}.mean` must be a finite number{IN_RANGE}, got {_short(item['mean'])}")
    if "std" in fields and not (_finite(item["std"]) and np.float32(item["std"]) > 0):
        found.append(f"`{where}.std` must be a finite number > 0{IN_RANGE}, got {_short(item['std'])}")
    if "fill" in fields:
        value = item["fill"]
        if (value is not None or fill) and not _finite(value):
            found.append(f"`{where}.fill` must be a finite number{IN_RANGE}, got {_short(value)}")
    if "categories" in fields:
        cats = item["categories"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            found.append(f"`{where}.categories` must be a list of strings, got {_short(cats)}")
        elif len(set(cats)) != len(cats):
            found.append(f"`{where}.categories` lists a category twice")
    return found


def _unexpected(
    data: dict[Any, Any], fields: tuple[str, ...], where: str, optional: tuple[str, ...] = ()
) -> list[str]:
    found = [f"`{where}` lacks `{name}`" for name in fields if name not in data]
    known = (*fields, *optional)
    found += [f"`{where}` has an unknown key {_short(name)}" for name in data if name not in known]
    return found


def _names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _finite(value: Any) -> bool:
    """A number that float32, in which the statistics are applied, holds without overflow."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
