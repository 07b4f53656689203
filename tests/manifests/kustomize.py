"""Render the kustomize overlays with the installed `kubectl kustomize`, and validate what comes out.

Built-in kinds are validated against the Kubernetes JSON schemas that the
`kubernetes-validate` package ships (offline, strict: unknown fields are errors).
Custom kinds are checked structurally, their pod parts through the same schemas.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
GOLDEN = Path(__file__).resolve().parent / "golden"
# the oldest Kubernetes that KServe v0.16 supports, and the kind node of the e2e script
KUBERNETES_VERSION = "1.30.0"

# every kustomization a user applies (manifests/nats and manifests/monitoring are components,
# rendered through overlays/nats and overlays/full)
OVERLAYS = ("overlays/default", "overlays/nats", "overlays/full", "knative", "e2e/overlay", "e2e/nats")

Doc = dict[str, Any]


class RenderError(AssertionError):
    pass


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl") or "/usr/bin/kubectl"
    if not Path(found).exists():
        raise RenderError("kubectl is needed to render the manifests (`kubectl kustomize`); install it or set KUBECTL")
    return found


def render_dir(path: Path) -> list[Doc]:
    """`kubectl kustomize PATH`, parsed."""
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed:\n{done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def rendered_text(overlay: str) -> str:
    done = subprocess.run([kubectl(), "kustomize", str(MANIFESTS / overlay)], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize manifests/{overlay} failed:\n{done.stderr.strip()}")
    return done.stdout


def render(overlay: str) -> list[Doc]:
    """The objects of manifests/<overlay> (a fresh copy each call: tests may modify them)."""
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ident(doc: Doc) -> str:
    meta = doc.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{doc.get('kind')} {where}{meta.get('name')}"


# ------------------------------------------------------------------ validation


def validate_builtin(doc: Doc) -> None:
    """Raises kubernetes_validate.ValidationError for an invalid object, SchemaNotFoundError for a custom kind."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
PROM_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# KServe v0.16 ServingRuntimeSpec (with its inline ServingRuntimePodSpec)
RUNTIME_SPEC_KEYS = frozenset(
    {
        "supportedModelFormats",
        "multiModel",
        "disabled",
        "protocolVersions",
        "workerSpec",
        "grpcEndpoint",
        "grpcDataEndpoint",
        "httpDataEndpoint",
        "replicas",
        "storageHelper",
        "builtInAdapter",
        "containers",
        "volumes",
        "nodeSelector",
        "affinity",
        "tolerations",
        "labels",
        "annotations",
        "imagePullSecrets",
        "schedulerName",
        "hostIPC",
        "dnsPolicy",
        "hostNetwork",
    }
)
POD_SPEC_KEYS = (
    "containers",
    "volumes",
    "nodeSelector",
    "affinity",
    "tolerations",
    "imagePullSecrets",
    "schedulerName",
    "hostIPC",
    "dnsPolicy",
    "hostNetwork",
)
MODEL_FORMAT_KEYS = frozenset({"name", "version", "autoSelect", "priority"})
PROTOCOLS = frozenset({"v1", "v2", "grpc-v1", "grpc-v2"})
WORKER_SPEC_KEYS = frozenset({"pipelineParallelSize", "tensorParallelSize", *POD_SPEC_KEYS})


def _validate_pod_part(spec: Doc, where: str) -> list[str]:
    """The pod-spec fields of a custom object, validated as a real Pod."""
    pod_spec = {key: spec[key] for key in POD_SPEC_KEYS if key in spec}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_spec}
    try:
        validate_builtin(pod)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(str(p) for p in exc.absolute_path)}: {exc.message}"]
    return []


def _images_pinned(containers: list[Doc], where: str) -> list[str]:
    problems = []
    for container in containers:
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            problems.append(f"{where}: container {container.get('name')} image {image!r} is not pinned to a tag or digest")
    return problems


def check_serving_runtime(doc: Doc) -> list[str]:
    where = ident(doc)
    problems: list[str] = []
    if doc.get("apiVersion") != "serving.kserve.io/v1alpha1":
        problems.append(f"{where}: apiVersion must be serving.kserve.io/v1alpha1")
    name = (doc.get("metadata") or {}).get("name", "")
    if not DNS1123_LABEL.match(name):
        problems.append(f"{where}: name {name!r} is not a DNS-1123 label")
    spec = doc.get("spec") or {}
    problems += [f"{where}: unknown spec field {key!r}" for key in sorted(set(spec) - RUNTIME_SPEC_KEYS)]
    formats = spec.get("supportedModelFormats")
    if not formats:
        problems.append(f"{where}: spec.supportedModelFormats is empty")
    for fmt in formats or []:
        if not isinstance(fmt, dict) or not isinstance(fmt.get("name"), str):
            problems.append(f"{where}: a supportedModelFormats entry has no name")
            continue
        problems += [f"{where}: unknown supportedModelFormats field {key!r}" for key in sorted(set(fmt) - MODEL_FORMAT_KEYS)]
        if "autoSelect" in fmt and not isinstance(fmt["autoSelect"], bool):
            problems.append(f"{where}: autoSelect must be a boolean")
        if "priority" in fmt and not isinstance(fmt["priority"], int):
            problems.append(f"{where}: priority must be an integer")
    problems += [f"{where}: unknown protocol {p!r}" for p in spec.get("protocolVersions") or [] if p not in PROTOCOLS]
    if not spec.get("containers"):
        problems.append(f"{where}: spec.containers is empty")
    problems += _validate_pod_part(spec, f"{where} spec")
    problems += _images_pinned(spec.get("containers") or [], where)
    worker = spec.get("workerSpec")
    if worker is not None:
        problems += [f"{where}: unknown workerSpec field {key!r}" for key in sorted(set(worker) - WORKER_SPEC_KEYS)]
        if worker.get("containers"):
            problems += _validate_pod_part(worker, f"{where} workerSpec")
            problems += _images_pinned(worker["containers"], where)
    return problems


def _check_selector(selector: Any, where: str) -> list[str]:
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return [f"{where}: an empty selector would select everything"]
    problems = [f"{where}: unknown selector field {key!r}" for key in sorted(set(selector) - {"matchLabels", "matchExpressions"})]
    for expression in selector.get("matchExpressions") or []:
        if expression.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
            problems.append(f"{where}: matchExpressions operator {expression.get('operator')!r}")
        if not expression.get("key"):
            problems.append(f"{where}: matchExpressions entry without key")
    return problems


ENDPOINT_KEYS = frozenset({"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"})
RELABEL_KEYS = frozenset({"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"})
MONITOR_SPEC_KEYS = {
    "ServiceMonitor": frozenset({"selector", "namespaceSelector", "endpoints", "jobLabel"}),
    "PodMonitor": frozenset({"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}),
}


def check_monitor(doc: Doc) -> list[str]:
    where = ident(doc)
    kind = doc["kind"]
    problems: list[str] = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion must be monitoring.coreos.com/v1")
    spec = doc.get("spec") or {}
    problems += [f"{where}: unknown spec field {key!r}" for key in sorted(set(spec) - MONITOR_SPEC_KEYS[kind])]
    problems += _check_selector(spec.get("selector"), where)
    namespaces = spec.get("namespaceSelector") or {}
    problems += [f"{where}: unknown namespaceSelector field {key!r}" for key in sorted(set(namespaces) - {"any", "matchNames"})]
    endpoints = spec.get("endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints")
    if not endpoints:
        problems.append(f"{where}: no endpoints")
    for endpoint in endpoints or []:
        problems += [f"{where}: unknown endpoint field {key!r}" for key in sorted(set(endpoint) - ENDPOINT_KEYS)]
        if not isinstance(endpoint.get("port"), str) or not endpoint["port"]:
            problems.append(f"{where}: an endpoint needs a port name")
        if not str(endpoint.get("path", "/")).startswith("/"):
            problems.append(f"{where}: endpoint path must start with /")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not DURATION.match(str(endpoint[key])):
                problems.append(f"{where}: {key} {endpoint[key]!r} is not a Prometheus duration")
        for relabel in endpoint.get("relabelings") or []:
            problems += [f"{where}: unknown relabeling field {key!r}" for key in sorted(set(relabel) - RELABEL_KEYS)]
            if "targetLabel" in relabel and not PROM_LABEL.match(relabel["targetLabel"]):
                problems.append(f"{where}: targetLabel {relabel['targetLabel']!r} is not a Prometheus label name")
            problems += [f"{where}: sourceLabel {s!r}" for s in relabel.get("sourceLabels") or [] if not PROM_LABEL.match(s)]
    return problems


CUSTOM_CHECKS = {
    "ClusterServingRuntime": check_serving_runtime,
    "ServingRuntime": check_serving_runtime,
    "ServiceMonitor": check_monitor,
    "PodMonitor": check_monitor,
}


def problems_of(doc: Doc) -> list[str]:
    """Everything wrong with one rendered object (empty: valid)."""
    try:
        validate_builtin(doc)
        return []
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        return [f"{ident(doc)}: {path or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        check = CUSTOM_CHECKS.get(str(doc.get("kind")))
        if check is None:
            return [f"{ident(doc)}: {doc.get('apiVersion')} {doc.get('kind')} is neither a built-in kind nor one these tests check"]
        return check(doc)


def golden_path(overlay: str) -> Path:
    return GOLDEN / (overlay.replace("/", "-") + ".yaml")
