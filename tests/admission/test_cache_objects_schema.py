"""The objects that warm the model cache pass the real schemas, through the emulator as through an API server.

- the pre-download Job: Kubernetes' own OpenAPI schema for batch/v1 (kubernetes-validate's copy, strictly: an
  unknown or mistyped field is refused), through `BatchV1Api` and also offline;
- the LocalModelCache: KServe v0.16.0's CRD (tests/crds), cluster-scoped, with nothing pruned or defaulted, and
  KServe's webhook that allows one LocalModelCache per source URI.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import urllib3
from kubernetes.client import BatchV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from controller.render_cache import job_name, local_model_cache_name, render_cache_job, render_local_model_cache
from controller.render_config import RenderConfig
from templates.schema import ModelTemplateVersion, SecretRef, parse_version
from tests.controller.test_render import CATALOG, by_name
from tests.k8s_emulator import KubernetesEmulator, openapi
from tests.k8s_emulator.resources import KUBERNETES_SCHEMA_VERSION, LOCAL_MODEL_CACHES

CONFIG = RenderConfig.model_validate(
    {
        "model_cache_pvc": "model-cache",
        "runtime_nats_user": "runtime",
        "runtime_nats_password_secret": {"name": "runtime-nats", "key": "password"},
        "hf_token_secret": {"name": "hf-token", "key": "HF_TOKEN"},
        "local_model_node_groups": ["gpu-nodes"],
    }
)
CACHEABLE = [v for v in CATALOG if v.spec.source_scheme in ("hf", "s3", "gs")]


def status_message(exc: ApiException) -> str:
    return str(json.loads(str(exc.body))["message"])


@pytest.mark.parametrize("version", CACHEABLE, ids=lambda v: v.name)
def test_every_rendered_cache_job_passes_the_kubernetes_schema(version: ModelTemplateVersion) -> None:
    job = render_cache_job(version, "team-a", CONFIG, "model-cache")
    kubernetes_validate.validate(job, KUBERNETES_SCHEMA_VERSION, strict=True)
    assert len(job["metadata"]["name"]) <= 63


def test_the_cache_job_is_created_through_the_api_with_nothing_dropped(kube: KubernetesEmulator) -> None:
    version = by_name("llama-3-3-70b-instruct")
    job = render_cache_job(version, "team-a", CONFIG, "model-cache")
    api = BatchV1Api(kube.api_client())
    created, code, headers = api.create_namespaced_job_with_http_info("team-a", copy.deepcopy(job))  # type: ignore[arg-type]
    assert code == 201 and "Warning" not in headers
    stored = kube.get("jobs", "team-a", job_name(version))
    assert stored is not None and stored["spec"] == job["spec"]
    container = stored["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][container["args"].index("--source") + 1] == version.spec.source
    assert stored["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}} in container["env"]
    assert {"name": "STOKEHOLD_NATS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "runtime-nats", "key": "password"}}} in container[
        "env"
    ]
    assert created.metadata is not None and created.metadata.name == job_name(version)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda spec: spec.update(backoffLimit="three"), "spec.backoffLimit"),
        (lambda spec: spec["template"]["spec"]["containers"][0].update(volumeMount=[]), "spec.template.spec.containers.0"),
    ],
)
def test_a_mistyped_or_misspelled_job_is_refused_with_the_field_path(kube: KubernetesEmulator, change: Any, field: str) -> None:
    # the client checks its own typed model first (and drops unknown keys), so this goes to the API as raw JSON
    job = render_cache_job(by_name("qwen3-8b"), "team-a", CONFIG, "model-cache")
    change(job["spec"])
    certificate = kube.certificate
    pool = urllib3.PoolManager(ca_certs=str(certificate.cert_file) if certificate is not None else None)
    answer = pool.request(
        "POST",
        f"{kube.url}/apis/batch/v1/namespaces/team-a/jobs",
        body=json.dumps(job),
        headers={"Authorization": f"Bearer {kube.token}", "Content-Type": "application/json"},
    )
    body = json.loads(answer.data)
    assert answer.status == 422 and body["reason"] == "Invalid" and field in body["message"]
    assert kube.get("jobs", "team-a", job["metadata"]["name"]) is None


@pytest.mark.parametrize("version", CACHEABLE, ids=lambda v: v.name)
def test_every_rendered_local_model_cache_passes_kserves_crd_with_nothing_pruned_or_defaulted(version: ModelTemplateVersion) -> None:
    lmc = render_local_model_cache(version, CONFIG)
    schema = LOCAL_MODEL_CACHES.schema or {}
    pruned, unknown = openapi.prune(lmc, schema)
    assert unknown == []
    assert openapi.default(pruned, schema) == lmc
    assert openapi.validate(lmc, schema) == []


def test_the_local_model_cache_is_cluster_scoped_and_one_per_source(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    version = by_name("qwen3-8b")
    lmc = render_local_model_cache(version, CONFIG)
    _, code, headers = api.create_cluster_custom_object_with_http_info("serving.kserve.io", "v1alpha1", "localmodelcaches", lmc)
    assert code == 201 and "Warning" not in headers
    stored = kube.get("localmodelcaches", "", local_model_cache_name(version.spec.source))
    assert stored is not None
    assert stored["spec"] == {"sourceModelUri": "hf://Qwen/Qwen3-8B", "modelSize": "17Gi", "nodeGroups": ["gpu-nodes"]}

    # a second version of the same source renders the same name (KServe would refuse another LocalModelCache of it)
    document = version.to_document() | {"version": 2}
    second = render_local_model_cache(parse_version(document), CONFIG)
    assert second["metadata"]["name"] == lmc["metadata"]["name"]
    other: dict[str, Any] = copy.deepcopy(lmc)
    other["metadata"]["name"] = "someone-elses-cache"
    with pytest.raises(ApiException) as refused:
        api.create_cluster_custom_object("serving.kserve.io", "v1alpha1", "localmodelcaches", other)
    assert refused.value.status == 403
    assert f"has the same StorageURI {version.spec.source}" in status_message(refused.value)


def test_a_local_model_cache_without_node_groups_is_refused_by_the_crd(kube: KubernetesEmulator) -> None:
    lmc = render_local_model_cache(by_name("qwen3-8b"), CONFIG)
    lmc["spec"]["nodeGroups"] = []
    with pytest.raises(ApiException) as refused:
        CustomObjectsApi(kube.api_client()).create_cluster_custom_object("serving.kserve.io", "v1alpha1", "localmodelcaches", lmc)
    assert refused.value.status == 422 and "spec.nodeGroups" in status_message(refused.value)


def test_job_names_are_dns_labels_for_the_longest_names() -> None:
    document = by_name("qwen3-8b").to_document()
    document["template"]["name"] = "a" * 27 + "-" + "b" * 13  # 41 characters, the longest a template name may be
    document["version"] = 1_000_000
    version = parse_version(document)
    name = job_name(version)
    assert len(name) <= 63 and name.startswith("stokehold-cache-aaaa") and name.endswith(f"-1000000-{version.content_hash[7:17]}")
    job = render_cache_job(version, "team-a", CONFIG.model_copy(update={"hf_token_secret": SecretRef(name="t")}), "model-cache")
    kubernetes_validate.validate(job, KUBERNETES_SCHEMA_VERSION, strict=True)
