"""The README's config reference is generated from the schema; they must agree."""

from __future__ import annotations

from mse_train import init, reference, schema

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


def test_every_init_scheme_in_the_schema_has_an_implementation():
    assert set(init.SCHEMES) | {"default"} == set(schema.VARIANTS["init"])
