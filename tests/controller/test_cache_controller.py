"""Warm on publish: the controller creates a cached version's pre-download Job (or LocalModelCache) once.

The controller runs in-process on the kube sink against the API emulator (HTTPS, the real `kubernetes`
client) and a real nats-server: the Job is created when the version is published (in the configured
cache namespaces) and when it is first deployed (in the deployment's namespace), never twice, never
patched; a version that is not cached gets none; a failing Job never holds up the InferenceService.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import ControllerConfig
from controller.render_cache import cache_dir, job_name, local_model_cache_name
from controller.render_config import RenderConfig
from events.types import DeploymentDeleted, DeploymentRequested, EventKind, LoadStatus, TemplateVersionPublished, VersionLoadStatus
from templates.schema import parse_version
from tests.controller import inprocess
from tests.controller.inprocess import kube_env, start, stop
from tests.controller.test_integration import TINY, Env, settled, wait_for
from tests.k8s_emulator import KubernetesEmulator
from tests.k8s_emulator.resources import LOCAL_MODEL_CACHES

pytestmark = pytest.mark.asyncio(loop_scope="module")
SOURCE = "s3://models/chat-small"


def cached_version(name: str = "chat", number: int = 1, **storage: Any) -> TemplateVersionPublished:
    """The tiny demo from an object store, asking for the model cache (or as `storage` says)."""
    document = TINY.to_document()
    document["template"]["name"] = name
    document["version"] = number
    document["spec"]["source"] = SOURCE
    document["spec"]["storage"] = {"cache": True} | storage
    return TemplateVersionPublished.model_validate(document)


def kube_config(env: Env, emulator: KubernetesEmulator, **render: Any) -> ControllerConfig:
    return inprocess.kube_config(env, emulator, ["llm", "team-b", "warm"], **{f"render.{key}": value for key, value in render.items()})


@pytest.fixture
async def env(nats_server: Any, tmp_path: Path, k8s_emulator: KubernetesEmulator) -> AsyncIterator[Env]:
    async for environment in kube_env(nats_server.url, tmp_path, k8s_emulator):
        yield environment


def job_writes(kube: KubernetesEmulator) -> list[tuple[str, str | None]]:
    return [(r.verb, r.namespace) for r in kube.requests() if r.resource == "jobs" and r.verb not in ("get", "list", "watch")]


def version_status(env: Env) -> list[VersionLoadStatus]:
    return [data for kind, data in env.status if kind == EventKind.VERSION_LOAD_STATUS.value]


async def test_publish_warms_once_deploy_warms_its_namespace_and_nothing_is_written_twice(
    env: Env, k8s_emulator: KubernetesEmulator
) -> None:
    controller, task = await start(kube_config(env, k8s_emulator, model_cache_pvc="model-cache", cache_namespaces=["warm", "kube-system"]))
    try:
        published = cached_version()
        version = parse_version(published.to_document())
        name = job_name(version)
        await env.publish(EventKind.VERSION_PUBLISHED, published, "chat")
        job = await wait_for(lambda: k8s_emulator.get("jobs", "warm", name), "the pre-download Job on publish")
        assert job_writes(k8s_emulator) == [("create", "warm")], "only served namespaces, never kube-system"
        volume = job["spec"]["template"]["spec"]["volumes"][0]
        assert volume == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}}

        # a version that is not cached gets no Job
        await env.publish(EventKind.VERSION_PUBLISHED, cached_version("plain", cache=False), "plain")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="plain", namespace="llm"), "plain")
        plain = await wait_for(lambda: k8s_emulator.get("isvc", "llm", "plain"), "the uncached InferenceService")
        assert plain["spec"]["predictor"]["model"]["storageUri"] == SOURCE

        # the first deployment warms its own namespace; its InferenceService reads the cached copy
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="team-b"), "chat")
        isvc = await wait_for(lambda: k8s_emulator.get("isvc", "team-b", "chat"), "the cached InferenceService")
        assert k8s_emulator.get("jobs", "team-b", name) is not None
        model = isvc["spec"]["predictor"]["model"]
        assert "storageUri" not in model
        assert f"--model={cache_dir(version, RenderConfig())}" in model["args"]
        env_vars = {e["name"]: e.get("value") for e in model["env"]}
        assert env_vars["STOKEHOLD_MODEL_SOURCE"] == SOURCE and env_vars["STOKEHOLD_CONTENT_HASH"] == version.content_hash
        assert env_vars["STOKEHOLD_COMPILE_CACHE"] == "/mnt/model-cache/compile"
        assert env_vars["STOKEHOLD_NATS_URL"] and env_vars["STOKEHOLD_DEPLOYMENT"] == "team-b/chat"
        assert {"name": "model-cache", "mountPath": "/mnt/model-cache"} in model["volumeMounts"]

        # republishing the same version, a second deployment in a warmed namespace: no second Job, no write at all
        writes = job_writes(k8s_emulator)
        assert sorted(writes) == [("create", "team-b"), ("create", "warm")]
        await env.publish(EventKind.VERSION_PUBLISHED, published, "chat")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="team-b", name="chat-2"), "chat")
        await wait_for(lambda: k8s_emulator.get("isvc", "team-b", "chat-2"), "the second InferenceService")
        await settled(controller, env)
        assert job_writes(k8s_emulator) == writes
        assert len(k8s_emulator.objects("jobs")) == 2
        assert version_status(env) == [], "the filler reports the Job's progress, the controller reported no problem"
    finally:
        await stop(controller, task)

    # a restarted controller reads that the Jobs exist and writes nothing
    controller, task = await start(kube_config(env, k8s_emulator, model_cache_pvc="model-cache", cache_namespaces=["warm"]))
    try:
        await settled(controller, env)
        assert job_writes(k8s_emulator) == writes
    finally:
        await stop(controller, task)


async def test_a_failing_job_never_holds_up_the_deployment_and_is_reported(env: Env, k8s_emulator: KubernetesEmulator) -> None:
    k8s_emulator.faults.add("error", 1.0, methods={"POST"}, path="/jobs", status=403)
    controller, task = await start(kube_config(env, k8s_emulator, model_cache_pvc="model-cache"))
    try:
        await env.publish(EventKind.VERSION_PUBLISHED, cached_version(), "chat")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="llm"), "chat")
        isvc = await wait_for(lambda: k8s_emulator.get("isvc", "llm", "chat"), "the InferenceService despite the Job")
        assert "storageUri" not in isvc["spec"]["predictor"]["model"], "the runtime fills the cache itself"
        failed = await wait_for(lambda: [s for s in version_status(env) if s.status is LoadStatus.FAILED], "the reported failure")
        assert "could not create Job llm/" in (failed[0].reason or "") and "replicas fill it themselves" in (failed[0].reason or "")
        assert k8s_emulator.objects("jobs") == []
    finally:
        await stop(controller, task)


async def test_cache_true_with_nowhere_to_cache_is_said_on_the_status_events(env: Env, k8s_emulator: KubernetesEmulator) -> None:
    controller, task = await start(kube_config(env, k8s_emulator))  # no model_cache_pvc, no storage.cache_pvc
    try:
        await env.publish(EventKind.VERSION_PUBLISHED, cached_version(), "chat")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="llm"), "chat")
        isvc = await wait_for(lambda: k8s_emulator.get("isvc", "llm", "chat"), "the InferenceService")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == SOURCE, "not cached: KServe downloads it"
        applied = await wait_for(
            lambda: [d for kind, d in env.status if kind == EventKind.DEPLOYMENT_APPLIED.value and d.note], "the applied event"
        )
        assert "there is nowhere to cache the model" in applied[0].note
        failed = [s for s in version_status(env) if s.status is LoadStatus.FAILED]
        assert len(failed) == 1 and "storage.cache_pvc" in (failed[0].reason or "")
        assert k8s_emulator.objects("jobs") == []
    finally:
        await stop(controller, task)


async def test_local_model_cache_is_created_once_and_reported_downloading_then_cached(env: Env, k8s_emulator: KubernetesEmulator) -> None:
    config = kube_config(env, k8s_emulator, model_cache_mode="localmodelcache", local_model_node_groups=["gpu-nodes"])
    controller, task = await start(config)
    try:
        published = cached_version()
        await env.publish(EventKind.VERSION_PUBLISHED, published, "chat")
        name = local_model_cache_name(SOURCE)
        lmc = await wait_for(lambda: k8s_emulator.get("localmodelcaches", "", name), "the LocalModelCache")
        assert lmc["spec"]["sourceModelUri"] == SOURCE and lmc["spec"]["nodeGroups"] == ["gpu-nodes"]
        downloading = await wait_for(lambda: version_status(env), "DOWNLOADING")
        assert [(s.status, s.cache) for s in downloading] == [(LoadStatus.DOWNLOADING, f"LocalModelCache/{name}")]

        # a second version of the same source and a deployment: KServe's copy serves both, nothing more is written
        await env.publish(EventKind.VERSION_PUBLISHED, cached_version(number=2), "chat")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="llm"), "chat")
        isvc = await wait_for(lambda: k8s_emulator.get("isvc", "llm", "chat"), "the InferenceService")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == SOURCE, "KServe swaps in the node-local copy"
        await settled(controller, env)
        creates = [r for r in k8s_emulator.requests() if r.resource == "localmodelcaches" and r.verb == "create"]
        assert len(creates) == 1 and len(version_status(env)) == 1

        # KServe reports its copies on the object; each reconciliation of the template reads them until all are there
        nodes = {"gpu-a": "NodeDownloadError", "gpu-b": "NodeDownloading"}
        failed = {"copies": {"available": 0, "failed": 1, "total": 2}, "nodeStatus": nodes}
        k8s_emulator.store.set_status(LOCAL_MODEL_CACHES, "", name, failed)
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="team-b"), "chat")
        failures = await wait_for(lambda: [s for s in version_status(env) if s.status is LoadStatus.FAILED], "FAILED from KServe's copies")
        assert "1 of 2 nodes (gpu-a)" in (failures[0].reason or "") and SOURCE in (failures[0].reason or "")

        done = {"copies": {"available": 2, "failed": 0, "total": 2}, "nodeStatus": {"gpu-a": "NodeDownloaded", "gpu-b": "NodeDownloaded"}}
        k8s_emulator.store.set_status(LOCAL_MODEL_CACHES, "", name, done)
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="chat", namespace="warm"), "chat")
        cached = await wait_for(lambda: [s for s in version_status(env) if s.status is LoadStatus.CACHED], "CACHED from KServe's copies")
        size = TINY.spec.model_size_gb
        assert cached[0].cache == f"LocalModelCache/{name}" and cached[0].bytes == (None if size is None else int(size * 1e9))
        assert cached[0].seconds is not None and cached[0].seconds >= 0
        await settled(controller, env)
        reads = len([r for r in k8s_emulator.requests() if r.resource == "localmodelcaches" and r.verb == "get"])
        await env.publish(EventKind.DEPLOYMENT_DELETED, DeploymentDeleted(template="chat", namespace="warm"), "chat")
        await settled(controller, env)
        after = len([r for r in k8s_emulator.requests() if r.resource == "localmodelcaches" and r.verb == "get"])
        assert after == reads, "once CACHED, later reconciliations read nothing"
        assert [s.status for s in version_status(env)].count(LoadStatus.CACHED) == 1
    finally:
        await stop(controller, task)
