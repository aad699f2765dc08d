"""Load a YAML config, apply `--set` overrides, validate all of it, resolve paths.

Every problem is collected and reported in one ConfigError, each naming the key, the
file and line, and the fix, before any data is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mse_train.config import messages, schema, yamlio
from mse_train.config.schema import Config, Section
from mse_train.config.yamlio import KeyPath
from mse_train.errors import ConfigError


def load(path: Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override, validate and resolve a config file."""
    doc = yamlio.read(path)
    return from_document(doc, path.resolve().parent, overrides, default_name=path.stem)


def from_document(
    doc: yamlio.Document,
    base: Path,
    overrides: Sequence[str] = (),
    default_name: str = "run",
    values: Mapping[str, Any] | None = None,
    dropped: list[str] | None = None,
    values_label: str = "sweep.params",
) -> Config:
    """Validate a parsed document; relative paths are taken from `base`.

    `values` (dotted key -> value) are set after the overrides: a sweep trial's choices,
    reported as `sweep.params.KEY` in messages (`values_label` names them otherwise: the
    Python API's keyword arguments). When a value picks a tagged choice
    (`model.type`, `optimizer.name`, ...), keys of that section that do not apply to the
    choice are removed and their dotted names appended to `dropped`: a search over
    `[linear, mlp]` with `model.hidden` is a normal search, not an error.
    """
    if doc.data is None:
        raise ConfigError(
            f"{doc.source}: the config is empty",
            [
                "write at least `data: {train: FILE.csv, target: COLUMN}`; "
                "`mse-train init DATA.csv --target COLUMN` writes a starter config"
            ],
        )
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{doc.source}: the config must be a mapping of keys to values, "
            f"not a {messages.kind_of(doc.data)}",
            ["start with `data:` on the first line, keys indented below it"],
        )
    data = doc.data
    set_paths: dict[KeyPath, str] = {}
    words = dict(doc.words)
    for text in overrides:
        key_path, given = _apply_override(data, text)
        set_paths[key_path] = f"--set {'.'.join(map(str, key_path))}"
        words = {p: w for p, w in words.items() if p[: len(key_path)] != key_path}
        words.update({(*key_path, *p): w for p, w in given.items()})
    for key, value in (values or {}).items():
        parts = tuple(key.split("."))
        _set(data, parts, value, f"{values_label}.{key}")
        set_paths[parts] = f"{values_label}.{key} = {json.dumps(value, default=repr)}"
        words = {p: w for p, w in words.items() if p[: len(parts)] != parts}
    if values:
        for name in _drop_inapplicable(data, values):
            if dropped is not None:
                dropped.append(name)

    def where(loc: KeyPath) -> str:
        for path, label in set_paths.items():
            n = min(len(path), len(loc))
            if n and path[:n] == loc[:n]:
                return label
        return doc.where(loc)

    problems: list[str] = []
    config, errors = _validate(data)
    if errors and _words_where_text_is_wanted(errors, data, words):
        config, errors = _validate(data)
    for error, loc in errors:
        problems.append(messages.describe(error, loc, data, where))
    problems.extend(messages.cross_checks(data, where))
    problems.sort(key=messages.line_of)
    if problems or config is None:
        count = len(problems)
        raise ConfigError(f"{doc.source}: {count} problem{'s' if count != 1 else ''} in the config", problems)
    return _resolve(config, base, default_name)


def _validate(data: dict[str, Any]) -> tuple[Config | None, list[tuple[Any, KeyPath]]]:
    """The config, or pydantic's errors at the user's keys."""
    try:
        return Config.model_validate(data), []
    except ValidationError as exc:
        return None, messages.plain_errors(exc.errors(include_url=False), data)


_TEXT_WANTED = ("string_type", "literal_error", "union_type")  # a number key keeps true/false


def _words_where_text_is_wanted(
    errors: list[tuple[Any, KeyPath]], data: dict[str, Any], words: Mapping[KeyPath, str]
) -> int:
    """Put back `off`, `yes`, `No` as written where YAML 1.1 made them true/false but the key
    does not take true or false: `data.target: yes` is the column `yes`, `data.missing: no`
    is the word `no` (then named as not one of the choices). Returns how many were put back."""
    put = 0
    for error, loc in errors:
        word = words.get(loc)
        if word is None or not isinstance(error.get("input"), bool) or error["type"] not in _TEXT_WANTED:
            continue
        node: Any = data
        try:
            for part in loc[:-1]:
                node = node[part]
            node[loc[-1]] = word
        except (KeyError, IndexError, TypeError):
            continue  # not where the word was written: the message names the value
        put += 1
    return put


def _drop_inapplicable(data: dict[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Remove keys that the chosen variant of a swept tagged section does not have."""
    removed: list[str] = []
    for section, tag_key in schema.TAG_KEYS.items():
        if f"{section}.{tag_key}" not in values or not isinstance(data.get(section), dict):
            continue
        node = data[section]
        model = schema.VARIANTS[section].get(str(node.get(tag_key, schema.TAG_DEFAULTS[section])))
        if model is None:
            continue  # an unknown choice: validation names it
        for key in [k for k in node if k not in model.model_fields]:
            del node[key]
            removed.append(f"{section}.{key}")
    node = data.get("model")
    if "model.numeric_embedding" in values and isinstance(node, dict):  # a search over embeddings
        chosen = node.get("numeric_embedding")
        owners = {**schema.EMBEDDING_KEYS, "embedding_size": "periodic piecewise_linear"}
        for key in [k for k, owner in owners.items() if k in node and chosen not in owner.split()]:
            del node[key]
            removed.append(f"model.{key}")
    return removed


def _resolve(config: Config, base: Path, default_name: str) -> Config:
    """Fill derived defaults and make paths absolute, so the saved config reruns as is."""
    config = config.model_copy(deep=True)
    data = config.data
    data.train = str((base / data.train).resolve())
    if data.val is not None:
        data.val = str((base / data.val).resolve())
    if data.cache not in ("auto", "off"):
        data.cache = str((base / Path(data.cache).expanduser()).resolve())
    out = config.output.dir if config.output.dir is not None else f"runs/{default_name}"
    config.output.dir = str((base / out).resolve())
    if config.output.mlflow_experiment is None:
        config.output.mlflow_experiment = default_name
    for name in Config.model_fields:  # each section fills the defaults that depend on others
        section = getattr(config, name)
        if isinstance(section, Section):
            section.fill_defaults(config)
    return config


def to_yaml(config: Config) -> str:
    """The resolved config as YAML, in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (for checkpoints and comparisons)."""
    return config.model_dump(mode="json")


# ------------------------------------------------------------------------ overrides
def _apply_override(data: dict[str, Any], text: str) -> tuple[KeyPath, dict[KeyPath, str]]:
    """Set one `KEY=VALUE`; returns the key path and the yes/no words in the value, as written."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE", ["for example `--set optimizer.lr=0.1`"])
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: empty part in key path {key!r}")
    value = yamlio.parse_value(raw, f"--set {key}")
    _set(data, tuple(parts), value.data, f"--set {key}")
    return tuple(parts), value.words


def _set(data: dict[str, Any], parts: tuple[str, ...], value: Any, label: str) -> None:
    """Put `value` at the dotted path `parts`, opening sections (and `optimizer: adam`) on the way."""
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None or (isinstance(child, str) and part in schema.TAG_KEYS):
            # `optimizer: adam` shorthand or a missing section: open it up.
            child = {schema.TAG_KEYS[part]: child} if isinstance(child, str) else {}
            node[part] = child
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{label}: `{prefix}` holds a {messages.kind_of(child)}, not a section of keys")
        node = child
    node[parts[-1]] = value
