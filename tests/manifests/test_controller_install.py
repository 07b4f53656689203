"""The controller's Deployment, settings and RBAC as rendered by the overlays users apply."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from controller.config import ControllerConfig
from tests.manifests.kustomize import Doc, find, one, render

NAMESPACE = "stokehold-system"
SERVICE_ACCOUNT = "stokehold-controller"
INSTALLS = ("overlays/default", "overlays/nats", "overlays/full", "e2e/overlay")

# What the controller calls, and nothing else (see controller/sinks and controller/leader.py):
# InferenceServices are written with create/replace (update), never patched.
EXPECTED_CLUSTER_RULES = [
    {
        "apiGroups": ["serving.kserve.io"],
        "resources": ["inferenceservices"],
        "verbs": ["get", "list", "watch", "create", "update", "delete"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create"]},
    {"apiGroups": ["serving.kserve.io"], "resources": ["localmodelcaches"], "verbs": ["get", "create"]},
]
EXPECTED_NAMESPACE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
]


def controller_deployment(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", "stokehold-controller")


def controller_container(docs: list[Doc]) -> Doc:
    containers = controller_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["controller"]
    return dict(containers[0])


def env_of(docs: list[Doc]) -> dict[str, str]:
    """The controller's environment as the kubelet would build it: envFrom in order, then env (downward API resolved)."""
    container = controller_container(docs)
    pod_name = "stokehold-controller-7d9f-abcde"
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        elif "secretRef" in source:
            secrets = find(docs, "Secret", source["secretRef"]["name"])
            if not secrets:
                assert source["secretRef"].get("optional") is True, "a required Secret that the install does not create"
                continue
            environment.update({k: base64.b64decode(v).decode() for k, v in secrets[0].get("data", {}).items()})
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            field = variable["valueFrom"]["fieldRef"]["fieldPath"]
            environment[variable["name"]] = {"metadata.namespace": NAMESPACE, "metadata.name": pod_name}[field]
    return environment


@pytest.mark.parametrize("overlay", INSTALLS)
def test_two_replicas_with_leader_election(overlay: str) -> None:
    docs = render(overlay)
    assert controller_deployment(docs)["spec"]["replicas"] == 2
    environment = env_of(docs)
    assert environment["STOKEHOLD_LEADER_ELECTION"] == "true"
    assert environment["STOKEHOLD_LEASE_NAMESPACE"] == NAMESPACE
    pdb = one(docs, "PodDisruptionBudget", "stokehold-controller")
    assert pdb["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("overlay", INSTALLS)
def test_environment_is_a_valid_controller_configuration(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap + Secret + env the Deployment gets parse into the controller's own settings model."""
    for name in [n for n in os.environ if n.startswith("STOKEHOLD_")]:
        monkeypatch.delenv(name)
    environment = env_of(render(overlay))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = ControllerConfig()
    assert config.leader_election is True
    assert config.sink == "kube"
    assert config.lease_namespace == NAMESPACE
    assert config.identity == "stokehold-controller-7d9f-abcde"
    assert config.nats.url == ["nats://nats.nats.svc.cluster.local:4222"]
    assert str(config.metrics_port) == str(probe_port(render(overlay)))


def probe_port(docs: list[Doc]) -> int:
    container = controller_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe_ports = {container[probe]["httpGet"]["port"] for probe in ("livenessProbe", "readinessProbe")}
    assert len(probe_ports) == 1
    return int(ports[probe_ports.pop()])


@pytest.mark.parametrize("overlay", INSTALLS)
def test_probes_and_metrics_service(overlay: str) -> None:
    docs = render(overlay)
    container = controller_container(docs)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = probe_port(docs)
    assert env_of(docs)["STOKEHOLD_METRICS_PORT"] == str(port)
    service = one(docs, "Service", "stokehold-controller-metrics")
    pod_labels = controller_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [named[p["targetPort"]] for p in service["spec"]["ports"]] == [port]


@pytest.mark.parametrize("overlay", INSTALLS)
def test_pod_is_locked_down(overlay: str) -> None:
    docs = render(overlay)
    pod = controller_deployment(docs)["spec"]["template"]["spec"]
    container = controller_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    # the only writable place is a size-limited emptyDir
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and "memory" in resources["limits"]
    namespace = one(docs, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_nats_secret_is_optional_by_default_and_required_with_the_nats_overlay() -> None:
    def secret_ref(docs: list[Doc]) -> dict[str, Any]:
        return next(s["secretRef"] for s in controller_container(docs)["envFrom"] if "secretRef" in s)

    for overlay in ("overlays/default", "overlays/full"):  # full is default + monitoring: it must not replace your NATS Secret
        docs = render(overlay)
        assert secret_ref(docs) == {"name": "stokehold-nats", "optional": True}
        assert find(docs, "Secret") == []
    for overlay in ("overlays/nats",):
        docs = render(overlay)
        ref = secret_ref(docs)
        assert ref["optional"] is False
        secret = one(docs, "Secret", ref["name"])
        assert "STOKEHOLD_NATS_URL" in secret["data"]
        mounts = {m["name"]: m for m in controller_container(docs)["volumeMounts"]}
        assert mounts["nats-files"] == {"name": "nats-files", "mountPath": "/etc/stokehold/nats", "readOnly": True}
        volume = next(v for v in controller_deployment(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == "nats-files")
        assert volume["secret"]["optional"] is True


# ------------------------------------------------------------------------ RBAC


def _all_rules(docs: list[Doc]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']} {d['metadata']['name']}", rule) for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d.get("rules", [])
    ]


@pytest.mark.parametrize("overlay", INSTALLS)
def test_rbac_has_no_wildcards(overlay: str) -> None:
    for where, rule in _all_rules(render(overlay)):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in value for value in rule.get(field, [])), f"{where}: wildcard in {field}"


@pytest.mark.parametrize("overlay", INSTALLS)
def test_rbac_grants_exactly_what_the_controller_uses(overlay: str) -> None:
    docs = render(overlay)
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in roles) == [
        ("ClusterRole", "stokehold-controller"),
        ("Role", "stokehold-controller-leader-election"),
    ]
    assert one(docs, "ClusterRole")["rules"] == EXPECTED_CLUSTER_RULES
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == EXPECTED_NAMESPACE_RULES
    verbs = {verb for _, rule in _all_rules(docs) for verb in rule["verbs"]}
    assert verbs.isdisjoint({"escalate", "bind", "impersonate", "deletecollection"})
    cluster_verbs = {verb for rule in one(docs, "ClusterRole")["rules"] for verb in rule["verbs"]}
    assert "patch" not in cluster_verbs, "the controller replaces InferenceServices, it never patches them"
    resources = {resource for _, rule in _all_rules(docs) for resource in rule["resources"]}
    assert resources == {"inferenceservices", "leases", "jobs", "localmodelcaches"}


@pytest.mark.parametrize("overlay", INSTALLS)
def test_bindings_give_the_roles_to_the_controller_only(overlay: str) -> None:
    docs = render(overlay)
    subject = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    cluster_binding = one(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "stokehold-controller"}
    assert cluster_binding["subjects"] == subject
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stokehold-controller-leader-election"}
    assert binding["subjects"] == subject
    assert one(docs, "ServiceAccount", SERVICE_ACCOUNT)["metadata"]["namespace"] == NAMESPACE
