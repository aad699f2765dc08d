"""Read YAML the way people mean it, and remember where every key was written.

PyYAML follows YAML 1.1, which reads `1e-3` as a string and keeps the last of two
duplicate keys without a word. This loader reads `1e-3` as a number, refuses duplicate
keys, and returns the line of every key so that errors can point at it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mse_train.errors import ConfigError

KeyPath = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 floats (`1e-3`, `1E5`) without a dot."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class Document:
    """A parsed YAML document: its data, the 1-based line of each key path, and the words
    that YAML 1.1 read as true or false (`off`, `Yes`, ...) as they were written."""

    def __init__(
        self, data: Any, lines: dict[KeyPath, int], source: str, words: dict[KeyPath, str] | None = None
    ) -> None:
        self.data = data
        self.lines = lines
        self.source = source
        self.words = words or {}

    def where(self, path: KeyPath) -> str:
        """`file, line N` for the deepest part of `path` that was written in the file."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return f"{self.source}, line {line}"
        return self.source


# What a config may expand to through aliases (`&a`/`*a`): far above any real config,
# far below what would take a second to walk or exhaust memory ("billion laughs").
MAX_VALUES = 100_000
MAX_DEPTH = 100


def parse(text: str, source: str) -> Document:
    """Parse one YAML document; raise ConfigError naming the line on any problem."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None, {}, source)
        walk = _Walk(loader, source)
        walk.node(node, ())
        if walk.problems:
            raise ConfigError(f"{source}: duplicate keys", walk.problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(
            f"{source}{line}: YAML syntax error: {what}",
            ["check indentation, colons and quotes around that place"],
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    return Document(data, walk.lines, source, walk.words)


_TYPED_KEYS = {f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool", "null")}
_BOOL = "tag:yaml.org,2002:bool"


class _Walk:
    """Visit every node once per place it appears, recording lines and duplicate keys.

    Aliases make a document a graph: the walk refuses one that refers to itself or that
    expands to more than MAX_VALUES values or MAX_DEPTH levels, before anything is built.
    """

    def __init__(self, loader: _Loader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.words: dict[KeyPath, str] = {}  # `off` as written, where YAML 1.1 made it false
        self.problems: list[str] = []
        self.count = 0
        self.open: set[int] = set()  # ids of the collections on the current path

    def node(self, node: yaml.Node, path: KeyPath) -> None:
        self.count += 1
        if self.count > MAX_VALUES or len(path) > MAX_DEPTH:
            too = (
                f"more than {MAX_VALUES:,} values"
                if self.count > MAX_VALUES
                else f"deeper than {MAX_DEPTH} levels"
            )
            raise ConfigError(
                f"{self.source}, line {node.start_mark.line + 1}: the config expands to {too}",
                [
                    "a config this large is almost certainly a mistake or an alias bomb; "
                    "write the values out instead of repeating them with `&anchor`/`*alias`"
                ],
            )
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            self.words[path] = str(node.value)
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return
        if id(node) in self.open:
            dotted = ".".join(str(p) for p in path) or "(top level)"
            raise ConfigError(
                f"{self.source}, line {node.start_mark.line + 1}: `{dotted}` refers to itself "
                "through an alias",
                ["an `*alias` cannot appear inside the value its `&anchor` names"],
            )
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path)
        else:
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                self.node(item, (*path, index))
        self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> None:
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                self.problems.append(
                    f"{self.source}, line {line}: `{dotted}` is given twice (first at line "
                    f"{seen[key]}); keep one of them"
                )
            seen[key] = line
            self.lines[(*path, key)] = line
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag in _TYPED_KEYS:
                # `123:` is the number 123 in the data, `null:` is None
                typed = self.loader.construct_object(key_node)
                self.lines.setdefault((*path, typed), line)
                self.lines.setdefault((*path, str(typed)), line)
            self.node(value_node, (*path, key))


def read(path: Path) -> Document:
    """Read and parse a YAML file, with clear errors for a missing or unreadable one."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found", ["check the path"])
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start})", ["save the config as UTF-8"]
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, str(path))


def parse_value(text: str, source: str) -> Document:
    """Parse the value part of a `--set key=value` override as YAML."""
    return parse(text, source)
