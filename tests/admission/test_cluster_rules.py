"""Inputs stokehold's validation used to accept, and that a real KServe v0.16 / Knative 1.15 cluster refuses later.

One test per point of the issue; each failed on the code before it. `tests/admission/cluster.py`
holds the rules as the cluster applies them, independent of stokehold's constants.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.sinks.base import ApplyAction
from controller.sinks.kube import KubeSink
from controller.state import Deployment
from events.types import DeploymentOverrides, DeploymentRequested
from templates.catalog import load_catalog
from templates.from_hf import template_from_hf
from templates.naming import SERVICE_NAME_MAX
from templates.schema import ModelTemplateVersion, Scaling, TemplateValidationError, parse_version
from tests.admission.cluster import auto_selected, max_revision_timeout_s, stokehold_runtimes, violations
from tests.k8s_emulator import KubernetesEmulator

CATALOG = load_catalog()
CONFIG = RenderConfig()
# KServe v0.16.0's own runtime for Hugging Face models (config/runtimes/kserve-huggingfaceserver.yaml): what other teams use
KSERVE_HUGGINGFACESERVER = {
    "metadata": {"name": "kserve-huggingfaceserver"},
    "spec": {
        "supportedModelFormats": [{"name": "huggingface", "version": "1", "autoSelect": True, "priority": 1}],
        "protocolVersions": ["v2", "v1"],
    },
}


def document(name: str = "chat", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": "hf://org/model", "resources": {"gpus": 1, "gpu_type": "nvidia-l4"}}
    return {"template": {"name": name}, "version": 1, "spec": base | spec}


def render(version: ModelTemplateVersion, config: RenderConfig = CONFIG, **deployment: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"template": version.name, "namespace": "llm", "name": version.name, "version": None}
    return render_inference_service(version, Deployment(**(fields | deployment)), config)


def refused(document: dict[str, Any]) -> str:
    with pytest.raises(TemplateValidationError) as error:
        parse_version(document)
    return str(error.value)


@pytest.mark.parametrize("version", CATALOG, ids=lambda v: v.name)
def test_the_catalog_renders_objects_a_cluster_accepts(version: ModelTemplateVersion) -> None:
    assert violations(render(version)) == []


# 1 ------------------------------------------------------------------ DNS-1035 names


def test_1_a_name_starting_with_a_digit_is_refused_at_publish_time() -> None:
    assert "DNS-1035" in refused(document("01-ai--yi-6b"))
    with pytest.raises(ValidationError, match="DNS-1035"):
        DeploymentRequested(template="chat", name="1st-chat")
    # from-hf turns such an ID into a name KServe takes
    version = template_from_hf("01-ai/Yi-6B")
    assert version.name[0].isalpha()
    assert violations(render(version)) == []


# 2 ----------------------------------------------------------------- derived names


def test_2_names_leave_room_for_every_name_kserve_and_knative_derive() -> None:
    longest = "m" * SERVICE_NAME_MAX
    assert SERVICE_NAME_MAX == 41
    assert violations(render(parse_version(document(longest)))) == []
    multinode = document(longest, source="pvc://models/llama", resources={"gpus": 8}, parallelism={"tensor": 8, "pipeline": 2, "nodes": 2})
    assert violations(render(parse_version(multinode))) == []
    # one more, up to the 63 characters a DNS-1123 label may have, breaks a derived name: refused, naming the bound
    for length in (SERVICE_NAME_MAX + 1, 54, 63):
        text = refused(document("m" * length))
        assert f"at most {SERVICE_NAME_MAX}" in text and "isvc.<name>-predictor-worker" in text
    with pytest.raises(ValidationError, match=f"at most {SERVICE_NAME_MAX}"):
        DeploymentRequested(template="chat", name="m" * 54)


def test_2_from_hf_cuts_long_ids_with_a_hash_so_they_never_collide() -> None:
    long_id = "some-organisation/a-very-long-model-name-with-many-parts-7b-instruct-v"
    ids = [f"{long_id}1", f"{long_id}2"]
    names = [template_from_hf(hf_id).name for hf_id in ids]
    assert len(set(names)) == 2 and all(len(name) <= SERVICE_NAME_MAX for name in names)
    assert all(violations(render(template_from_hf(hf_id))) == [] for hf_id in ids)


# 3 ------------------------------------------------------------------------ keep_hot


def test_3_keep_hot_beyond_knatives_one_hour_is_refused_naming_the_bound() -> None:
    text = refused(document(scaling={"keep_hot": "2h"}))
    assert "1h" in text and "scale-to-zero-pod-retention-period" in text and "min_replicas" in text
    with pytest.raises(ValidationError, match="scale-to-zero-pod-retention-period"):
        DeploymentOverrides(keep_hot="24h").apply_to(Scaling())
    at_bound = render(parse_version(document(scaling={"keep_hot": "1h"})))
    assert at_bound["metadata"]["annotations"]["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "3600s"
    assert violations(at_bound) == []


def test_3_longer_hot_periods_have_a_way_that_works() -> None:
    for scaling in ({"min_replicas": 1, "max_replicas": 2}, {"priority": 2}):
        isvc = render(parse_version(document(scaling=scaling)))
        assert isvc["spec"]["predictor"]["minReplicas"] >= 1 and violations(isvc) == []


# 4 ------------------------------------------------------------------ request timeout


def test_4_every_request_timeout_the_controller_accepts_fits_knative_as_manifests_knative_sets_it() -> None:
    highest = RenderConfig.model_fields["request_timeout_s"].metadata
    bound = next(m.le for m in highest if hasattr(m, "le"))
    assert bound > 600, "long generations need more than Knative's default 10 minutes"
    assert max_revision_timeout_s() >= bound
    isvc = render(CATALOG[0], RenderConfig(request_timeout_s=bound))
    assert isvc["spec"]["predictor"]["timeout"] == bound and violations(isvc) == []
    with pytest.raises(ValidationError):
        RenderConfig(request_timeout_s=bound + 1)


# 5 ------------------------------------------------------------------------ gpu_type


@pytest.mark.parametrize("gpu_type", ["a100-", "a100_", "a100.", "-a100", "", "x" * 64])
def test_5_a_gpu_type_that_is_no_label_value_is_refused(gpu_type: str) -> None:
    assert "label value" in refused(document(resources={"gpus": 1, "gpu_type": gpu_type}))


def test_5_an_unmapped_gpu_type_becomes_a_valid_node_selector() -> None:
    isvc = render(parse_version(document(resources={"gpus": 1, "gpu_type": "my.cluster_gpu-v2"})))
    assert isvc["spec"]["predictor"]["nodeSelector"] == {"nvidia.com/gpu.product": "my.cluster_gpu-v2"}
    assert violations(isvc) == []
    with pytest.raises(ValidationError, match="label value"):
        RenderConfig(gpu_products={"nvidia-l4": "NVIDIA-L4-"})


# 6 ---------------------------------------------------------------------- runtimes


@pytest.mark.parametrize("model_format", [{"name": "huggingface"}, {"name": "huggingface", "version": "1"}, {"name": "vllm"}])
def test_6_stokehold_runtimes_never_take_other_teams_services(model_format: dict[str, Any]) -> None:
    runtimes = [KSERVE_HUGGINGFACESERVER, *stokehold_runtimes()]
    chosen = {auto_selected(runtimes, model_format, protocol=p, multinode=m) for p in ("v1", "v2") for m in (False, True)}
    assert not chosen & {r["metadata"]["name"] for r in stokehold_runtimes()}
    assert auto_selected(runtimes, {"name": "huggingface"}) == "kserve-huggingfaceserver"


def test_6_every_rendered_service_names_its_runtime() -> None:
    for version in CATALOG:
        model = render(version)["spec"]["predictor"]["model"]
        assert model["runtime"] in {r["metadata"]["name"] for r in stokehold_runtimes()}
        assert not [v for v in violations(render(version)) if v[0] == "runtime"]


# 7 ----------------------------------------------------------------- deployment modes


def test_7_modes_are_rendered_by_kserve_0_16_names_with_a_setting_for_older_clusters() -> None:
    single, multi = next(v for v in CATALOG if v.spec.parallelism.nodes == 1), next(v for v in CATALOG if v.spec.parallelism.nodes > 1)
    mode = "serving.kserve.io/deploymentMode"
    assert (render(single)["metadata"]["annotations"][mode], render(multi)["metadata"]["annotations"][mode]) == ("Knative", "Standard")
    legacy = RenderConfig(legacy_deployment_modes=True)
    legacy_modes = (render(single, legacy)["metadata"]["annotations"][mode], render(multi, legacy)["metadata"]["annotations"][mode])
    assert legacy_modes == ("Serverless", "RawDeployment")
    assert violations(render(multi, legacy), legacy_modes=True) == []


@pytest.fixture
async def sink(kube: KubernetesEmulator) -> AsyncIterator[KubeSink]:
    kube_sink = KubeSink(kube.api_client(), workers=2)
    yield kube_sink
    await kube_sink.close()


def next_version(isvc: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(isvc)
    changed["spec"]["predictor"]["maxReplicas"] += 1
    changed["metadata"]["annotations"]["stokehold.dev/content-hash"] = "sha256:next"
    return changed


async def test_7_a_service_kserve_0_16_has_reconciled_can_still_be_updated(kube: KubernetesEmulator, sink: KubeSink) -> None:
    isvc = render(CATALOG[0])
    assert await sink.apply(isvc) is ApplyAction.CREATED
    assert kube.set_isvc_status("llm", isvc["metadata"]["name"], ready=True)["status"]["deploymentMode"] == "Knative"
    assert await sink.apply(next_version(isvc)) is ApplyAction.UPDATED
    # the old name is refused by KServe 0.16.0's webhook once it recorded the new one (what stokehold used to render)
    legacy = render(CATALOG[0], RenderConfig(legacy_deployment_modes=True))
    legacy["metadata"]["name"] = "legacy"
    api, where = CustomObjectsApi(kube.api_client()), ("serving.kserve.io", "v1beta1", "llm", "inferenceservices")
    api.create_namespaced_custom_object(*where, legacy)
    kube.set_isvc_status("llm", "legacy", ready=True)
    with pytest.raises(ApiException) as refused_update:
        api.patch_namespaced_custom_object(*where, "legacy", {"spec": {"predictor": {"maxReplicas": 3}}})
    assert refused_update.value.status == 403


async def test_7_services_an_older_kserve_created_keep_the_mode_name_it_recorded(kube: KubernetesEmulator, sink: KubeSink) -> None:
    isvc = render(CATALOG[0])
    name = isvc["metadata"]["name"]
    assert await sink.apply(isvc) is ApplyAction.CREATED
    kube.set_isvc_status("llm", name, ready=True, deployment_mode="Serverless")  # recorded by KServe 0.15, before the upgrade
    assert await sink.apply(next_version(isvc)) is ApplyAction.UPDATED
    stored = kube.get("isvc", "llm", name)
    assert stored is not None and stored["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert stored["spec"]["predictor"]["maxReplicas"] == isvc["spec"]["predictor"]["maxReplicas"] + 1
