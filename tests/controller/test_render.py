"""Rendering InferenceServices: golden files for the whole catalog, and the arithmetic behind them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.labels import HASH_ANNOTATION, SOURCE_EVENT_ANNOTATION, STOP_ANNOTATION, content_hash_of, is_managed
from controller.render import (
    INITIAL_SCALE_ANNOTATION,
    PROGRESS_DEADLINE_ANNOTATION,
    RETENTION_ANNOTATION,
    RenderError,
    render_inference_service,
    scale_plan,
)
from controller.render_cache import cache_plan
from controller.render_config import ColdStart, RenderConfig
from controller.sinks.dir import to_yaml
from controller.state import Deployment
from events.types import DeploymentOverrides
from templates.catalog import load_catalog
from templates.schema import ModelTemplateVersion, parse_version

K8S_VERSION = "1.29"
GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
CATALOG = load_catalog()
CONFIG = RenderConfig()
# KServe-specific fields of the predictor and the model; everything else must be a real PodSpec / Container field
PREDICTOR_FIELDS = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout", "workerSpec"}
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri"}
WORKER_FIELDS = {"pipelineParallelSize", "tensorParallelSize"}
FORBIDDEN_KEYS = {
    "image",
    "command",
    "hostPath",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "privileged",
    "securityContext",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "capabilities",
}


def default_deployment(version: ModelTemplateVersion, **changes: Any) -> Deployment:
    fields: dict[str, Any] = {"template": version.name, "namespace": "default", "name": version.name, "version": None}
    return Deployment(**(fields | changes))


def rendered(version: ModelTemplateVersion, **changes: Any) -> dict[str, Any]:
    return render_inference_service(version, default_deployment(version, **changes), CONFIG)


def content_without_history(isvc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact) of the object without its hash and source-event annotations."""
    annotations = {k: v for k, v in isvc["metadata"]["annotations"].items() if k not in (HASH_ANNOTATION, SOURCE_EVENT_ANNOTATION)}
    content = isvc | {"metadata": isvc["metadata"] | {"annotations": annotations}}
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def by_name(name: str) -> ModelTemplateVersion:
    return next(v for v in CATALOG if v.name == name)


def gpu_count(resources: dict[str, Any]) -> int:
    return int(resources["limits"].get(CONFIG.gpu_resource, 0))


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


def validate_as_pod(pod_spec: dict[str, Any]) -> None:
    """Validate against the Kubernetes OpenAPI schema, strictly: an unknown or mistyped field fails."""
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_spec}, K8S_VERSION, strict=True
    )


@pytest.mark.parametrize("version", CATALOG, ids=lambda v: v.name)
def test_golden(version: ModelTemplateVersion) -> None:
    text = to_yaml(rendered(version))
    path = GOLDEN_DIR / f"{version.name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(encoding="utf-8"), f"{version.name} renders differently from {path} (UPDATE_GOLDEN=1 to accept)"


def test_every_golden_file_belongs_to_a_catalog_template() -> None:
    assert {p.stem for p in GOLDEN_DIR.glob("*.yaml")} == {v.name for v in CATALOG}


@pytest.mark.parametrize("version", CATALOG, ids=lambda v: v.name)
def test_catalog_arithmetic(version: ModelTemplateVersion) -> None:
    spec = version.spec
    isvc = rendered(version)
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]

    assert gpu_count(model["resources"]) == spec.resources.gpus, "GPUs per pod"
    assert model["resources"]["requests"] == model["resources"]["limits"]
    assert f"--served-model-name={version.served_model_name}" in model["args"]
    if spec.parallelism.tensor > 1:
        assert f"--tensor-parallel-size={spec.parallelism.tensor}" in model["args"]
    if spec.parallelism.pipeline > 1:
        assert f"--pipeline-parallel-size={spec.parallelism.pipeline}" in model["args"]
    pods = 1
    if spec.parallelism.nodes > 1:
        worker = predictor["workerSpec"]
        assert worker["pipelineParallelSize"] == spec.parallelism.nodes
        assert worker["tensorParallelSize"] == spec.resources.gpus
        assert gpu_count(worker["containers"][0]["resources"]) == spec.resources.gpus
        pods = worker["pipelineParallelSize"]
        assert model["runtime"] == CONFIG.multinode_runtime
    else:
        assert "workerSpec" not in predictor
        assert model["runtime"] == CONFIG.runtime
    if spec.total_gpus:
        assert pods * gpu_count(model["resources"]) == spec.total_gpus == spec.parallelism.tensor * spec.parallelism.pipeline

    if spec.scaling.priority >= 2 or spec.parallelism.nodes > 1:
        assert predictor["minReplicas"] >= 1
    else:
        assert predictor["minReplicas"] == spec.scaling.min_replicas
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    if spec.source_scheme == "local" or cache_plan(version, CONFIG).mode == "job":
        assert "storageUri" not in model  # the runtime reads the local path or the cached copy
    else:
        assert model["storageUri"] == spec.source
    if spec.resources.gpus:
        assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": CONFIG.gpu_products[spec.resources.gpu_type or ""]}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    else:
        assert "nodeSelector" not in predictor and "tolerations" not in predictor
    secret = spec.storage.hf_token_secret
    token_env = [e for e in model["env"] if e["name"] == "HF_TOKEN"]
    if secret:
        assert token_env == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}]
    else:
        assert token_env == []
    assert is_managed(isvc)
    labels = isvc["metadata"]["labels"]
    assert labels["stokehold.dev/template"] == version.name and labels["stokehold.dev/version"] == str(version.version)


@pytest.mark.parametrize("version", CATALOG, ids=lambda v: v.name)
def test_only_real_pod_fields_and_nothing_dangerous(version: ModelTemplateVersion) -> None:
    isvc = rendered(version)
    predictor = isvc["spec"]["predictor"]
    assert not all_keys(isvc) & FORBIDDEN_KEYS
    # KServe fills in the image from the ClusterServingRuntime; the schema needs one to validate the rest
    container = {"name": "kserve-container", "image": "from-the-runtime"} | {
        k: v for k, v in predictor["model"].items() if k not in MODEL_FIELDS
    }
    validate_as_pod({"containers": [container]} | {k: v for k, v in predictor.items() if k not in PREDICTOR_FIELDS})
    if "workerSpec" in predictor:
        worker = {k: v for k, v in predictor["workerSpec"].items() if k not in WORKER_FIELDS}
        worker["containers"] = [c | {"image": "from-the-runtime"} for c in worker["containers"]]
        validate_as_pod(worker)


def test_the_schema_check_catches_a_field_kubernetes_does_not_know() -> None:
    container = {"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}, "gpus": 1}
    with pytest.raises(kubernetes_validate.ValidationError, match="'gpus' was unexpected"):
        validate_as_pod({"containers": [container]})


def test_serverless_annotations_suit_gpu_cold_starts() -> None:
    small, big = by_name("qwen3-32b-awq"), by_name("llama-3-3-70b-instruct")
    uncached = RenderConfig(model_cache_mode="off")  # each pod downloads: the deadline counts the download
    small_annotations, big_annotations = (
        render_inference_service(v, default_deployment(v), uncached)["metadata"]["annotations"] for v in (small, big)
    )
    for found in (small_annotations, big_annotations):
        assert found["serving.kserve.io/deploymentMode"] == "Knative"  # KServe >= 0.16's name (tests/admission)
        assert found[INITIAL_SCALE_ANNOTATION] == "1"
    deadline = {
        name: int(a[PROGRESS_DEADLINE_ANNOTATION].rstrip("s")) for name, a in {"small": small_annotations, "big": big_annotations}.items()
    }
    assert CONFIG.cold_start.floor_s <= deadline["small"] < deadline["big"] <= CONFIG.cold_start.cap_s
    assert deadline["big"] > 600, "Knative's default 10 minutes would kill a 141 GB first start"
    assert big_annotations[RETENTION_ANNOTATION] == "1800s", "keep_hot 30m"
    predictor = rendered(big)["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] == big.spec.scaling.target_concurrency
    assert predictor["timeout"] >= 600


def test_cold_start_deadline_floor_and_cap() -> None:
    cold = ColdStart(floor_s=600, cap_s=3600)
    assert cold.deadline_seconds(0.01) == 600
    assert cold.deadline_seconds(10_000) == 3600
    assert cold.deadline_seconds(50) < cold.deadline_seconds(100)
    assert cold.deadline_seconds(100, local_source=True) < cold.deadline_seconds(100)
    assert cold.deadline_seconds(None) == cold.deadline_seconds(cold.default_model_size_gb)


def test_multinode_is_raw_deployment_that_cannot_scale_to_zero() -> None:
    version = by_name("llama-3-3-70b-instruct-multinode")
    isvc = rendered(version)
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # KServe >= 0.16's name (tests/admission)
    assert annotations["serving.kserve.io/autoscalerClass"] == "none"
    assert PROGRESS_DEADLINE_ANNOTATION not in annotations and RETENTION_ANNOTATION not in annotations
    plan = scale_plan(version, default_deployment(version))
    assert not plan.scale_to_zero and plan.multinode and "cannot scale a multi-pod service to zero" in (plan.note or "")


def test_always_hot_and_scale_to_zero() -> None:
    hot = by_name("llama-3-1-8b-instruct")  # priority 2
    assert rendered(hot, overrides=DeploymentOverrides(min_replicas=0))["spec"]["predictor"]["minReplicas"] == 1
    cold = by_name("gemma-3-12b-it")
    isvc = rendered(cold)
    assert isvc["spec"]["predictor"]["minReplicas"] == 0
    assert isvc["metadata"]["annotations"][RETENTION_ANNOTATION] == "600s"
    assert scale_plan(cold, default_deployment(cold)).scale_to_zero
    promoted = rendered(cold, overrides=DeploymentOverrides(priority=2))
    assert promoted["spec"]["predictor"]["minReplicas"] == 1 and RETENTION_ANNOTATION not in promoted["metadata"]["annotations"]


def test_overrides_change_the_content_hash_event_ids_do_not() -> None:
    version = by_name("gemma-3-12b-it")
    base = rendered(version, event_id="e1")
    assert content_hash_of(base) == content_without_history(base)
    assert base["metadata"]["annotations"][SOURCE_EVENT_ANNOTATION] == "e1"
    assert content_hash_of(rendered(version, event_id="e2")) == content_hash_of(base)
    scaled = rendered(version, overrides=DeploymentOverrides(max_replicas=5))
    assert scaled["spec"]["predictor"]["maxReplicas"] == 5
    assert content_hash_of(scaled) != content_hash_of(base)
    stopped = rendered(version, stopped=True)
    assert stopped["metadata"]["annotations"][STOP_ANNOTATION] == "true"
    assert content_hash_of(stopped) != content_hash_of(base)
    assert base["metadata"]["annotations"]["stokehold.dev/version-hash"] == version.content_hash
    assert HASH_ANNOTATION in base["metadata"]["annotations"]


def test_overrides_that_no_longer_fit_raise_a_render_error() -> None:
    version = by_name("gemma-3-12b-it")  # max_replicas 3
    with pytest.raises(RenderError, match="min_replicas"):
        rendered(version, overrides=DeploymentOverrides(min_replicas=4))


def test_template_labels_go_under_a_safe_prefix() -> None:
    document = by_name("tiny-demo").to_document()
    document["template"]["labels"] = {"team": "search", "networking.knative.dev/visibility": "cluster-local", "example.com/team": "ads"}
    isvc = rendered(parse_version(document))
    labels = isvc["metadata"]["labels"]
    assert labels["template.stokehold.dev/team"] == "search", "the unprefixed key wins"
    assert labels["template.stokehold.dev/visibility"] == "cluster-local"
    assert not any(key.startswith(("networking.knative.dev", "example.com")) for key in labels)


def test_model_cache_pvc_and_default_token_secret() -> None:
    version = by_name("qwen3-8b")  # cache PVC, no token secret
    config = RenderConfig.model_validate({"hf_token_secret": {"name": "org-hf-token"}})
    isvc = render_inference_service(version, default_deployment(version), config)
    predictor = isvc["spec"]["predictor"]
    assert predictor["volumes"] == [{"name": "model-cache", "persistentVolumeClaim": {"claimName": "stokehold-model-cache"}}]
    assert predictor["model"]["volumeMounts"] == [{"name": "model-cache", "mountPath": config.model_cache_mount}]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "org-hf-token", "key": "HF_TOKEN"}}} in predictor["model"]["env"]


def test_golden_files_are_plain_sorted_yaml() -> None:
    text = (GOLDEN_DIR / "tiny-demo.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    assert list(document) == sorted(document)
    assert document["metadata"]["name"] == "tiny-demo"


@pytest.mark.parametrize("version", CATALOG, ids=lambda v: v.name)
def test_rendering_is_a_function_of_its_inputs(version: ModelTemplateVersion) -> None:
    deployment = default_deployment(version, event_id="e1")
    first = render_inference_service(version, deployment, CONFIG)
    first["spec"]["predictor"]["model"]["args"].append("--changed-by-a-caller")  # callers own what they get
    first["metadata"]["labels"]["changed"] = "yes"
    first["metadata"]["annotations"]["changed"] = "yes"
    again = render_inference_service(version, deployment, CONFIG)
    assert "--changed-by-a-caller" not in again["spec"]["predictor"]["model"]["args"]
    assert "changed" not in again["metadata"]["labels"] and "changed" not in again["metadata"]["annotations"]
    assert again == render_inference_service(version, deployment, CONFIG)


def test_a_render_follows_the_configuration_and_the_deployment() -> None:
    version = by_name("gemma-3-12b-it")
    other = RenderConfig.model_validate({"runtime": "another-runtime", "gpu_products": {"nvidia-l40s": "L40S-custom"}})
    isvc = render_inference_service(version, default_deployment(version), other)
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "another-runtime"
    assert isvc["spec"]["predictor"]["nodeSelector"] == {"nvidia.com/gpu.product": "L40S-custom"}

    scaled_deployment = default_deployment(version, overrides=DeploymentOverrides(max_replicas=5))
    scaled = render_inference_service(version, scaled_deployment, other)
    assert scaled["spec"]["predictor"]["maxReplicas"] == 5 and content_hash_of(scaled) != content_hash_of(isvc)
    stopped = render_inference_service(version, default_deployment(version, stopped=True), other)
    assert stopped["metadata"]["annotations"][STOP_ANNOTATION] == "true"
    resumed = render_inference_service(version, default_deployment(version), other)
    assert STOP_ANNOTATION not in resumed["metadata"]["annotations"] and resumed == isvc


def test_overrides_without_a_value_change_nothing() -> None:
    """A decoded request carries every override field, most of them None: the same object as no overrides."""
    version = by_name("gemma-3-12b-it")
    unset = DeploymentOverrides.model_validate(dict.fromkeys(DeploymentOverrides.model_fields))
    assert unset.model_fields_set
    assert rendered(version, overrides=unset) == rendered(version)


def test_the_pure_core_imports_no_client() -> None:
    """render, state and their configuration import no NATS, Kubernetes or HTTP client (a fresh interpreter tells)."""
    probe = (
        "import sys, controller.render, controller.state, controller.render_config, controller.labels; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'nats', 'kubernetes', 'aiohttp', 'httpx', 'urllib3', 'cloudevents', 'prometheus_client'})))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True, cwd=root)
    assert result.stdout.split() == [], f"the pure core imports {result.stdout.strip()}"
