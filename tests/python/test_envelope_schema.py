"""The job envelope's JSON Schema agrees with its examples (and so with the
Rust reader, whose unit test parses the same examples)."""

import json
from pathlib import Path

import jsonschema
import pytest

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))


def schema():
    document = json.loads((SCHEMAS / "job-envelope.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return document


def test_there_are_valid_and_invalid_examples():
    names = [p.name for p in EXAMPLES]
    assert any(n.startswith("valid") for n in names)
    assert sum(n.startswith("invalid") for n in names) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_matches_its_name(path):
    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(json.loads(path.read_text())))
    if path.name.startswith("valid"):
        assert errors == [], [e.message for e in errors]
    else:
        assert errors, f"{path.name} should be rejected"
