"""Least privilege in the cluster, where the existing tests stop short.

- RBAC: the controller runs in-process against the Kubernetes API emulator through apply,
  stop, resume, status watch, delete and leader election; every request the emulator served
  must be granted by manifests/base/rbac.yaml as kustomize renders it, and every grant must be
  used. (tests/manifests/test_controller_install.py pins the rules themselves.)
- Runtime pods: the ClusterServingRuntimes' containers meet Pod Security `restricted`
  (tests/runtime/test_runtime_manifests.py checks non-root, no escalation, drop ALL; this adds
  numeric ids, seccomp, capabilities added, host namespaces and volume types), and the
  InferenceService the controller renders for every catalog template changes none of it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.state import Deployment
from events.publisher import Publisher
from templates.catalog import load_catalog
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import eventually
from tests.manifests.kustomize import MANIFESTS, find, one, render, render_dir
from tests.security.hostile import on_kube, running_controller, version_document

Call = tuple[str, str, str, str | None]  # (verb, API group, resource, namespace or None for cluster-wide)
LEASE_NAMESPACE = "stokehold-system"
MODEL_NAMESPACE = "llm"
_runs = itertools.count()


CACHED = {"spec.source": "s3://models/rbac-cached", "spec.storage.cache": True, "spec.storage.cache_pvc": "model-cache"}


async def _warm(kube: KubernetesEmulator, nats_url: str, cache_flags: dict[str, Any], resource: str) -> None:
    """A controller in a cache mode publishes a cached version and deploys it: the cache object is created."""
    root = f"rbac{next(_runs)}"
    flags = on_kube(kube, nats_url, root) | {"namespaces": [MODEL_NAMESPACE]} | cache_flags
    async with (
        running_controller(flags) as controller,
        await Publisher.connect(controller.config.nats, stream=root.upper(), subject_root=root) as publisher,
    ):
        await publisher.publish_version(version_document("rbac-cached", changes=CACHED))
        await publisher.request_deployment("rbac-cached", namespace=MODEL_NAMESPACE)
        created = lambda: any(r.verb == "create" and r.resource == resource for r in kube.requests())  # noqa: E731
        await eventually(created, f"the {resource}", limit=20)


async def _exercise(kube: KubernetesEmulator, nats_url: str) -> None:
    """One controller through its whole life: lead, apply, stop, resume, watch a status, delete, step down;
    then the cache objects of both cache modes."""
    await _lifecycle(kube, nats_url)
    await _warm(kube, nats_url, {}, "jobs")
    lmc = {"render.model_cache_mode": "localmodelcache", "render.local_model_node_groups": ["gpu-nodes"]}
    await _warm(kube, nats_url, lmc, "localmodelcaches")


async def _lifecycle(kube: KubernetesEmulator, nats_url: str) -> None:
    root = f"rbac{next(_runs)}"
    flags = {"leader_election": True, "lease_namespace": LEASE_NAMESPACE, "lease_name": root, "identity": "rbac-probe"}
    flags |= {"namespaces": [MODEL_NAMESPACE]}
    name = "rbac-chat"

    def live() -> dict[str, Any] | None:
        return kube.get("isvc", MODEL_NAMESPACE, name)

    def annotation(key: str) -> str | None:
        obj = live()
        return obj["metadata"]["annotations"].get(key) if obj else None

    async with running_controller(on_kube(kube, nats_url, root) | flags) as controller:
        await eventually(lambda: controller.role == "leader", "leadership", limit=20)
        async with await Publisher.connect(controller.config.nats, stream=root.upper(), subject_root=root) as publisher:
            await publisher.publish_version(version_document(name))
            await publisher.request_deployment(name, namespace=MODEL_NAMESPACE)
            await eventually(live, "the InferenceService", limit=20)
            kube.set_isvc_status(MODEL_NAMESPACE, name, ready=True)  # the watcher reads it back
            await publisher.stop_deployment(name, namespace=MODEL_NAMESPACE)
            await eventually(lambda: annotation("serving.kserve.io/stop") == "true", "the stop annotation", limit=20)
            await publisher.resume_deployment(name, namespace=MODEL_NAMESPACE)
            await eventually(lambda: annotation("serving.kserve.io/stop") is None, "the resume", limit=20)
            await publisher.delete_deployment(name, namespace=MODEL_NAMESPACE)
            await eventually(lambda: live() is None, "the delete", limit=20)


@pytest.fixture(scope="module")
async def controller_calls(k8s_emulator: KubernetesEmulator, nats_server: Any) -> AsyncIterator[set[Call]]:
    k8s_emulator.reset()
    await _exercise(k8s_emulator, nats_server.url)
    yield {(r.verb, r.group, r.resource, r.namespace) for r in k8s_emulator.requests()}


@pytest.fixture(scope="module")
def rbac() -> list[dict[str, Any]]:
    return render("overlays/default")


def _grants(docs: list[dict[str, Any]]) -> set[Call]:
    """Every (verb, group, resource, namespace) the controller's roles grant; None = in every namespace."""
    granted: set[Call] = set()
    for role in find(docs, "ClusterRole", "stokehold-controller") + find(docs, "Role", "stokehold-controller-leader-election"):
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        for rule in role["rules"]:
            granted |= set(itertools.product(rule["verbs"], rule["apiGroups"], rule["resources"], [namespace]))
    return granted


def _granted(call: Call, grants: set[Call]) -> bool:
    verb, group, resource, namespace = call
    return (verb, group, resource, None) in grants or (namespace is not None and call in grants)


def test_the_exercise_covers_every_kind_of_call(controller_calls: set[Call]) -> None:
    seen = {(verb, resource) for verb, _, resource, _ in controller_calls}
    assert seen >= {("create", "inferenceservices"), ("update", "inferenceservices"), ("delete", "inferenceservices")}
    assert seen >= {("list", "inferenceservices"), ("watch", "inferenceservices"), ("get", "leases"), ("update", "leases")}
    assert seen >= {("get", "jobs"), ("create", "jobs"), ("get", "localmodelcaches"), ("create", "localmodelcaches")}


def test_every_call_the_controller_makes_is_granted(controller_calls: set[Call], rbac: list[dict[str, Any]]) -> None:
    one(rbac, "ClusterRoleBinding", "stokehold-controller")  # the ClusterRole applies in every namespace
    grants = _grants(rbac)
    assert sorted(call for call in controller_calls if not _granted(call, grants)) == []


def test_every_grant_is_used(controller_calls: set[Call], rbac: list[dict[str, Any]]) -> None:
    used = {(verb, group, resource) for verb, group, resource, _ in controller_calls}
    unused = sorted(grant for grant in _grants(rbac) if grant[:3] not in used)
    assert unused == []


# ------------------------------------------------------------------ runtime pods

RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"})


def restricted_violations(pod: dict[str, Any], containers: Iterable[dict[str, Any]]) -> list[str]:
    """What Pod Security `restricted` would refuse, and user or group ids that are not numeric and non-zero."""
    problems = [f"pod: {field}" for field in ("hostNetwork", "hostPID", "hostIPC") if pod.get(field)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in containers:
        where, context = container["name"], container.get("securityContext") or {}
        capabilities = context.get("capabilities") or {}
        ids = {key: context.get(key) for key in ("runAsUser", "runAsGroup")}
        problems += [
            f"{where}: {key} {value!r} is not a numeric non-root id" for key, value in ids.items() if type(value) is not int or value == 0
        ]
        if context.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if "ALL" not in capabilities.get("drop", []) or set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities {capabilities}")
        if (context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile {context.get('seccompProfile')}")
        problems += [f"{where}: hostPort" for port in container.get("ports", []) if port.get("hostPort")]
    return problems


@pytest.fixture(scope="module")
def runtimes() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc["spec"] for doc in render_dir(MANIFESTS / "runtimes")}


def _pods(runtime: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    pods = [(runtime, runtime["containers"])]
    if "workerSpec" in runtime:
        pods.append((runtime["workerSpec"], runtime["workerSpec"]["containers"]))
    return pods


def test_runtime_pods_meet_pod_security_restricted(runtimes: dict[str, dict[str, Any]]) -> None:
    assert set(runtimes) == {RenderConfig().runtime, RenderConfig().multinode_runtime}
    for name, runtime in runtimes.items():
        for pod, containers in _pods(runtime):
            assert restricted_violations(pod, containers) == [], name


def test_the_check_catches_what_restricted_refuses() -> None:
    bad = {"name": "c", "securityContext": {"runAsUser": "0", "capabilities": {"add": ["SYS_ADMIN"]}, "privileged": True}}
    problems = restricted_violations({"hostIPC": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, [bad])
    assert len(problems) == 9, problems


def _merged(runtime: dict[str, Any], predictor: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The pods KServe builds: each runtime container with the rendered container's fields over it, volumes added."""
    pods = []
    for pod, containers in _pods(runtime):
        worker = pod is not runtime
        rendered = predictor.get("workerSpec", {}) if worker else predictor
        overlay = (rendered.get("containers") or [{}])[0] if worker else rendered["model"]
        merged_pod = copy.deepcopy(pod) | {k: v for k, v in rendered.items() if k in ("hostNetwork", "hostIPC", "hostPID")}
        merged_pod["volumes"] = pod.get("volumes", []) + rendered.get("volumes", [])
        fields = {k: v for k, v in overlay.items() if k not in ("modelFormat", "runtime", "storageUri", "args", "env", "name")}
        pods.append((merged_pod, [containers[0] | fields, *containers[1:]]))
    return pods


@pytest.mark.parametrize("version", load_catalog(), ids=lambda v: v.name)
def test_rendered_services_keep_the_runtime_hardening(version: Any, runtimes: dict[str, dict[str, Any]]) -> None:
    config = RenderConfig()
    isvc = render_inference_service(version, Deployment(version.name, MODEL_NAMESPACE, version.name, None), config)
    predictor = isvc["spec"]["predictor"]
    runtime = runtimes[predictor["model"]["runtime"]]
    for pod, containers in _merged(runtime, predictor):
        assert restricted_violations(pod, containers) == [], version.name
