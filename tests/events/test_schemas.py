"""The committed JSON Schemas match the models, and they accept what the codec sends."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from events.codec import encode
from events.schemas import SCHEMA_DIR, drift, file_name, generate
from events.types import EventKind
from tests.events.samples import sample


def test_committed_schemas_match_the_models() -> None:
    assert drift() == [], "the event models changed: run `make schemas` and commit events/schemas/"


def test_there_is_one_schema_per_event_type() -> None:
    assert sorted(generate()) == sorted(path.name for path in SCHEMA_DIR.glob("dev.stokehold.*.json"))
    assert len(generate()) == len(EventKind)


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
def test_the_data_we_send_validates_against_its_schema(kind: EventKind) -> None:
    schema = json.loads((SCHEMA_DIR / file_name(kind)).read_text())
    Draft202012Validator.check_schema(schema)
    _, payload = encode(kind, sample(kind), source="/tests/schemas")

    assert list(Draft202012Validator(schema).iter_errors(json.loads(payload))) == []


def test_schemas_refuse_what_the_models_refuse() -> None:
    schema = json.loads((SCHEMA_DIR / file_name(EventKind.DEPLOYMENT_REQUESTED)).read_text())
    bad = {"template": "tiny-demo", "overrides": {"max_replicas": 0, "surprise": True}}

    errors = {".".join(map(str, error.absolute_path)) for error in Draft202012Validator(schema).iter_errors(bad)}

    assert errors == {"overrides.max_replicas", "overrides"}
