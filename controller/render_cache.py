"""A version's model cache (pure, no I/O): whether it is cached, and the objects that warm the cache.

A cached version's weights are copied once, before any replica needs them (docs/cold-start.md):

- `model_cache_mode: job` (the default): a batch/v1 Job per namespace runs the runtime image's
  `python -m runtimes cache-fill`, which fills `<mount>/models/<template>/<version>-<hash16>/` on the
  model-cache PVC with kserve-storage; the InferenceService reads that folder (no storageUri) and, should the
  Job not have finished, fills it itself first (same code, same lock);
- `model_cache_mode: localmodelcache`: KServe's LocalModelCache keeps a node-local copy of the source on
  the configured node groups, and KServe points the InferenceService (storageUri = the source) at it.

The Job's name is keyed by template, version and content hash, so it is created once per version and
never patched (a Job's pod template is immutable); the LocalModelCache's by the source alone, as KServe
refuses a second LocalModelCache of the same `sourceModelUri`.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal, NamedTuple

from controller.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEMPLATE_LABEL, VERSION_LABEL, Object
from controller.render_config import RenderConfig
from templates.schema import CACHEABLE_SCHEMES, ModelTemplateVersion, SecretRef

JOB_API_VERSION = "batch/v1"
JOB_KIND = "Job"
LMC_API_VERSION = "serving.kserve.io/v1alpha1"
LMC_KIND = "LocalModelCache"
CACHE_LABEL = "stokehold.dev/cache"  # "job" or "localmodelcache": what the object is for
VERSION_HASH_ANNOTATION = "stokehold.dev/version-hash"
SOURCE_ANNOTATION = "stokehold.dev/source"
MODEL_CACHE_VOLUME = "model-cache"
FILL_CONTAINER = "cache-fill"
FILL_USER = 1000  # the runtime image's user (manifests/runtimes)
JOB_PREFIX = "stokehold-cache"
NAME_MAX = 63  # a Job's name becomes its pods' `job-name` label value
HF_TOKEN_ENV = "HF_TOKEN"
CacheMode = Literal["job", "localmodelcache"]


class CachePlan(NamedTuple):
    """How a version is cached: `mode` None when it is not; `pvc` the model-cache PVC its pods mount, if any;
    `note` why a version that asked for the cache (storage.cache: true) is not cached."""

    mode: CacheMode | None
    pvc: str | None
    note: str | None = None

    @property
    def cached(self) -> bool:
        return self.mode is not None


def wants_cache(version: ModelTemplateVersion, config: RenderConfig) -> bool:
    """storage.cache when given; else automatic: always hot (priority >= 2) or at least `cache_min_size_gb`.

    The version's own scaling decides, not a deployment's overrides: the cache belongs to the version.
    """
    spec = version.spec
    if spec.storage.cache is not None:
        return spec.storage.cache
    if spec.source_scheme not in CACHEABLE_SCHEMES or spec.parallelism.nodes > 1:
        return False
    size = spec.model_size_gb
    return spec.scaling.always_hot or (size is not None and size >= config.cache_min_size_gb)


def cache_plan(version: ModelTemplateVersion, config: RenderConfig) -> CachePlan:
    spec = version.spec
    pvc = spec.storage.cache_pvc or config.model_cache_pvc
    if not wants_cache(version, config) or spec.source_scheme not in CACHEABLE_SCHEMES or spec.parallelism.nodes > 1:
        return CachePlan(None, pvc)
    asked = spec.storage.cache is True
    if config.model_cache_mode == "off":
        note = "storage.cache is true, but this controller has the model cache off (model_cache_mode 'off'): each pod downloads the model"
        return CachePlan(None, pvc, note if asked else None)
    if config.model_cache_mode == "localmodelcache":
        return CachePlan("localmodelcache", pvc)
    if pvc is None:
        note = (
            "storage.cache is true, but there is nowhere to cache the model: give the version storage.cache_pvc, or the controller "
            "a model_cache_pvc (or model_cache_mode 'localmodelcache'); each pod downloads the model"
        )
        return CachePlan(None, None, note if asked else None)
    return CachePlan("job", pvc)


def hash16(content_hash: str) -> str:
    return content_hash.removeprefix("sha256:")[:16]


def cache_dir(version: ModelTemplateVersion, config: RenderConfig) -> str:
    """Where a cached version's weights live on the model-cache volume (COLDSTART layout)."""
    return f"{config.model_cache_mount}/models/{version.name}/{version.version}-{hash16(version.content_hash)}"


def compile_cache_dir(config: RenderConfig) -> str:
    return f"{config.model_cache_mount}/compile"


def job_name(version: ModelTemplateVersion) -> str:
    """`stokehold-cache-<template>-<version>-<hash10>`, the template cut so the whole is at most 63 characters."""
    tail = f"-{version.version}-{version.content_hash.removeprefix('sha256:')[:10]}"
    room = NAME_MAX - len(JOB_PREFIX) - 1 - len(tail)
    return f"{JOB_PREFIX}-{version.name[:room].rstrip('-')}{tail}"


def local_model_cache_name(source: str) -> str:
    """`stokehold-<readable part of the source>-<hash10 of the source>`: one per source, as KServe requires."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", source.split("://", 1)[-1].lower()).strip("-")
    room = NAME_MAX - len("stokehold-") - 1 - len(digest)
    slug = slug[:room].strip("-")
    return f"stokehold-{slug}-{digest}" if slug else f"stokehold-{digest}"


def _labels(version: ModelTemplateVersion, what: CacheMode) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        "app.kubernetes.io/name": version.name,
        "app.kubernetes.io/component": "model-cache",
        TEMPLATE_LABEL: version.name,
        VERSION_LABEL: str(version.version),
        CACHE_LABEL: what,
    }


def secret_env(name: str, secret: SecretRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}


def storage_env_from(config: RenderConfig) -> list[dict[str, Any]]:
    """The object store's credentials for a pod that downloads a cached version itself (RenderConfig.storage_secret)."""
    return [{"secretRef": {"name": config.storage_secret, "optional": True}}] if config.storage_secret else []


def bus_env(config: RenderConfig) -> list[dict[str, Any]]:
    """The bus a runtime or filler publishes its status on; credentials only as Secret references."""
    env: list[dict[str, Any]] = [{"name": "STOKEHOLD_NATS_URL", "value": config.runtime_nats_url}]
    if config.runtime_nats_user:
        env.append({"name": "STOKEHOLD_NATS_USER", "value": config.runtime_nats_user})
    secrets = {"STOKEHOLD_NATS_PASSWORD": config.runtime_nats_password_secret, "STOKEHOLD_NATS_TOKEN": config.runtime_nats_token_secret}
    env += [secret_env(name, secret) for name, secret in secrets.items() if secret is not None]
    return env


def render_cache_job(version: ModelTemplateVersion, namespace: str, config: RenderConfig, pvc: str) -> Object:
    """The Job that fills the model-cache PVC `pvc` in `namespace` with `version`'s weights."""
    spec = version.spec
    mount = config.model_cache_mount
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{mount}/huggingface"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    secret = spec.storage.hf_token_secret or config.hf_token_secret
    if secret is not None:
        env.append(secret_env(HF_TOKEN_ENV, secret))
    env += bus_env(config)
    amounts = {"cpu": config.cache_fill_cpu, "memory": config.cache_fill_memory}
    container: dict[str, Any] = {
        "name": FILL_CONTAINER,
        "image": config.cache_fill_image,
        "command": ["python3", "-m", "runtimes", "cache-fill"],
        "args": [
            "--source",
            spec.source,
            "--dest",
            cache_dir(version, config),
            "--content-hash",
            version.content_hash,
            "--template",
            version.name,
            "--version",
            str(version.version),
        ],
        "env": env,
        **({"envFrom": storage_env_from(config)} if config.storage_secret else {}),
        "resources": {"requests": amounts, "limits": dict(amounts)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": MODEL_CACHE_VOLUME, "mountPath": mount}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    labels = _labels(version, "job")
    return {
        "apiVersion": JOB_API_VERSION,
        "kind": JOB_KIND,
        "metadata": {
            "name": job_name(version),
            "namespace": namespace,
            "labels": labels,
            "annotations": {VERSION_HASH_ANNOTATION: version.content_hash, SOURCE_ANNOTATION: spec.source},
        },
        "spec": {
            "backoffLimit": config.cache_fill_backoff_limit,
            "activeDeadlineSeconds": config.cold_start.download_seconds(spec.model_size_gb),
            "ttlSecondsAfterFinished": config.cache_fill_ttl_s,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": FILL_USER,
                        "runAsGroup": FILL_USER,
                        "fsGroup": FILL_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": pvc}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def render_local_model_cache(version: ModelTemplateVersion, config: RenderConfig) -> Object:
    """KServe's LocalModelCache (cluster-scoped) for `version`'s source on the configured node groups."""
    spec = version.spec
    size_gi = max(1, math.ceil(config.cold_start.size_gb(spec.model_size_gb)))  # GB rounded up as Gi: a little room to spare
    labels = {k: v for k, v in _labels(version, "localmodelcache").items() if k != VERSION_LABEL}
    return {
        "apiVersion": LMC_API_VERSION,
        "kind": LMC_KIND,
        "metadata": {
            "name": local_model_cache_name(spec.source),
            "labels": labels,
            "annotations": {VERSION_HASH_ANNOTATION: version.content_hash, SOURCE_ANNOTATION: spec.source},
        },
        "spec": {"sourceModelUri": spec.source, "modelSize": f"{size_gi}Gi", "nodeGroups": list(config.local_model_node_groups)},
    }


def cache_location(version: ModelTemplateVersion, config: RenderConfig, plan: CachePlan) -> str | None:
    """Where the cached copy lives, for `VersionLoadStatus.cache`."""
    if plan.mode == "localmodelcache":
        return f"{LMC_KIND}/{local_model_cache_name(version.spec.source)}"
    if plan.mode == "job" and plan.pvc:
        return f"pvc://{plan.pvc}/{cache_dir(version, config).removeprefix(config.model_cache_mount + '/')}"
    return None
