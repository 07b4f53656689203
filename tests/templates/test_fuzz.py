"""Property-based: random and malformed documents only ever raise our own validation error."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templates.catalog import load_catalog
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


TOP_LEVEL = {"apiVersion", "api_version", "kind", "template", "version", "spec"}
UNKNOWN_KEY = "<unknown key>"  # an unexpected key that does not look like a field name


def located(field: str, names: set[str]) -> bool:
    return any(field == name or field.startswith(f"{name}.") for name in names)


def check(document: Any, section: str | None = None, key: str | None = None) -> None:
    """Only `TemplateValidationError` may come out, and each of its errors names where the problem is.

    Whole-document problems (not a mapping) sit at the root. Otherwise the path starts at a
    top-level field or a key of the document; when one `key` of one `section` was mutated, the
    path leads to that key, or is the section itself for a cross-field rule whose message then
    names the fields it compares.
    """
    try:
        parse_version(document)
    except TemplateValidationError as exc:
        assert exc.errors, "an error must list at least one field"
        for field, message in exc.errors:
            assert isinstance(field, str) and isinstance(message, str) and message
            if not isinstance(document, dict):
                assert field == "" and "mapping" in message
            elif section is not None and key is not None:
                cross_field = field == section and any(name in message for name in FIELDS[section])
                assert field.startswith(f"{section}.{key}") or cross_field, (field, message)
            else:
                keys = {str(k) for k in document} | {repr(k) for k in document} | {UNKNOWN_KEY}  # some keys are never echoed
                assert located(field, TOP_LEVEL | keys), (field, message)


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
    check(document, section, key)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(version=json_values, extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_top_level_mutations(version: Any, extra: dict[str, Any]) -> None:
    document = base() | {"version": version} | extra
    check(document)


def leaf_paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every key path of a document, inner mappings and lists included."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    return [path for key, child in children for path in [(*prefix, key), *leaf_paths(child, (*prefix, key))]]


CATALOG_DOCUMENTS = [version.to_document() for version in load_catalog()]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_deep_mutations_of_catalog_documents(data: st.DataObject) -> None:
    """One field anywhere in a real catalog document gets a random value: the error is at that field,
    below it (inside the new value), or at a model that holds it (a cross-field rule such as
    tensor x pipeline = GPUs x nodes)."""
    document = copy.deepcopy(data.draw(st.sampled_from(CATALOG_DOCUMENTS)))
    path = data.draw(st.sampled_from(leaf_paths(document)))
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = data.draw(json_values)
    mutated = ".".join(str(part) for part in path)
    ancestors = {".".join(str(part) for part in path[:end]) for end in range(1, len(path))}
    try:
        parse_version(document)
    except TemplateValidationError as exc:
        for field, message in exc.errors:
            assert message and (field == mutated or field.startswith(f"{mutated}.") or field in ancestors), (field, message)
