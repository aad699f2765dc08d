"""The README's config reference is generated from the schema; they must agree."""

from __future__ import annotations

import pytest

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
