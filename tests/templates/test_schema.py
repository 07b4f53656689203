"""The template schema: valid documents pass, every invalid one names its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from templates.schema import (
    ModelTemplateVersion,
    TemplateValidationError,
    duration_seconds,
    parse_version,
)


def minimal(**spec: Any) -> dict[str, Any]:
    return {"template": {"name": "demo"}, "version": 1, "spec": {"source": "hf://org/model", **spec}}


def error_fields(document: Any) -> list[str]:
    with pytest.raises(TemplateValidationError) as info:
        parse_version(document)
    return [field for field, _ in info.value.errors]


def test_minimal_document_gets_documented_defaults() -> None:
    version = parse_version(minimal())
    assert version.spec.scaling.keep_hot == "10m"
    assert version.spec.scaling.keep_hot_seconds == 600
    assert version.spec.scaling.min_replicas == 0
    assert version.served_model_name == "demo"
    assert version.spec.source_scheme == "hf"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"unknown_field": 1}, "spec.unknown_field"),
        ({"resources": {"gpus": 1, "memory": "lots"}}, "spec.resources.memory"),
        ({"resources": {"cpu": "-1"}}, "spec.resources.cpu"),
        ({"engine": {"gpu_memory_utilization": 1.5}}, "spec.engine.gpu_memory_utilization"),
        ({"engine": {"vllm_args": {"port": 1}}}, "spec.engine.vllm_args"),
        ({"engine": {"vllm_args": {"--bad flag": 1}}}, "spec.engine.vllm_args"),
        ({"generation": {"prompt_format": "no placeholder"}}, "spec.generation.prompt_format"),
        ({"scaling": {"min_replicas": 3, "max_replicas": 1}}, "spec.scaling"),
        ({"scaling": {"keep_hot": "forever"}}, "spec.scaling.keep_hot"),
        ({"storage": {"cache_pvc": "Not_A_Name"}}, "spec.storage.cache_pvc"),
        ({"storage": {"hf_token_secret": {"name": "x", "value": "hf_secret"}}}, "spec.storage.hf_token_secret.value"),
    ],
)
def test_invalid_fields_are_named(spec: dict[str, Any], field: str) -> None:
    assert field in error_fields(minimal(**spec))


def test_parallelism_must_match_gpus_times_nodes() -> None:
    doc = minimal(resources={"gpus": 2}, parallelism={"tensor": 4})
    with pytest.raises(TemplateValidationError) as info:
        parse_version(doc)
    ((field, message),) = info.value.errors
    assert field == "spec"
    assert "tensor (4) x pipeline (1) = 4" in message and "resources.gpus (2) x parallelism.nodes (1) = 2" in message
    assert parse_version(minimal(resources={"gpus": 2}, parallelism={"tensor": 2}))


def test_multi_node_needs_pvc_or_oci_source() -> None:
    doc = minimal(resources={"gpus": 2}, parallelism={"tensor": 2, "pipeline": 2, "nodes": 2})
    assert error_fields(doc) == ["spec"]
    doc["spec"]["source"] = "pvc://models/llama"
    assert parse_version(doc).spec.total_gpus == 4


def test_cpu_spec_refuses_gpu_only_settings() -> None:
    assert error_fields(minimal(parallelism={"tensor": 2})) == ["spec"]
    assert error_fields(minimal(engine={"quantization": "awq"})) == ["spec"]


@pytest.mark.parametrize("name", ["Upper", "has_underscore", "-lead", "trail-", "a" * 64, "", "dots.in.name"])
def test_template_names_must_be_kubernetes_names(name: str) -> None:
    doc = minimal()
    doc["template"]["name"] = name
    assert "template.name" in error_fields(doc)


@pytest.mark.parametrize(
    "source",
    ["ftp://x/y", "hf://no-slash", "relative/path", "/abs/../etc", "hf://", "s3://bucket/with space", "pvc://Bad_Claim/x"],
)
def test_sources_are_checked(source: str) -> None:
    assert "spec.source" in error_fields(minimal(source=source)) or error_fields(minimal(source=source))


@pytest.mark.parametrize("source", ["hf://org/model", "s3://bucket/key", "gs://b/k", "pvc://claim/path", "oci://reg/img:tag", "/models/x"])
def test_accepted_sources(source: str) -> None:
    assert parse_version(minimal(source=source)).spec.source == source


def test_labels_reject_reserved_and_invalid_keys() -> None:
    for labels in ({"modelplane.ai/template": "x"}, {"bad key": "x"}, {"ok": "bad value!"}):
        doc = minimal()
        doc["template"]["labels"] = labels
        assert "template.labels" in error_fields(doc)


def test_non_mapping_documents_are_refused_cleanly() -> None:
    for document in (None, [], "text", 3):
        assert error_fields(document) == [""]


def test_versions_are_immutable_objects_with_stable_hash() -> None:
    version = parse_version(minimal())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error type
        version.version = 2  # type: ignore[misc]
    again = parse_version(copy.deepcopy(minimal()))
    assert version.content_hash == again.content_hash
    changed = parse_version(minimal(scaling={"max_replicas": 2}))
    assert changed.content_hash != version.content_hash
    assert version.content_hash.startswith("sha256:") and len(version.content_hash) == 7 + 64


def test_document_round_trip_keeps_hash() -> None:
    version = parse_version(minimal(generation={"stop": ["</s>"], "sampling": {"temperature": 0.2}}))
    assert ModelTemplateVersion.model_validate(version.to_document()).content_hash == version.content_hash


def test_durations() -> None:
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("45s") == 45
    with pytest.raises(ValueError):
        duration_seconds("")
