"""A registry entry ties a name in the config to the code that builds it.

Every choice the config offers (model type, init scheme, activation, optimizer,
scheduler) has one registry in the room that builds it (models/, training/). An entry
names its schema class and its builder; its one-line description is the one written on
the schema class, so the README reference, the starter config and `--help` texts all
say the same thing. `unregistered()` lets a test prove that registry and schema agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from mse_train.config import schema

S = TypeVar("S", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class Choice(Generic[S, T]):
    """One name the config accepts: its settings class and the function that builds it."""

    schema: type[S]
    build: Callable[..., T]  # called with the section (an instance of `schema`) first

    @property
    def description(self) -> str:
        tag_key = next(k for k in schema.TAG_KEYS.values() if k in self.schema.model_fields)
        return self.schema.model_fields[tag_key].description or ""


def unregistered(section: str, registry: Mapping[str, Choice[Any, Any]]) -> list[str]:
    """Names where the schema's variants of `section` and the registry disagree; [] when they agree."""
    variants = schema.VARIANTS[section]
    problems = [
        f"{section}: {name!r} is in the schema but not the registry"
        for name in variants
        if name not in registry
    ]
    problems += [
        f"{section}: {name!r} is registered but not in the schema"
        for name in registry
        if name not in variants
    ]
    problems += [
        f"{section}: {name!r} is registered with {entry.schema.__name__}, "
        f"the schema uses {variants[name].__name__}"
        for name, entry in registry.items()
        if name in variants and variants[name] is not entry.schema
    ]
    return problems
