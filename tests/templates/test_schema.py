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
    for labels in ({"stokehold.dev/template": "x"}, {"bad key": "x"}, {"ok": "bad value!"}):
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


def test_every_spec_section_of_the_issue_is_accepted() -> None:
    version = parse_version(
        minimal(
            source="pvc://models/org/model",
            served_model_name="org/model",
            engine={
                "max_model_len": 4096,
                "dtype": "bfloat16",
                "quantization": "awq",
                "gpu_memory_utilization": 0.85,
                "max_num_seqs": 32,
                "enforce_eager": True,
                "trust_remote_code": False,
                "vllm_args": {"max-num-batched-tokens": 2048, "enable_chunked_prefill": True},
            },
            generation={
                "prompt_format": "### Instruction:\n{instruction}\n### Response:\n",
                "stop": ["###"],
                "sampling": {"temperature": 0.2},
            },
            resources={"gpus": 2, "gpu_type": "nvidia-l4", "cpu": "8", "memory": "48Gi"},
            parallelism={"tensor": 2},
            scaling={"min_replicas": 0, "max_replicas": 3, "target_concurrency": 4, "keep_hot": "45m30s", "priority": 1},
            storage={"cache_pvc": "model-cache", "hf_token_secret": {"name": "hf-token"}},
        )
    )
    spec = version.spec
    assert (spec.source_scheme, version.served_model_name, spec.total_gpus) == ("pvc", "org/model", 2)
    assert spec.engine.vllm_args == {"enable_chunked_prefill": True, "max-num-batched-tokens": 2048}
    assert spec.generation.prompt_format is not None and spec.generation.prompt_format.endswith("### Response:\n"), "whitespace kept"
    assert (spec.scaling.keep_hot_seconds, spec.scaling.always_hot) == (2730, False)
    assert spec.storage.hf_token_secret is not None and spec.storage.hf_token_secret.key == "HF_TOKEN"


@pytest.mark.parametrize(("priority", "hot"), [(0, False), (1, False), (2, True), (5, True)])
def test_priority_two_and_above_is_always_hot(priority: int, hot: bool) -> None:
    assert parse_version(minimal(scaling={"priority": priority})).spec.scaling.always_hot is hot


def test_content_hash_ignores_key_order_and_spelling_of_equal_values() -> None:
    one = minimal(resources={"gpus": 1, "cpu": "4", "memory": "16Gi"}, engine={"vllm_args": {"seed": 1, "block_size": 16}})
    one["template"]["labels"] = {"b": "2", "a": "1"}
    other = {
        "spec": {
            "engine": {"vllm_args": {"block_size": 16, "seed": 1}},
            "resources": {"memory": "16Gi", "cpu": 4, "gpus": 1},
            "source": "hf://org/model",
        },
        "version": 1,
        "template": {"labels": {"a": "1", "b": "2"}, "name": "demo"},
    }
    assert parse_version(one).content_hash == parse_version(other).content_hash


def test_secret_reference_never_echoes_what_was_pasted() -> None:
    pasted = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    with pytest.raises(TemplateValidationError) as info:
        parse_version(minimal(storage={"hf_token_secret": {"name": pasted}}))
    assert [field for field, _ in info.value.errors] == ["spec.storage.hf_token_secret.name"]
    assert pasted not in str(info.value)


@pytest.mark.parametrize("version", [True, "1", 1.0, 0, 1_000_001, 2**63])
def test_a_version_number_is_a_strict_whole_number_up_to_the_cap(version: Any) -> None:
    assert error_fields(minimal() | {"version": version}) == ["version"]


def test_unknown_keys_are_named_only_when_they_look_like_field_names() -> None:
    document = minimal() | {"replicas": 2, "root:$6$salt$hash:19000:0:99999:7::": None}

    with pytest.raises(TemplateValidationError) as info:
        parse_version(document)

    assert [field for field, _ in info.value.errors] == ["replicas", "<unknown key>"]
    assert "$6$" not in str(info.value)
