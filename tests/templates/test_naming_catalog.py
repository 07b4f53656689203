"""HF-ID sanitisation, the built-in catalog and the immutable version registry."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from templates.catalog import CATALOG_DIR, load_catalog, load_file, registry_of, to_yaml
from templates.from_hf import GPU_MEMORY_GB, parameters_billions, template_from_hf
from templates.naming import is_dns1123_label, k8s_name
from templates.registry import AddOutcome, ImmutableVersionError, VersionRegistry
from templates.schema import VERSION_MAX, TemplateValidationError, parse_version

REQUIRED = {
    "qwen3-8b",
    "qwen3-30b-a3b",
    "qwen3-32b-awq",
    "llama-3-1-8b-instruct",
    "llama-3-3-70b-instruct",
    "llama-3-3-70b-instruct-multinode",
    "gpt-oss-20b",
    "gemma-3-12b-it",
    "mistral-small-3-2-24b-instruct",
    "deepseek-r1-distill-qwen-14b",
    "qwen3-embedding-0-6b",
    "bge-m3",
    "bge-reranker-v2-m3",
    "tiny-demo",
}


def test_hf_ids_become_kubernetes_names() -> None:
    assert k8s_name("google/gemma-7b") == "google--gemma-7b"
    # capitals and '.' are lost in the name: a hash of the ID keeps it apart from its look-alikes
    assert k8s_name("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai--mistral-7b-instruct-v0-2-5e7cb87c"
    long_id = "org/" + "very-long-model-name-" * 6
    name = k8s_name(long_id)
    assert len(name) == 63 and is_dns1123_label(name)
    assert name == k8s_name(long_id), "stable across runs"
    assert k8s_name(long_id + "x") != name, "the hash suffix keeps cut names distinct"


@given(st.text(max_size=200))
def test_any_text_gives_a_valid_stable_name_that_starts_with_a_letter(text: str) -> None:
    name = k8s_name(text)
    assert is_dns1123_label(name) and name[0].isalpha()
    assert name == k8s_name(text)


def test_look_alike_ids_get_different_names() -> None:
    look_alikes = ["Google/Gemma_7B", "google/gemma.7b", "google/gemma-7b", "google/gemma_7b", "google/Gemma-7b", "google--gemma/7b"]
    look_alikes += ["a--b/c", "a/b--c", "01-ai/Yi-6B", "1-ai/yi-6b"]

    names = [k8s_name(hf_id) for hf_id in look_alikes]

    assert len(set(names)) == len(names), dict(zip(look_alikes, names, strict=True))
    assert all(is_dns1123_label(name) and name[0].isalpha() for name in names)


_ID = r"[a-z][a-z0-9]{0,5}(?:[-._][a-z0-9]{1,5}){0,3}/[a-z0-9]{1,5}(?:[-._][a-z0-9]{1,5}){0,3}"


@given(st.from_regex(_ID, fullmatch=True), st.data())
def test_an_id_and_its_look_alike_never_share_a_name(hf_id: str, data: st.DataObject) -> None:
    """The same ID with other separators ('-', '.', '_') or other capitals: what a lossy mapping folds together."""
    look_alike = "".join(
        data.draw(st.sampled_from("-._")) if char in "-._" else data.draw(st.sampled_from([char, char.upper()])) for char in hf_id
    )
    assume(look_alike != hf_id)
    assert k8s_name(look_alike) != k8s_name(hf_id)


def test_catalog_has_the_required_templates_and_each_validates() -> None:
    versions = load_catalog()
    names = {v.name for v in versions}
    assert names >= REQUIRED
    assert any(v.spec.total_gpus >= 2 for v in versions), "a multi-GPU template"
    assert any(v.spec.parallelism.nodes > 1 for v in versions), "a multi-node template"
    assert any(v.spec.engine.quantization for v in versions), "a quantised template"
    assert any(v.spec.task == "embed" for v in versions), "an embedding template"
    for path in CATALOG_DIR.glob("*.yaml"):
        assert load_file(path).name == path.stem, "file name matches template name"


@pytest.mark.parametrize("version", load_catalog(), ids=lambda v: v.name)
def test_catalog_resource_arithmetic(version) -> None:  # type: ignore[no-untyped-def]
    spec = version.spec
    par = spec.parallelism
    assert par.tensor * par.pipeline == max(spec.resources.gpus, 1) * par.nodes
    if spec.resources.gpus:
        assert spec.resources.gpu_type, "GPU templates say which GPU"
        assert spec.model_size_gb is not None
        # the weights take at most 85% of what vLLM may use on the named cards: the rest is KV cache and activations
        budget = spec.total_gpus * GPU_MEMORY_GB[spec.resources.gpu_type] * spec.engine.gpu_memory_utilization
        assert spec.model_size_gb <= 0.85 * budget, f"{spec.model_size_gb} GB of weights on {spec.total_gpus} x {spec.resources.gpu_type}"
    else:
        assert spec.engine.dtype in {"float32", "auto", "bfloat16"}
    assert spec.scaling.min_replicas <= spec.scaling.max_replicas
    assert parse_version(version.to_document()).content_hash == version.content_hash
    assert parse_version(__import__("yaml").safe_load(to_yaml(version))) == version


def test_registry_enforces_immutability() -> None:
    (v1,) = [v for v in load_catalog() if v.name == "tiny-demo"]
    registry = registry_of([v1])
    assert registry.add(v1) is AddOutcome.IDENTICAL
    changed = parse_version(v1.to_document() | {"spec": v1.to_document()["spec"] | {"model_size_gb": 0.02}})
    with pytest.raises(ImmutableVersionError, match="publish version 2"):
        registry.add(changed)
    v2 = parse_version(v1.to_document() | {"version": 2})
    assert registry.add(v2) is AddOutcome.NEW
    assert registry.latest("tiny-demo") == v2
    assert registry.remove("tiny-demo", 2) == v2
    assert registry.latest("tiny-demo") == v1
    assert VersionRegistry().latest("missing") is None


def test_from_hf_sizes_resources_from_the_id() -> None:
    assert parameters_billions("google/gemma-7b") == 7.0
    assert parameters_billions("mistralai/Mixtral-8x7B-Instruct-v0.1") == 56.0
    assert parameters_billions("Qwen/Qwen2.5-0.5B") == 0.5
    small = template_from_hf("google/gemma-7b")
    assert small.name == "google--gemma-7b" and small.spec.resources.gpus == 1
    big = template_from_hf("meta-llama/Llama-3.1-70B-Instruct")
    assert big.spec.resources.gpus == 4 and big.spec.parallelism.tensor == 4
    with pytest.raises(TemplateValidationError):
        template_from_hf("not-an-id")


def test_from_hf_cpu_templates_and_field_paths() -> None:
    cpu = template_from_hf("Qwen/Qwen2.5-0.5B-Instruct", gpus=0)
    assert (cpu.spec.resources.gpus, cpu.spec.resources.gpu_type, cpu.spec.parallelism.tensor) == (0, None, 1)
    embed = template_from_hf("BAAI/bge-small-en", task="embed")
    assert embed.spec.model_size_gb is not None and embed.spec.model_size_gb < 2, "an embedding model without a size in its ID"
    assert embed.spec.engine.max_model_len is None
    with pytest.raises(TemplateValidationError) as info:
        template_from_hf("acme/model-7b", quantization="q9")
    assert [field for field, _ in info.value.errors] == ["spec.engine.quantization"]
    with pytest.raises(TemplateValidationError) as info:
        template_from_hf("acme/model-7b", gpus=0, quantization="awq")
    ((field, message),) = info.value.errors
    assert field == "spec" and "engine.quantization" in message and "resources.gpus" in message


def test_the_next_number_suggested_never_passes_the_cap() -> None:
    (v1,) = [v for v in load_catalog() if v.name == "tiny-demo"]
    last = parse_version(v1.to_document() | {"version": VERSION_MAX})
    registry = registry_of([last])
    changed = parse_version(last.to_document() | {"spec": last.to_document()["spec"] | {"model_size_gb": 0.02}})

    with pytest.raises(ImmutableVersionError) as info:
        registry.add(changed)

    assert f"every version number up to {VERSION_MAX}" in str(info.value) and str(VERSION_MAX + 1) not in str(info.value)


def test_from_hf_refuses_a_size_no_model_has_in_one_error() -> None:
    with pytest.raises(TemplateValidationError) as info:
        template_from_hf("org/" + "4" * 400 + "b")
    assert [field for field, _ in info.value.errors] == ["hf_id"]
    with pytest.raises(TemplateValidationError):
        template_from_hf("org/" + "9" * 5000 + "x7b")
