"""One typed configuration: every key declared once (type, default, range, meaning), its defaults
the embedded default's, every rule an error line naming the key, params.yaml read once per command."""

from __future__ import annotations

import typing

import pytest
import yaml

from pipeline import config
from pipeline.config import compose, reference, schema
from pipeline.run.errors import AGDError
from tests.conftest import ROOT, agd


def test_defaults_are_the_embedded_default():
    """The schema's defaults are what conf/ composes for the embedded default (params.yaml as committed):
    a key missing from params.yaml means what it means there."""
    composed = yaml.safe_load(compose.compose([], conf=ROOT / "conf"))
    assert config.Params().model_dump() == composed
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == composed


def test_every_key_says_what_it_means():
    for name, section in config.SECTIONS.items():
        assert section.__doc__ and section.__doc__.strip(), name
        for key, field in section.model_fields.items():
            assert field.description, f"{name}.{key} has no meaning"


def _wrong_values(field) -> list[tuple[object, str]]:
    """Values that break a key's declared rules, with the words its error line must say."""
    kind = field.annotation
    if typing.get_origin(kind) is typing.Literal:
        return [("no-such-choice", "unknown value 'no-such-choice'")]
    if typing.get_origin(kind) is list:
        return [(3.0, "expected a non-empty list")] if field.metadata else [(3.0, "list")]
    found = {bool: [("yes", "expected true or false")], int: [("many", "expected an integer"), (True, "integer")],
             float: [("fast", "expected a number")], str: [(5, "expected a string")]}[kind]
    b = schema.bounds(field)
    if "gt" in b:
        found.append((b["gt"], "must be positive" if b["gt"] == 0 else "must be"))
    if "ge" in b:
        found.append((b["ge"] - 1, "must"))
    if "lt" in b:
        found.append((b["lt"], "must be in"))
    return found


CASES = [(name, key, value, words) for name, section in config.SECTIONS.items()
         for key, field in section.model_fields.items() for value, words in _wrong_values(field)]


@pytest.mark.parametrize("name, key, value, words", CASES, ids=[f"{c[0]}.{c[1]}={c[2]!r}" for c in CASES])
def test_every_declared_rule_is_one_error_line_naming_its_key(name, key, value, words):
    with pytest.raises(AGDError) as err:
        config.parse_section(name, {key: value}, "params.yaml")
    assert err.value.where.startswith(f"params.yaml: {name}.{key}"), err.value.where
    assert words in err.value.problem and err.value.fix, str(err.value)


def test_a_valid_value_passes_and_keeps_its_type():
    train = config.parse_section("train", {"lr": 1, "steps": 3})
    assert train.lr == 1.0 and isinstance(train.lr, float) and train.steps == 3
    with pytest.raises(AGDError, match="train.width: width 30 is not divisible by heads 8"):
        train.replace(width=30)


def test_params_yaml_is_read_once_per_command(project_copy, monkeypatch):
    reads = []
    original = config.read
    monkeypatch.setattr(config, "read", lambda *a, **k: reads.append(a) or original(*a, **k))
    agd(project_copy, "sweep")  # off: it returns at once, after reading params.yaml
    agd(project_copy, "check")
    assert len(reads) == 2


def test_the_configuration_page_is_the_schema():
    """docs/configuration.md is generated (`agd keys --markdown`), so it cannot drift from the code."""
    assert (ROOT / "docs" / "configuration.md").read_text() == reference.markdown()
