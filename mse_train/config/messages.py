"""Turn validation errors into messages a person can act on.

Each message names the file and line (or the `--set` that gave the value), the key,
what is wrong and the fix. Problems that involve more than one key are checked here
too, so that one ConfigError lists everything at once.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from mse_train.config import schema
from mse_train.config.schema import Config
from mse_train.config.yamlio import KeyPath

Where = Callable[[KeyPath], str]  # key path -> "file, line N" or "--set key"


def user_loc(loc: tuple[int | str, ...], data: Any) -> KeyPath:
    """Drop pydantic's union tag from an error location, keeping the user's keys."""
    if (
        len(loc) >= 2
        and loc[0] in schema.VARIANTS
        and loc[1] in schema.VARIANTS[str(loc[0])]
        and not (isinstance(data.get(loc[0]), dict) and loc[1] in data[loc[0]])
    ):
        return (loc[0], *loc[2:])
    if loc[:2] == ("sweep", "params"):
        return _without_sweep_tags(tuple(loc), data)
    return tuple(loc)


_SWEEP_TAGS = ("list", "range", "branches")  # schema.SweepValues' members


def _without_sweep_tags(loc: tuple[int | str, ...], data: Any) -> KeyPath:
    """`sweep.params.KEY.range.high` -> `sweep.params.KEY.high`, at any depth of branches."""
    kept: list[int | str] = []
    node: Any = data
    for part in loc:
        if part in _SWEEP_TAGS and not (isinstance(node, dict) and part in node):
            continue
        kept.append(part)
        node = node.get(part) if isinstance(node, dict) else None
    return tuple(kept)


_BASE_NAMES = {"str": "text value", "int": "whole number", "float": "number", "bool": "true or false"}


def _member_label(part: str) -> str | None:
    """What a union member stands for, if `part` is pydantic's label of one (else None)."""
    inner = part.removeprefix("constrained-")
    if inner in _BASE_NAMES:
        return _BASE_NAMES[inner]
    match = re.fullmatch(r"list\[(.+)\]", part)
    if match:
        element = _member_label(match.group(1))
        return f"list of {element}s" if element and element != "true or false" else "list"
    return None


def _article(what: str) -> str:
    return what if what == "true or false" else f"a {what}"


def plain_errors(errors: list[Any], data: Any) -> list[tuple[Any, KeyPath]]:
    """Pydantic errors at the user's keys, without union member labels in their paths.

    A value that may be a text or a list (`data.target`) fails once per member; keep the
    failures of the member that matches the value's shape, or say both shapes at once.
    """
    groups: dict[KeyPath, list[tuple[Any, KeyPath, str]]] = {}
    plain: list[tuple[Any, KeyPath]] = []
    for error in errors:
        loc = user_loc(error["loc"], data)
        node: Any = data
        for index, part in enumerate(loc):
            label = _member_label(part) if isinstance(part, str) else None
            in_dict = isinstance(node, dict) and part in node
            if label is not None and not in_dict:
                prefix = loc[:index]
                groups.setdefault(prefix, []).append((error, (*prefix, *loc[index + 1 :]), str(part)))
                break
            node = (
                node.get(part)
                if isinstance(node, dict)
                else (
                    node[part]
                    if isinstance(node, list) and isinstance(part, int) and part < len(node)
                    else None
                )
            )
        else:
            plain.append((error, loc))
    for prefix, members in groups.items():
        value = _value_at(data, prefix)
        if isinstance(value, list):
            chosen = [m for m in members if m[2].startswith("list[")]
        elif isinstance(value, str):
            chosen = [m for m in members if not m[2].startswith("list[")]
        else:
            chosen = []
        if chosen:
            plain.extend((error, loc) for error, loc, _ in chosen)
            continue
        shapes = list(dict.fromkeys(_article(_member_label(m[2]) or m[2]) for m in members))
        plain.append(({"type": "union_type", "input": value, "shapes": shapes}, prefix))
    return plain


def _value_at(data: Any, path: KeyPath) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _section_model(section: KeyPath, data: Any) -> type[BaseModel] | None:
    """The model class that holds the keys of `section` (a path of keys)."""
    if not section:
        return Config
    head = str(section[0])
    if head in schema.VARIANTS:
        node = data.get(head) if isinstance(data, dict) else None
        tag = node.get(schema.TAG_KEYS[head]) if isinstance(node, dict) else None
        model = schema.VARIANTS[head].get(str(tag if tag is not None else schema.TAG_DEFAULTS[head]))
    else:
        field = Config.model_fields.get(head)
        model = schema.model_in(field.annotation) if field else None
    for part in section[1:]:
        field = model.model_fields.get(str(part)) if model else None
        model = schema.model_in(field.annotation) if field else None
    return model


def describe(error: Any, loc: KeyPath, data: Any, where: Where) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    place = where(loc)
    if kind == "extra_forbidden":
        model = _section_model(loc[:-1], data)
        valid = list(model.model_fields) if model else []
        key = str(loc[-1])
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        section = str(loc[0])
        if len(loc) == 2 and section in schema.TAG_KEYS and not close:
            tag_key = schema.TAG_KEYS[section]
            node = data.get(section)
            chosen = node.get(tag_key) if isinstance(node, dict) else None
            chosen = chosen or schema.TAG_DEFAULTS[section]
            owners = [t for t, m in schema.VARIANTS[section].items() if key in m.model_fields]
            if owners:
                return (
                    f"{place}: `{dotted}` does not apply to {section}.{tag_key} {chosen!r}; "
                    f"set `{section}.{tag_key}: {owners[0]}` or remove it "
                    f"({key} applies to {', '.join(owners)})"
                )
        hint = f"; did you mean `{close[0]}`?" if close else "."
        valid_text = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return f"{place}: unknown key `{dotted}`{hint}{valid_text}"
    if kind == "invalid_key":
        model = _section_model(loc[:-1], data)
        names = f" Valid keys here: {', '.join(model.model_fields)}." if model else ""
        return f"{place}: {_show(value)} is not a key name; keys are names written as text.{names}"
    if kind == "missing":
        parent = ".".join(map(str, loc[:-1])) or "the top level"
        return f"{place}: `{dotted}` is required; add it under `{parent}`"
    if kind in ("union_tag_invalid",):
        section = str(loc[-1]) if loc else ""
        tag_key = schema.TAG_KEYS.get(section, "name")
        tags = list(schema.VARIANTS.get(section, {}))
        tag = str(ctx.get("tag"))
        close = difflib.get_close_matches(tag, tags, n=1, cutoff=0.5)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        place = where((*loc, tag_key))
        return f"{place}: `{dotted}.{tag_key}` is {tag!r}, which is not one of: {', '.join(tags)}{hint}"
    if kind == "union_type":
        return f"{place}: `{dotted}` must be {' or '.join(error['shapes'])}, got {_show(value)}"
    if kind == "union_tag_not_found":
        return f"{place}: `{dotted}` must be a section of keys, got {_show(value)}"
    if kind == "literal_error":
        options = [
            o.strip().strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")
        ]
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        return f"{place}: `{dotted}` is {_show(value)}, which is not one of: {', '.join(options)}{hint}"
    if kind in (
        "float_type",
        "int_type",
        "bool_type",
        "string_type",
        "list_type",
        "tuple_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "int_from_float",
        "float_parsing",
        "int_parsing",
    ):
        expected = {
            "float_type": "a number",
            "int_type": "a whole number",
            "int_from_float": "a whole number",
            "bool_type": "true or false",
            "string_type": "a text value",
            "list_type": "a list",
            "tuple_type": "a list",
            "dict_type": "a section of keys",
            "model_type": "a section of keys",
            "model_attributes_type": "a section of keys",
            "float_parsing": "a number",
            "int_parsing": "a whole number",
        }[kind]
        fix = ""
        if isinstance(value, str) and kind in ("float_type", "int_type"):
            if _looks_numeric(value):
                fix = f"; write it without quotes: {value.strip()}"
            else:
                fix = "; write a number, e.g. 10"
        if isinstance(value, float) and kind == "int_type":
            fix = f"; write a whole number, e.g. {int(value) if math.isfinite(value) else 10}"
        if isinstance(value, bool) and kind != "bool_type":
            fix = (
                "; YAML reads an unquoted yes, no, on, off, true or false as true/false: "
                'quote the word you mean, e.g. "off"'
            )
        elif isinstance(value, (int, float)) and kind == "string_type":
            fix = f'; quote it: "{value}"'
        return f"{place}: `{dotted}` must be {expected}, got {_show(value)}{fix}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        bound = next(iter(ctx.values()), "?")
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"{place}: `{dotted}` must be {op} {bound}, got {_show(value)}"
    if kind == "value_error":
        return f"{place}: `{dotted}`: {ctx.get('error', error['msg'])}"
    if kind == "finite_number":
        return f"{place}: `{dotted}` must be a finite number, got {_show(value)}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"{place}: `{dotted}` must not be empty text"
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        size = ctx.get("min_length") if "short" in kind else ctx.get("max_length")
        unit = "character" if kind.startswith("string") else "item"
        bound = "at least" if "short" in kind else "at most"
        return (
            f"{place}: `{dotted}` must have {bound} {size} {unit}{'s' if size != 1 else ''}, "
            f"got {_show(value)}"
        )
    if kind == "string_pattern_mismatch" and loc[-1:] == ("device",):
        return f"{place}: `{dotted}` is {_show(value)}; use auto, cpu, cuda or cuda:N"
    return f"{place}: `{dotted}`: {error['msg']}, got {_show(value)}"


def cross_checks(data: dict[str, Any], where: Where) -> list[str]:
    """Problems that involve more than one key."""
    problems = _optimizer_checks(data, where) + _init_checks(data, where) + _embedding_checks(data, where)
    section = data.get("data")
    if not isinstance(section, dict):
        return problems
    fraction = section.get("val_fraction")
    if section.get("val") is not None and isinstance(fraction, (int, float)) and fraction > 0:
        problems.append(
            f"{where(('data', 'val_fraction'))}: give either `data.val` (a file) or "
            "`data.val_fraction` (a share of train rows), not both"
        )
    target = section.get("target")
    targets = [target] if isinstance(target, str) else target if isinstance(target, list) else []
    features = section.get("features")
    if isinstance(features, list):
        for name in targets:
            if name in features:
                problems.append(
                    f"{where(('data', 'features'))}: `{name}` is the target and cannot also be "
                    "a feature; remove it from `data.features`"
                )
        dupes = sorted({f for f in features if isinstance(f, str) and features.count(f) > 1})
        if dupes:
            problems.append(f"{where(('data', 'features'))}: listed twice: {', '.join(dupes)}")
    dupes = sorted({t for t in targets if isinstance(t, str) and targets.count(t) > 1})
    if dupes:
        problems.append(f"{where(('data', 'target'))}: listed twice: {', '.join(dupes)}")
    # A saved config.yaml holds `category_embedding_size: null`: that is no mistake.
    if (
        section.get("category_embedding_size") is not None
        and section.get("categorical_encoding") != "embedding"
    ):
        problems.append(
            f"{where(('data', 'category_embedding_size'))}: `data.category_embedding_size` applies "
            "only to `data.categorical_encoding: embedding`; remove the key or choose embedding"
        )
    categorical = section.get("categorical")
    if isinstance(categorical, list):
        for name in targets:
            if name in categorical:
                problems.append(
                    f"{where(('data', 'categorical'))}: `{name}` is a target; targets must be "
                    "numeric, remove it from `data.categorical`"
                )
    return problems


def _optimizer_checks(data: dict[str, Any], where: Where) -> list[str]:
    section = data.get("optimizer")
    if not isinstance(section, dict) or section.get("nesterov") is not True:
        return []
    momentum, dampening = section.get("momentum", 0.0), section.get("dampening", 0.0)
    if _number(momentum) and momentum <= 0:
        return [
            f"{where(('optimizer', 'nesterov'))}: `optimizer.nesterov: true` needs "
            "`optimizer.momentum` > 0; set a momentum such as 0.9, or nesterov: false"
        ]
    if _number(dampening) and dampening != 0:
        return [
            f"{where(('optimizer', 'dampening'))}: `optimizer.nesterov: true` needs "
            "`optimizer.dampening: 0`; remove the dampening or set nesterov: false"
        ]
    return []


def _embedding_checks(data: dict[str, Any], where: Where) -> list[str]:
    """A key of one numeric embedding set while another (or none) is chosen."""
    section = data.get("model")
    if (
        not isinstance(section, dict)
        or "numeric_embedding"
        not in schema.VARIANTS["model"]
        .get(str(section.get("type", schema.TAG_DEFAULTS["model"])), schema.LinearModel)
        .model_fields
    ):
        return []
    chosen = section.get("numeric_embedding", "none")
    if chosen not in schema.literal_choices(schema.NumericEmbedding):
        return []  # validation names the bad value
    problems = []
    owners = {**schema.EMBEDDING_KEYS, "embedding_size": "periodic or piecewise_linear"}
    fields = schema.EmbeddedModel.model_fields
    for key, owner in owners.items():
        # A saved config.yaml holds every key at its default: those are no mistake.
        given = section.get(key, fields[key].default)
        if chosen not in owner.split(" or ") and given != fields[key].default:
            problems.append(
                f"{where(('model', key))}: `model.{key}` applies only to `model.numeric_embedding: "
                f"{owner}`, and it is {chosen}; remove the key or choose that embedding"
            )
    return problems


def _init_checks(data: dict[str, Any], where: Where) -> list[str]:
    section = data.get("init")
    if not isinstance(section, dict) or section.get("scheme") not in ("uniform", "trunc_normal"):
        return []
    fields = schema.VARIANTS["init"][section["scheme"]].model_fields
    low, high = (section.get(key, fields[key].default) for key in ("a", "b"))
    if _number(low) and _number(high) and low > high:
        key = ("init", "a") if "a" in section else ("init", "b")
        return [
            f"{where(key)}: `init.a` ({low:g}) is above `init.b` ({high:g}); the lower bound "
            "a must not exceed the upper bound b"
        ]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def line_of(problem: str) -> tuple[int, str]:
    """Sort key: problems in the order of their lines, --set ones last."""
    head = problem.split(": ", 1)[0]
    _, _, line = head.rpartition(", line ")
    return (int(line) if line.isdigit() else 10**9, problem)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def kind_of(value: Any) -> str:
    return {list: "list", str: "text value", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _show(value: Any) -> str:
    """A value as it would be written in YAML (null, true), short enough for one line."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a section of keys"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
