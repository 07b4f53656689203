"""What a real cluster accepts of a rendered InferenceService, written from KServe v0.16.0 and Knative 1.15 sources.

An oracle independent of stokehold's own constants: each rule reads the object (and the
manifests stokehold ships) and names itself when it is broken. The emulator applies the CRD
schema and KServe's webhook; these are the rules that only bite later, in KServe's controller
or in Knative's webhook, when the object is already accepted:

1. `dns-1035`: KServe's webhook wants `[a-z]([-a-z0-9]*[a-z0-9])?` as the name.
2. `derived-names`: every name KServe and Knative derive from it stays a valid name or label value
   of at most 63 characters (`<name>-predictor` is a Knative Service and a host label,
   `latest-<name>-predictor` a tag route's host label, `isvc.<name>-predictor[-worker]` label values
   of raw deployments, `<name>-predictor-worker` a Service).
3. `retention`: `autoscaling.knative.dev/scale-to-zero-pod-retention-period` within [0s, 1h]
   (Knative's `validateLastPodRetention`), and the other autoscaling annotations well formed.
4. `timeout`: `spec.predictor.timeout` (the revision's `timeoutSeconds`) at most Knative's
   `max-revision-timeout-seconds` as manifests/knative sets it (600 without it).
5. `label-values`: every nodeSelector value (pods are refused otherwise) and label value is valid.
6. `runtime`: the service names a stokehold ClusterServingRuntime that supports its model format,
   and no stokehold runtime is auto-selected for any model format (other teams' services).
7. `deployment-mode`: KServe >= 0.16's mode names, `Standard` exactly for multi-node services.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
KNATIVE_DEFAULT_MAX_REVISION_TIMEOUT_S = 600
WINDOW_MAX_S = 3600  # Knative's autoscaling.WindowMax
Violation = tuple[str, str]  # (rule, what is wrong)


def go_duration_seconds(text: str) -> float | None:
    """Seconds of a Go `time.ParseDuration` string (what Knative parses), None when Go would refuse it."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    parts = GO_DURATION.findall(body)
    if not parts or "".join(number + unit for number, unit in parts) != body:
        return None
    total = sum(float(number) * GO_UNITS[unit] for number, unit in parts)
    return -total if text.startswith("-") else total


def manifest_docs(directory: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((MANIFESTS / directory).glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict) and doc.get("kind") != "Kustomization"]
    return docs


def stokehold_runtimes() -> list[dict[str, Any]]:
    return [doc for doc in manifest_docs("runtimes") if doc.get("kind") == "ClusterServingRuntime"]


def max_revision_timeout_s() -> int:
    for doc in manifest_docs("knative"):
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "config-defaults":
            return int(doc["data"].get("max-revision-timeout-seconds", KNATIVE_DEFAULT_MAX_REVISION_TIMEOUT_S))
    return KNATIVE_DEFAULT_MAX_REVISION_TIMEOUT_S


# ------------------------------------------------------------------ KServe's runtime choice


def _format_labels(model_format: dict[str, Any]) -> str:
    version = model_format.get("version")
    return f"mt:{model_format['name']}" + (f":{version}" if version else "")


def supports(runtime: dict[str, Any], model_format: dict[str, Any], *, named: bool) -> bool:
    """KServe's `RuntimeSupportsModel`: a format counts when the service names the runtime, or when it auto-selects."""
    labels: set[str] = set()
    for fmt in runtime["spec"].get("supportedModelFormats") or []:
        if named or fmt.get("autoSelect") is True:
            labels.add(f"mt:{fmt['name']}")
            if fmt.get("version"):
                labels.add(f"mt:{fmt['name']}:{fmt['version']}")
    return _format_labels(model_format) in labels


def auto_selected(
    runtimes: list[dict[str, Any]], model_format: dict[str, Any], *, protocol: str = "v1", multinode: bool = False
) -> str | None:
    """The ClusterServingRuntime KServe picks for a service that names no runtime (`GetSupportingRuntimes`)."""
    candidates = [
        runtime
        for runtime in runtimes
        if not runtime["spec"].get("disabled")
        and supports(runtime, model_format, named=False)
        and protocol in (runtime["spec"].get("protocolVersions") or ["v1"])
        and ("workerSpec" in runtime["spec"]) == multinode
    ]

    def priority(runtime: dict[str, Any]) -> int:
        for fmt in runtime["spec"].get("supportedModelFormats") or []:
            if fmt["name"] == model_format["name"] and fmt.get("priority") is not None:
                return int(fmt["priority"])
        return -1  # no priority sorts last

    candidates.sort(key=priority, reverse=True)  # stable, as Go's sort keeps equal ones in list order here
    return candidates[0]["metadata"]["name"] if candidates else None


# ------------------------------------------------------------------------------ rules


def _derived_names(name: str) -> dict[str, tuple[str, str]]:
    """name → (what it is, 'dns1035' | 'label')."""
    return {
        f"{name}-predictor": ("the Knative Service / route host label", "dns1035"),
        f"latest-{name}-predictor": ("a tag route's host label", "dns1035"),
        f"{name}-predictor-worker": ("the multi-node worker Service", "dns1035"),
        f"isvc.{name}-predictor": ("the raw deployment's 'app' label value", "label"),
        f"isvc.{name}-predictor-worker": ("the multi-node workers' 'app' label value", "label"),
    }


def violations(isvc: dict[str, Any], *, legacy_modes: bool = False) -> list[Violation]:
    """Every rule the object breaks, named."""
    found: list[Violation] = []
    metadata = isvc.get("metadata") or {}
    name = str(metadata.get("name", ""))
    annotations = metadata.get("annotations") or {}
    predictor = isvc["spec"]["predictor"]
    if not DNS1035.fullmatch(name):
        found.append(("dns-1035", f"name {name!r} is not a DNS-1035 label"))
    for derived, (what, kind) in _derived_names(name).items():
        valid = DNS1035.fullmatch(derived) if kind == "dns1035" else LABEL_VALUE.fullmatch(derived)
        if len(derived) > 63 or not valid:
            found.append(("derived-names", f"{what} {derived!r} ({len(derived)} characters) is not valid"))

    for key, value in annotations.items():
        if not key.startswith("autoscaling.knative.dev/"):
            continue
        if key.endswith(("/scale-to-zero-pod-retention-period", "/scale-down-delay")):
            seconds = go_duration_seconds(str(value))
            if seconds is None or not 0 <= seconds <= WINDOW_MAX_S:
                found.append(("retention", f"{key}={value!r} is outside [0s, 1h]"))
        elif key.endswith(("/initial-scale", "/min-scale", "/max-scale")) and not (str(value).isdigit()):
            found.append(("retention", f"{key}={value!r} is not a non-negative integer"))

    timeout = predictor.get("timeout")
    if timeout is not None and not 0 <= int(timeout) <= max_revision_timeout_s():
        found.append(("timeout", f"timeout {timeout} s exceeds Knative's max-revision-timeout-seconds {max_revision_timeout_s()}"))

    selectors = [predictor.get("nodeSelector") or {}, (predictor.get("workerSpec") or {}).get("nodeSelector") or {}]
    for selector in [*selectors, metadata.get("labels") or {}]:
        for key, value in selector.items():
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
                found.append(("label-values", f"{key}={value!r} is not a label value"))

    runtimes = {runtime["metadata"]["name"]: runtime for runtime in stokehold_runtimes()}
    model = predictor.get("model") or {}
    runtime = runtimes.get(str(model.get("runtime")))
    if runtime is None:
        found.append(("runtime", f"runtime {model.get('runtime')!r} is not a stokehold ClusterServingRuntime"))
    elif not supports(runtime, model.get("modelFormat") or {}, named=True):
        found.append(("runtime", f"runtime {runtime['metadata']['name']!r} does not support {model.get('modelFormat')}"))
    for other in runtimes.values():
        for fmt in other["spec"].get("supportedModelFormats") or []:
            if fmt.get("autoSelect") is True:
                found.append(("runtime", f"{other['metadata']['name']} auto-selects model format {fmt['name']!r}"))

    mode = annotations.get("serving.kserve.io/deploymentMode")
    multinode = "workerSpec" in predictor
    wanted = ("RawDeployment" if multinode else "Serverless") if legacy_modes else ("Standard" if multinode else "Knative")
    if mode != wanted:
        found.append(("deployment-mode", f"deploymentMode {mode!r}, wanted {wanted!r}"))
    return found
