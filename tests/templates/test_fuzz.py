"""Property-based: random and malformed documents only ever raise our own validation error."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templates.schema import TemplateValidationError, parse_version

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = {
    "template": ["name", "description", "labels"],
    "spec": [
        "source",
        "served_model_name",
        "task",
        "model_size_gb",
        "engine",
        "generation",
        "resources",
        "parallelism",
        "scaling",
        "storage",
    ],
}


def base() -> dict[str, Any]:
    return {"template": {"name": "fuzz"}, "version": 1, "spec": {"source": "hf://org/model", "resources": {"gpus": 1}}}


def check(document: Any) -> None:
    try:
        parse_version(document)
    except TemplateValidationError as exc:
        assert exc.errors, "an error must list at least one field"
        for field, message in exc.errors:
            assert isinstance(field, str) and message
            if isinstance(document, dict) and document:
                # every error names a field path (root-level problems name the offending key)
                assert field or "mapping" in message


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_any_json_value(document: Any) -> None:
    check(document)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(section=st.sampled_from(["template", "spec"]), data=st.data())
def test_mutated_valid_documents(section: str, data: st.DataObject) -> None:
    document = base()
    key = data.draw(st.sampled_from([*FIELDS[section], "unexpected"]))
    document[section][key] = data.draw(json_values)
    check(document)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(version=json_values, extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_top_level_mutations(version: Any, extra: dict[str, Any]) -> None:
    document = base() | {"version": version} | extra
    check(document)
