"""The emulator serves KServe's resources through KServe's real CRD schemas (v0.16.0), as an API server does.

A real API server serving a structural CRD prunes fields the schema does not declare (reporting
them as a `Warning` when the client sends no `fieldValidation`, refusing the request with 400 under
`fieldValidation=Strict`, which kubectl sends by default), applies the schema's defaults, and
refuses type, format and pattern errors with 422 and the field path. KServe's webhook then
refuses names that are not DNS-1035 labels and updates that rename the recorded deployment mode.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from tests.admission.cluster import stokehold_runtimes
from tests.k8s_emulator import KubernetesEmulator, openapi
from tests.k8s_emulator.crds import KSERVE_VERSION
from tests.k8s_emulator.resources import CLUSTER_SERVING_RUNTIMES, INFERENCE_SERVICES

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"
GOLDEN = sorted((Path(__file__).resolve().parents[1] / "golden").glob("*.yaml"))


def golden(name: str = "tiny-demo") -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[1] / "golden" / f"{name}.yaml").read_text())
    obj["metadata"]["namespace"] = "default"
    return obj


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_the_schemas_are_kserves_pinned_crds() -> None:
    assert KSERVE_VERSION == "v0.16.0"
    spec = INFERENCE_SERVICES.schema["properties"]["spec"]
    assert spec["required"] == ["predictor"]
    predictor = spec["properties"]["predictor"]["properties"]
    assert predictor["minReplicas"]["type"] == "integer" and "workerSpec" in predictor
    assert "description" not in json.dumps(predictor["model"]["properties"]["modelFormat"])  # trimmed


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_every_golden_inference_service_passes_the_real_schema_with_nothing_pruned_or_defaulted(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    pruned, unknown = openapi.prune(obj, INFERENCE_SERVICES.schema or {})
    assert unknown == []
    assert openapi.default(pruned, INFERENCE_SERVICES.schema or {}) == obj
    assert openapi.validate(obj, INFERENCE_SERVICES.schema or {}) == []


def test_stokeholds_cluster_serving_runtimes_pass_the_real_schema(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    for runtime in stokehold_runtimes():
        _, _, headers = api.create_cluster_custom_object_with_http_info(G, "v1alpha1", "clusterservingruntimes", copy.deepcopy(runtime))
        assert "Warning" not in headers, "nothing pruned"
        assert kube.get("clusterservingruntimes", "", runtime["metadata"]["name"]) is not None
        assert openapi.validate(runtime, CLUSTER_SERVING_RUNTIMES.schema or {}) == []


def test_a_misspelled_field_is_pruned_with_a_warning_when_the_client_sends_no_field_validation(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    obj["spec"]["predictor"]["minReplica"] = 1  # misspelled: minReplicas
    created, code, headers = api.create_namespaced_custom_object_with_http_info(G, V, "default", P, obj)
    assert code == 201
    stored = kube.get("isvc", "default", "tiny-demo")
    assert stored is not None and "minReplica" not in stored["spec"]["predictor"] and "minReplica" not in created["spec"]["predictor"]
    assert headers.getlist("Warning") == ['299 - "unknown field \\"spec.predictor.minReplica\\""']


def test_a_misspelled_field_is_refused_under_strict_field_validation(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    obj["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(G, V, "default", P, obj, field_validation="Strict")
    assert refused.value.status == 400
    assert status_of(refused.value)["message"] == (
        'InferenceService in version "v1beta1" cannot be handled as a InferenceService: '
        'strict decoding error: unknown field "spec.predictor.minReplica"'
    )
    assert kube.get("isvc", "default", "tiny-demo") is None

    # the same on update (merge patch), and Ignore drops it silently
    api.create_namespaced_custom_object(G, V, "default", P, golden())
    misspelled = {"spec": {"predictor": {"maxReplica": 3}}}
    with pytest.raises(ApiException) as patched:
        api.patch_namespaced_custom_object(G, V, "default", P, "tiny-demo", misspelled, field_validation="Strict")
    assert patched.value.status == 400 and 'unknown field "spec.predictor.maxReplica"' in status_of(patched.value)["message"]
    _, _, headers = api.patch_namespaced_custom_object_with_http_info(
        G, V, "default", P, "tiny-demo", misspelled, field_validation="Ignore"
    )
    assert "Warning" not in headers


def test_unknown_status_fields_are_kept_where_the_schema_preserves_them(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    api.create_namespaced_custom_object(G, V, "default", P, golden())
    body = {"status": {"url": "http://x", "somethingNew": {"a": 1}, "modelStatus": {"transitionStatus": "UpToDate", "copies": {}}}}
    updated = api.patch_namespaced_custom_object_status(G, V, "default", P, "tiny-demo", body)
    assert updated["status"]["somethingNew"] == {"a": 1}, "status has x-kubernetes-preserve-unknown-fields"
    assert updated["status"]["modelStatus"]["copies"] == {"failedCopies": 0}, "the schema's default"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda p: p.update(minReplicas="one"), "spec.predictor.minReplicas", "FieldValueTypeInvalid"),
        (lambda p: p["model"]["resources"]["limits"].update(cpu="lots"), "spec.predictor.model.resources.limits[cpu]", "FieldValueInvalid"),
        (lambda p: p["model"]["env"].insert(1, dict(p["model"]["env"][0])), "spec.predictor.model.env[1]", "FieldValueDuplicate"),
        (lambda p: p.update(scaleMetric="gpu"), "spec.predictor.scaleMetric", "FieldValueNotSupported"),
        (lambda p: p["model"].update(modelFormat={}), "spec.predictor.model.modelFormat.name", "FieldValueRequired"),
        (lambda p: p["model"].update(args="--x"), "spec.predictor.model.args", "FieldValueTypeInvalid"),
    ],
)
def test_type_and_format_errors_are_422_with_the_field_path(kube: KubernetesEmulator, change: Any, field: str, reason: str) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    change(obj["spec"]["predictor"])
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(G, V, "default", P, obj)
    body = status_of(refused.value)
    assert refused.value.status == 422 and body["reason"] == "Invalid"
    assert {"field": field, "reason": reason} in [{k: c[k] for k in ("field", "reason")} for c in body["details"]["causes"]]
    assert body["message"].startswith('InferenceService.serving.kserve.io "tiny-demo" is invalid: ') and field in body["message"]


def test_defaults_are_applied(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    model = obj["spec"]["predictor"]["model"]
    model["ports"] = [{"containerPort": 8080}]
    model["env"].append({"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"key": "k"}}})
    created = api.create_namespaced_custom_object(G, V, "default", P, obj)
    stored = created["spec"]["predictor"]["model"]
    assert stored["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert stored["env"][-1]["valueFrom"]["secretKeyRef"] == {"key": "k", "name": ""}


def test_a_null_the_schema_does_not_allow_is_dropped(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    obj["spec"]["predictor"]["canaryTrafficPercent"] = None
    created = api.create_namespaced_custom_object(G, V, "default", P, obj)
    assert "canaryTrafficPercent" not in created["spec"]["predictor"]


def test_kserves_webhook_refuses_a_name_that_is_no_dns_1035_label(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    obj["metadata"]["name"] = "01-ai--yi-6b"
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(G, V, "default", P, obj)
    assert refused.value.status == 403
    assert 'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request' in status_of(refused.value)["message"]


def test_kserve_0_16_refuses_an_update_that_names_the_recorded_mode_differently(kube: KubernetesEmulator) -> None:
    api = CustomObjectsApi(kube.api_client())
    obj = golden()
    obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverless"
    api.create_namespaced_custom_object(G, V, "default", P, obj)
    assert kube.set_isvc_status("default", "tiny-demo", ready=True)["status"]["deploymentMode"] == "Knative"  # recorded by its new name
    with pytest.raises(ApiException) as refused:
        api.patch_namespaced_custom_object(G, V, "default", P, "tiny-demo", {"spec": {"predictor": {"maxReplicas": 2}}})
    assert refused.value.status == 403
    assert "deploymentMode cannot be changed from 'Knative' to 'Serverless'" in status_of(refused.value)["message"]
    renamed = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Knative"}}, "spec": {"predictor": {"maxReplicas": 2}}}
    assert api.patch_namespaced_custom_object(G, V, "default", P, "tiny-demo", renamed)["spec"]["predictor"]["maxReplicas"] == 2
