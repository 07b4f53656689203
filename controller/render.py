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
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
from pydantic import ValidationError

from controller.labels import (
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SOURCE_EVENT_ANNOTATION,
    STOP_ANNOTATION,
    TEMPLATE_LABEL,
    VERSION_LABEL,
    Object,
)
from controller.render_cache import CachePlan, bus_env, cache_dir, cache_plan, compile_cache_dir, secret_env, storage_env_from
from controller.render_config import RenderConfig
from controller.state import Deployment
from runtimes.engine_args import (
    ENV_ADAPTER_CACHE,
    ENV_COMPILE_CACHE,
    ENV_CONTENT_HASH,
    ENV_DEPLOYMENT,
    ENV_MODEL_SOURCE,
    ENV_TEMPLATE,
    ENV_TEMPLATE_VERSION,
    api_key_mount,
    engine_cli_args,
    runtime_env,
)
from templates.schema import ModelTemplateVersion, Scaling, error_text

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
VERSION_HASH_ANNOTATION = "stokehold.dev/version-hash"
SERVED_MODEL_ANNOTATION = "stokehold.dev/served-model-name"
ADAPTERS_ANNOTATION = "stokehold.dev/adapters"  # the desired adapter set, e.g. "alpha@2,beta@1" (RenderConfig.adapters_annotation)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
RETENTION_ANNOTATION = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
INITIAL_SCALE_ANNOTATION = "autoscaling.knative.dev/initial-scale"
PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
# KServe's deployment modes by their names since v0.16; older KServe knows them only by the
# legacy names, which v0.16 still accepts but records under the new ones (RenderConfig.legacy_deployment_modes)
KNATIVE = "Knative"
STANDARD = "Standard"
SERVERLESS = "Serverless"
RAW_DEPLOYMENT = "RawDeployment"
LEGACY_MODE_NAMES = {KNATIVE: SERVERLESS, STANDARD: RAW_DEPLOYMENT}
HF_TOKEN_ENV = "HF_TOKEN"
MODEL_CACHE_VOLUME = "model-cache"
WORKER_CONTAINER = "worker-container"
ADAPTER_CACHE_VOLUME = "adapter-cache"


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
    if deployment.overrides.is_empty:
        return version.spec.scaling
    try:
        return deployment.overrides.apply_to(version.spec.scaling)
    except ValidationError as exc:
        raise RenderError(f"the deployment's overrides do not fit {version.ref}: {error_text(exc)}") from None


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


def render_inference_service(
    version: ModelTemplateVersion, deployment: Deployment, config: RenderConfig, adapters: Sequence[str] = ()
) -> Object:
    """The InferenceService for a deployment of a version, with its content hash annotated.
    `adapters`: the deployment's desired adapter set (refs like `alpha@2`), shown only by the adapters annotation:
    adapters are events the runtime follows, so the pod never depends on them."""
    spec = version.spec
    scaling = effective_scaling(version, deployment)
    plan = scale_plan(version, deployment, scaling)
    cache = cache_plan(version, config)
    local = spec.source_scheme == "local"

    args = engine_cli_args(spec, version.served_model_name)
    if cache.mode == "job":  # the runtime reads the cached folder (and fills it first if the Job has not)
        args = [f"--model={cache_dir(version, config)}" if arg.startswith("--model=") else arg for arg in args]
    model: dict[str, Any] = {
        "modelFormat": {"name": config.model_format},
        "runtime": config.multinode_runtime if plan.multinode else config.runtime,
        "args": args,
        "env": _env(version, config, cache),
        "resources": _resources(version, config),
    }
    if not local and cache.mode != "job":  # no storageUri for the Job path: KServe would download again, read-only
        model["storageUri"] = spec.source
    if cache.mode == "job" and config.storage_secret:
        model["envFrom"] = storage_env_from(config)
    predictor: dict[str, Any] = {"model": model, "minReplicas": plan.min_replicas, "maxReplicas": plan.max_replicas}
    predictor.update(_placement(version, config))
    if cache.pvc:
        model["volumeMounts"] = [{"name": MODEL_CACHE_VOLUME, "mountPath": config.model_cache_mount}]
        predictor["volumes"] = [{"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.pvc}}]
    if spec.serving is not None and spec.serving.api_key_secret is not None:
        # a mounted file, not an env var: the runtime re-reads it when the Secret is rotated
        volume, mount, env = api_key_mount(spec.serving.api_key_secret)
        model.setdefault("volumeMounts", []).append(mount)
        model["env"].append(env)
        predictor.setdefault("volumes", []).append(volume)
    if spec.engine.lora is not None:
        _follow_adapters(config, cache, model, predictor)
    model["env"] += _bus_env(version, deployment, config)
    deadline = config.cold_start.deadline_seconds(spec.model_size_gb, local_source=local)
    model["startupProbe"] = _startup_probe(deadline, config)

    annotations = {VERSION_HASH_ANNOTATION: version.content_hash, SERVED_MODEL_ANNOTATION: version.served_model_name}
    if spec.engine.lora is not None and config.adapters_annotation:
        annotations[ADAPTERS_ANNOTATION] = ",".join(sorted(adapters))
    if plan.multinode:
        annotations[DEPLOYMENT_MODE_ANNOTATION] = _mode_name(STANDARD, config)
        annotations[AUTOSCALER_CLASS_ANNOTATION] = "none"
        predictor["workerSpec"] = _worker_spec(version, config)
    else:
        annotations[DEPLOYMENT_MODE_ANNOTATION] = _mode_name(KNATIVE, config)
        annotations[PROGRESS_DEADLINE_ANNOTATION] = f"{deadline}s"
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
        "metadata": {
            "name": deployment.name,
            "namespace": deployment.namespace,
            "labels": _labels(version, config),
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }
    # the hash covers the content only: the annotation of the event that last changed it is added after
    annotations[HASH_ANNOTATION] = "sha256:" + hashlib.sha256(msgspec.json.encode(isvc, order="sorted")).hexdigest()
    if deployment.event_id:
        annotations[SOURCE_EVENT_ANNOTATION] = deployment.event_id
    return isvc


def _mode_name(mode: str, config: RenderConfig) -> str:
    return LEGACY_MODE_NAMES[mode] if config.legacy_deployment_modes else mode


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


def _env(version: ModelTemplateVersion, config: RenderConfig, cache: CachePlan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(runtime_env(version.spec).items())]
    if cache.pvc:  # a model-cache volume is mounted: the runtime keeps its compile cache there, keyed by the content hash
        env.append({"name": "HF_HOME", "value": f"{config.model_cache_mount}/huggingface"})
        env.append({"name": ENV_CONTENT_HASH, "value": version.content_hash})
        env.append({"name": ENV_COMPILE_CACHE, "value": compile_cache_dir(config)})
    if cache.mode == "job":
        env.append({"name": ENV_MODEL_SOURCE, "value": version.spec.source})
    secret = version.spec.storage.hf_token_secret or config.hf_token_secret
    if secret is not None:
        env.append(secret_env(HF_TOKEN_ENV, secret))
    return env


def _bus_env(version: ModelTemplateVersion, deployment: Deployment, config: RenderConfig) -> list[dict[str, Any]]:
    """Who the runtime is and the bus it publishes its start phases (and, with LoRA, follows adapter events) on."""
    env: list[dict[str, Any]] = [
        {"name": ENV_DEPLOYMENT, "value": f"{deployment.namespace}/{deployment.name}"},
        {"name": ENV_TEMPLATE, "value": version.name},
        {"name": ENV_TEMPLATE_VERSION, "value": str(version.version)},
    ]
    return env + bus_env(config)


def _follow_adapters(config: RenderConfig, cache: CachePlan, model: dict[str, Any], predictor: dict[str, Any]) -> None:
    """A cache for a LoRA runtime to download its deployment's adapters into."""
    if cache.pvc:
        folder = f"{config.model_cache_mount}/adapters"
    else:
        folder = config.adapter_cache_mount
        model.setdefault("volumeMounts", []).append({"name": ADAPTER_CACHE_VOLUME, "mountPath": folder})
        predictor.setdefault("volumes", []).append({"name": ADAPTER_CACHE_VOLUME, "emptyDir": {}})
    model["env"].append({"name": ENV_ADAPTER_CACHE, "value": folder})


def _startup_probe(budget_s: int, config: RenderConfig) -> dict[str, Any]:
    """The runtime's startup probe with a budget of `budget_s` (the progress deadline): it loads before it serves /health."""
    period = config.startup_probe_period_s
    return {
        "httpGet": {"path": config.startup_probe_path, "port": config.startup_probe_port},
        "periodSeconds": period,
        "timeoutSeconds": min(5, period),
        "failureThreshold": max(1, -(-budget_s // period)),
    }


def _resources(version: ModelTemplateVersion, config: RenderConfig) -> dict[str, dict[str, str]]:
    # requests = limits: Guaranteed QoS, so a pod that took minutes to load is the last to be evicted
    res = version.spec.resources
    amounts = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus:
        amounts[config.gpu_resource] = str(res.gpus)
    return {"requests": amounts, "limits": dict(amounts)}


def _placement(version: ModelTemplateVersion, config: RenderConfig) -> dict[str, Any]:
    res = version.spec.resources
    if not res.gpus:
        return {}
    placement: dict[str, Any] = {"tolerations": [t.model_dump(exclude_none=True) for t in config.gpu_tolerations]}
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
