"""The README's config reference is generated from the schema; they must agree."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from pydantic import BaseModel

from mse_train.config import reference, schema, starter
from mse_train.config.registry import unregistered
from mse_train.models import init, networks
from mse_train.training import optimizers

from conftest import REPO


def test_readme_config_reference_matches_the_schema():
    assert reference.main(["--check", str(REPO / "README.md")]) == 0


def test_reference_lists_every_key():
    text = reference.render()
    for section in schema.Config.model_fields:
        assert f"`{section}" in text
    for variants in schema.VARIANTS.values():
        for model in variants.values():
            for key in model.model_fields:
                assert key in text


@pytest.mark.parametrize(
    ("section", "registry"),
    [
        ("model", networks.MODELS),
        ("init", init.SCHEMES),
        ("optimizer", optimizers.OPTIMIZERS),
        ("scheduler", optimizers.SCHEDULERS),
    ],
)
def test_every_choice_in_the_schema_has_one_registry_entry(section, registry):
    assert unregistered(section, registry) == []
    for entry in registry.values():
        assert entry.description  # the one-line description, written on the schema class


def test_registry_check_finds_a_missing_or_mismatched_entry():
    broken = dict(optimizers.OPTIMIZERS)
    del broken["rmsprop"]
    broken["adamw"] = broken["sgd"]
    problems = unregistered("optimizer", broken)
    assert any("'rmsprop' is in the schema but not the registry" in p for p in problems)
    assert any("'adamw' is registered with SGDConfig" in p for p in problems)


def test_every_activation_in_the_schema_is_built():
    assert set(schema.choices("model.activation")) == set(networks.ACTIVATIONS)


def test_starter_comments_list_every_choice(tmp_path):
    text = starter.render(tmp_path / "t.csv", ["x"], ["y"], [], [], tmp_path / "c.yaml")
    for key in ("model", "optimizer", "scheduler", "model.activation", "loss.reduction", "data.missing"):
        assert " | ".join(schema.choices(key)) in text, key


def _dotted_keys(model: type[BaseModel], prefix: str) -> list[str]:
    """Every key of a section as the reference writes it, nested sections included."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(f"{prefix}{name}")
        nested = schema.model_in(field.annotation)
        if nested is not None:
            inner = f"{prefix}{name}.KEY." if reference._is_mapping(field.annotation) else f"{prefix}{name}."
            keys += _dotted_keys(nested, inner)
    return keys


def test_reference_lists_every_key_by_its_full_dotted_name():
    """`train.early_stopping.patience` and `min_delta` were missing: nested sections had no rows."""
    text = reference.render()
    keys = []
    for section, field in schema.Config.model_fields.items():
        if section in schema.TAG_KEYS:
            tag = f"{section}.{schema.TAG_KEYS[section]}"  # named in the section's intro, not a row
            for model in schema.VARIANTS[section].values():
                keys += [key for key in _dotted_keys(model, f"{section}.") if key != tag]
        elif (section_model := schema.model_in(field.annotation)) is not None:
            keys += _dotted_keys(section_model, f"{section}.")
        else:
            keys.append(section)
    assert "train.early_stopping.patience" in keys and "train.early_stopping.min_delta" in keys
    missing = [key for key in keys if f"| `{key}` |" not in text]
    assert not missing


_FILE = re.compile(r"[\w./-]+\.(?:csv|csv\.gz|parquet|yaml|pt|onnx|png)$")


def test_readme_commands_name_files_that_exist_or_that_an_earlier_command_writes():
    """`mse-train eval runs/diamonds/best.pt new_diamonds.csv` named a file that nothing made.
    Each command line of a bash block: every file it names is in the repository, or written
    by a line above it (`-o FILE`, `> FILE`, a run's folder runs/<config name>/, a sweep's
    runs/<config name>-sweep/)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    made: set[str] = set()
    folders: set[str] = set()
    unknown = []
    for line in (line.split("#")[0] for block in blocks for line in block.splitlines()):
        words = shlex.split(line.replace("(", " ").replace(")", " ").replace(";", " "))
        for i, word in enumerate(words):
            after = words[i - 1] if i else ""
            if after in ("-o", "--output", "--output-dir", ">", ">>") or word.startswith(">"):
                made.add(word.lstrip(">"))
                continue
            if not _FILE.search(word) or "://" in word:
                continue
            at = [k for k, w in enumerate(words) if w.endswith("mse-train")]
            command = words[at[0] + 1 : at[0] + 2] if at else None
            if (REPO / word).exists() or word in made or any(word.startswith(f) for f in folders):
                if command == ["run"]:
                    folders.add(f"runs/{Path(word).stem}/")
                if command == ["sweep"]:  # the sweep's own folder, beside the run folder
                    folders.add(f"runs/{Path(word).stem}-sweep/")
                continue
            if command is not None:
                unknown.append(f"{word} in: {line.strip()}")
    assert not unknown
