"""A template version + a deployment → a KServe InferenceService (pure, no I/O).

Only allow-listed fields reach the pod: the image, command, host paths, privileges
and service account come from the ClusterServingRuntime, never from an event. What a
template or deployment controls is mapped field by field below.

Single-node services run in Knative (serverless) mode and scale to zero; multi-node
services (parallelism.nodes > 1) run in KServe's raw deployment mode with a
`workerSpec`, because Knative has no multi-pod API and cannot scale them to zero.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import lru_cache
from typing import Any, NamedTuple

import msgspec
from pydantic import ValidationError

from controller.config import RenderConfig
from controller.sinks.base import (
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SOURCE_EVENT_ANNOTATION,
    STOP_ANNOTATION,
    TEMPLATE_LABEL,
    VERSION_LABEL,
    Object,
)
from controller.state import NO_OVERRIDES, Deployment
from events.types import DeploymentOverrides
from runtimes.engine_args import engine_cli_args, runtime_env
from templates.schema import ModelTemplateVersion, Scaling, errors_from

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
VERSION_HASH_ANNOTATION = "stokehold.dev/version-hash"
SERVED_MODEL_ANNOTATION = "stokehold.dev/served-model-name"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
RETENTION_ANNOTATION = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
INITIAL_SCALE_ANNOTATION = "autoscaling.knative.dev/initial-scale"
PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
SERVERLESS = "Serverless"
RAW_DEPLOYMENT = "RawDeployment"
HF_TOKEN_ENV = "HF_TOKEN"
MODEL_CACHE_VOLUME = "model-cache"
WORKER_CONTAINER = "worker-container"
# annotations that describe an object's history rather than its content: not hashed
_UNHASHED_ANNOTATIONS = frozenset({HASH_ANNOTATION, SOURCE_EVENT_ANNOTATION})
_PARTS_CACHE_SIZE = 4096


class RenderError(ValueError):
    """A deployment cannot be rendered as requested (e.g. its overrides no longer fit a newer version)."""


class ScalePlan(NamedTuple):
    """How a rendered service scales, and why, for the `deployment.applied` status event."""

    min_replicas: int
    max_replicas: int
    multinode: bool
    note: str | None

    @property
    def scale_to_zero(self) -> bool:
        return self.min_replicas == 0


def effective_scaling(version: ModelTemplateVersion, deployment: Deployment) -> Scaling:
    overrides = deployment.overrides
    if overrides is NO_OVERRIDES or overrides.is_empty:
        return version.spec.scaling
    try:
        return _overridden(version.spec.scaling, overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{loc}: {msg}" for loc, msg in errors_from(exc))
        raise RenderError(f"the deployment's overrides do not fit {version.ref}: {problems}") from None


@lru_cache(maxsize=1024)
def _overridden(scaling: Scaling, overrides: DeploymentOverrides) -> Scaling:
    # both are frozen (hashable) models and re-validating the merge is the costly part of a render
    return overrides.apply_to(scaling)


def scale_plan(version: ModelTemplateVersion, deployment: Deployment, scaling: Scaling | None = None) -> ScalePlan:
    scaling = scaling or effective_scaling(version, deployment)
    nodes = version.spec.parallelism.nodes
    if nodes > 1:
        replicas = max(1, scaling.min_replicas)
        return ScalePlan(
            replicas,
            replicas,
            multinode=True,
            note=(
                f"multi-node ({nodes} pods per replica) runs in KServe raw deployment mode without an autoscaler: "
                "Knative cannot scale a multi-pod service to zero"
            ),
        )
    if scaling.always_hot:
        return ScalePlan(
            max(1, scaling.min_replicas),
            scaling.max_replicas,
            multinode=False,
            note=f"priority {scaling.priority} keeps at least one replica hot",
        )
    note = None if scaling.min_replicas == 0 else f"min_replicas {scaling.min_replicas} keeps replicas hot"
    return ScalePlan(scaling.min_replicas, scaling.max_replicas, multinode=False, note=note)


def render_inference_service(version: ModelTemplateVersion, deployment: Deployment, config: RenderConfig) -> Object:
    """The InferenceService for a deployment of a version, with its content hash annotated."""
    scaling = effective_scaling(version, deployment)
    plan = scale_plan(version, deployment, scaling)
    parts = _parts_cache.parts(version, config)  # fresh containers, ours to fill in

    predictor: dict[str, Any] = {"model": parts["model"], "minReplicas": plan.min_replicas, "maxReplicas": plan.max_replicas}
    predictor.update(parts["placement"])
    annotations: dict[str, str] = parts["annotations"]
    if plan.multinode:
        predictor["workerSpec"] = parts["worker"]
    else:
        predictor["scaleMetric"] = "concurrency"
        predictor["scaleTarget"] = scaling.target_concurrency
        predictor["timeout"] = config.request_timeout_s
        # one pod loads the model at creation, so a broken model fails now rather than on the first user request
        annotations[INITIAL_SCALE_ANNOTATION] = str(max(1, plan.min_replicas))
        if plan.scale_to_zero:
            annotations[RETENTION_ANNOTATION] = f"{scaling.keep_hot_seconds}s"
    if deployment.stopped:
        annotations[STOP_ANNOTATION] = "true"

    isvc: Object = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": deployment.name, "namespace": deployment.namespace, "labels": parts["labels"], "annotations": annotations},
        "spec": {"predictor": predictor},
    }
    annotations[HASH_ANNOTATION] = _canonical_hash(isvc)  # no history annotation yet: nothing to leave out
    if deployment.event_id:
        annotations[SOURCE_EVENT_ANNOTATION] = deployment.event_id
    return isvc


def object_hash(obj: Object) -> str:
    """sha256 over the canonical JSON (sorted keys, compact, UTF-8) of an object without its history annotations."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if not _UNHASHED_ANNOTATIONS.isdisjoint(annotations):
        metadata = metadata | {"annotations": {k: v for k, v in annotations.items() if k not in _UNHASHED_ANNOTATIONS}}
        obj = obj | {"metadata": metadata}
    return _canonical_hash(obj)


def _canonical_hash(obj: Object) -> str:
    return "sha256:" + hashlib.sha256(msgspec.json.encode(obj, order="sorted")).hexdigest()


# ------------------------------------------------------------------ what the version alone decides
#
# The model container, placement, worker spec, labels and the version's annotations depend on the
# version (immutable) and the configuration only. They are built once per version and kept as
# compact JSON: decoding it hands every render fresh containers (callers may change what they get)
# at a fraction of the cost of building them, and a cache of bytes holds no objects for the
# garbage collector to trace.


class _PartsCache:
    """(template, version, content hash) → the version's parts as JSON, under one configuration at a time.

    A version is admitted on its second render: most versions are rendered once (the deployments
    that follow the latest version move on with the next one), and encoding parts no render will
    read again costs a tenth of computing them. A controller renders with one configuration;
    another one (compared by identity) starts the cache over.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.config: RenderConfig | None = None
        self.entries: OrderedDict[tuple[str, int, str], bytes | None] = OrderedDict()  # None: rendered once

    def parts(self, version: ModelTemplateVersion, config: RenderConfig) -> dict[str, Any]:
        if config is not self.config:
            self.entries.clear()
            self.config = config
        version_hash = version.content_hash  # computed once per version object (decoding computes it anyway)
        key = (version.name, version.version, version_hash)
        if key not in self.entries:
            parts = _compute_parts(version, version_hash, config)
            self.entries[key] = None
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)
            return parts
        self.entries.move_to_end(key)
        cached = self.entries[key]
        if cached is not None:
            remembered: dict[str, Any] = _PARTS_DECODER.decode(cached)
            return remembered
        parts = _compute_parts(version, version_hash, config)
        self.entries[key] = msgspec.json.encode(parts)
        return parts

    def clear(self) -> None:
        self.entries.clear()
        self.config = None


_PARTS_DECODER = msgspec.json.Decoder(dict[str, Any])
_parts_cache = _PartsCache(_PARTS_CACHE_SIZE)


def forget_rendered_versions() -> None:
    """Drop what renders remember of versions: the next render of each computes its parts afresh (benchmarks)."""
    _parts_cache.clear()


def _compute_parts(version: ModelTemplateVersion, version_hash: str, config: RenderConfig) -> dict[str, Any]:
    spec = version.spec
    storage = spec.storage
    local = spec.source_scheme == "local"
    multinode = spec.parallelism.nodes > 1
    model: dict[str, Any] = {
        "modelFormat": {"name": config.model_format},
        "runtime": config.multinode_runtime if multinode else config.runtime,
        "args": engine_cli_args(spec, version.served_model_name),
        "env": _env(version, config),
        "resources": _resources(version, config),
    }
    if not local:
        model["storageUri"] = spec.source
    placement = _placement(version, config)
    if storage.cache_pvc:
        model["volumeMounts"] = [{"name": MODEL_CACHE_VOLUME, "mountPath": config.model_cache_mount}]
        placement["volumes"] = [{"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": storage.cache_pvc}}]
    annotations = {VERSION_HASH_ANNOTATION: version_hash, SERVED_MODEL_ANNOTATION: version.served_model_name}
    parts: dict[str, Any] = {"model": model, "placement": placement, "labels": _labels(version, config), "annotations": annotations}
    if multinode:
        annotations[DEPLOYMENT_MODE_ANNOTATION] = RAW_DEPLOYMENT
        annotations[AUTOSCALER_CLASS_ANNOTATION] = "none"
        parts["worker"] = _worker_spec(version, config)
    else:
        annotations[DEPLOYMENT_MODE_ANNOTATION] = SERVERLESS
        deadline = config.cold_start.deadline_seconds(spec.model_size_gb, local_source=local)
        annotations[PROGRESS_DEADLINE_ANNOTATION] = f"{deadline}s"
    return parts


def _labels(version: ModelTemplateVersion, config: RenderConfig) -> dict[str, str]:
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        "app.kubernetes.io/name": version.name,
        TEMPLATE_LABEL: version.name,
        VERSION_LABEL: str(version.version),
    }
    # a template's own labels go under our prefix so they can never steer Knative or KServe
    # (e.g. networking.knative.dev/visibility); unprefixed keys win over prefixed ones of the same name
    if version.template.labels:
        for key, value in sorted(version.template.labels.items(), key=lambda item: ("/" in item[0], item[0])):
            name = key.rpartition("/")[2]
            labels.setdefault(f"{config.template_label_prefix}/{name}", value)
    return labels


def _env(version: ModelTemplateVersion, config: RenderConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(runtime_env(version.spec).items())]
    if version.spec.storage.cache_pvc:
        env.append({"name": "HF_HOME", "value": f"{config.model_cache_mount}/huggingface"})
    secret = version.spec.storage.hf_token_secret or config.hf_token_secret
    if secret is not None:
        env.append({"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    return env


def _resources(version: ModelTemplateVersion, config: RenderConfig) -> dict[str, dict[str, str]]:
    # requests = limits: Guaranteed QoS, so a pod that took minutes to load is the last to be evicted
    res = version.spec.resources
    amounts = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus:
        amounts[config.gpu_resource] = str(res.gpus)
    return {"requests": amounts, "limits": dict(amounts)}


_last_tolerations: tuple[RenderConfig, tuple[tuple[tuple[str, Any], ...], ...]] | None = None


def _tolerations(config: RenderConfig) -> list[dict[str, Any]]:
    """The configuration's GPU tolerations as plain dicts (dumped once for the configuration last asked about)."""
    global _last_tolerations
    if _last_tolerations is None or _last_tolerations[0] is not config:
        _last_tolerations = (config, tuple(tuple(t.model_dump(exclude_none=True).items()) for t in config.gpu_tolerations))
    return [dict(toleration) for toleration in _last_tolerations[1]]


def _placement(version: ModelTemplateVersion, config: RenderConfig) -> dict[str, Any]:
    res = version.spec.resources
    if not res.gpus:
        return {}
    placement: dict[str, Any] = {"tolerations": _tolerations(config)}
    if res.gpu_type:
        # an unmapped type is used verbatim, for clusters that label nodes with their own names
        placement["nodeSelector"] = {config.gpu_node_selector_key: config.gpu_products.get(res.gpu_type, res.gpu_type)}
    return placement


def _worker_spec(version: ModelTemplateVersion, config: RenderConfig) -> dict[str, Any]:
    # KServe's topology fields: pipelineParallelSize = pods (head + workers), tensorParallelSize = GPUs per pod.
    # vLLM's own tensor/pipeline split travels in the args.
    par, res = version.spec.parallelism, version.spec.resources
    worker: dict[str, Any] = {
        "pipelineParallelSize": par.nodes,
        "tensorParallelSize": res.gpus,
        "containers": [{"name": WORKER_CONTAINER, "resources": _resources(version, config)}],
    }
    worker.update(_placement(version, config))
    return worker
