"""The Knative settings overlay, and the monitoring component (monitors and the Grafana dashboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from controller.sinks.base import MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEMPLATE_LABEL, VERSION_LABEL
from runtimes.metrics import RuntimeMetrics
from templates.schema import duration_seconds
from tests.manifests.kustomize import Doc, find, one, render

# ---------------------------------------------------------------------- Knative


def knative_data() -> dict[str, dict[str, str]]:
    docs = render("knative")
    assert {(d["kind"], d["metadata"]["namespace"]) for d in docs} == {("ConfigMap", "knative-serving")}
    return {d["metadata"]["name"]: d["data"] for d in docs}


def test_knative_settings_for_scale_to_zero_of_gpu_models() -> None:
    data = knative_data()
    autoscaler = data["config-autoscaler"]
    assert autoscaler["enable-scale-to-zero"] == "true"
    assert autoscaler["allow-zero-initial-scale"] == "true"
    assert int(autoscaler["initial-scale"]) >= 0
    # Knative refuses a grace period under 6 s
    assert duration_seconds(autoscaler["scale-to-zero-grace-period"]) >= 6
    # a cold GPU start (node, image, download, load) needs far more than Knative's 10-minute default
    assert duration_seconds(data["config-deployment"]["progress-deadline"]) >= 30 * 60


def test_knative_features_allow_what_the_controller_renders() -> None:
    features = knative_data()["config-features"]
    # GPU placement (tolerations, nodeSelector) and the model-cache PVC that controller/render.py emits
    for flag in ("tolerations", "nodeselector", "persistent-volume-claim", "persistent-volume-write"):
        assert features[f"kubernetes.podspec-{flag}"] == "enabled"


def test_knative_overlay_only_sets_keys_it_documents() -> None:
    # applied server-side onto Knative's own ConfigMaps: no labels or other fields that would take them over
    for doc in render("knative"):
        assert set(doc) == {"apiVersion", "kind", "metadata", "data"}
        assert set(doc["metadata"]) == {"name", "namespace"}
    text = (Path(__file__).resolve().parents[2] / "manifests" / "knative" / "kustomization.yaml").read_text()
    assert "kubectl apply --server-side" in text


# -------------------------------------------------------------------- monitoring


@pytest.fixture(scope="module")
def full() -> list[Doc]:
    return render("overlays/full")


def test_service_monitor_selects_the_controller_metrics_service(full: list[Doc]) -> None:
    monitor = one(full, "ServiceMonitor", "modelplane-controller")
    service = one(full, "Service", "modelplane-controller-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


def test_pod_monitor_selects_the_runtime_pods_modelplane_renders(full: list[Doc]) -> None:
    monitor = one(full, "PodMonitor", "modelplane-runtimes")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    # KServe copies the InferenceService's labels to its pods; these are the labels controller/render.py sets
    assert spec["selector"]["matchLabels"] == {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    source_labels = {s for e in spec["podMetricsEndpoints"] for r in e.get("relabelings", []) for s in r.get("sourceLabels", [])}
    for label in (TEMPLATE_LABEL, VERSION_LABEL):
        assert "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label) in source_labels
    assert "user-port" in {e["port"] for e in spec["podMetricsEndpoints"]}  # Knative's name for the serving port


def dashboard(full: list[Doc]) -> dict[str, object]:
    config_map = one(full, "ConfigMap", "modelplane-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(config_map["data"]) == ["modelplane.json"]
    loaded: dict[str, object] = json.loads(config_map["data"]["modelplane.json"])
    return loaded


def expressions(board: dict[str, object]) -> dict[str, list[str]]:
    panels = board["panels"]
    assert isinstance(panels, list)
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in panels if p["type"] != "row"}


def test_dashboard_has_the_panels_users_look_at(full: list[Doc]) -> None:
    board = dashboard(full)
    assert board["uid"] == "modelplane"
    panels = expressions(board)
    wanted = {
        "Requests": "vllm:request_success_total",
        "Time to first token": "vllm:time_to_first_token_seconds_bucket",
        "Tokens / s": "vllm:generation_tokens_total",
        "Replicas": "vllm:num_requests_running",
        "Cold starts": "modelplane_runtime_cold_start_seconds",
        "Cold-start time": "modelplane_runtime_cold_start_seconds",
        "Dead letters": "modelplane_controller_dead_letters_total",
    }
    for title, needle in wanted.items():
        assert any(needle in expr for expr in panels[title]), f"panel {title!r} does not use {needle}"
    ids = [p["id"] for p in board["panels"]]  # type: ignore[attr-defined]
    assert len(ids) == len(set(ids))


VLLM_METRIC = re.compile(r"vllm:[a-z_]+")
MODELPLANE_METRIC = re.compile(r"modelplane_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _base_name(metric: str) -> str:
    for suffix in SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def vllm_metric_names() -> set[str]:
    """Metric names in the installed vLLM's sources (read, not imported: importing vLLM takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin is not None, "vLLM is not installed in this environment"
    metrics_dir = Path(spec.origin).parent / "v1" / "metrics"
    return {name for path in metrics_dir.glob("*.py") for name in re.findall(r'"(vllm:[a-z_]+)"', path.read_text())}


def test_dashboard_uses_metrics_that_exist(full: list[Doc]) -> None:
    exprs = [e for targets in expressions(dashboard(full)).values() for e in targets]
    used_vllm = {_base_name(m) for e in exprs for m in VLLM_METRIC.findall(e)}
    assert used_vllm and used_vllm <= vllm_metric_names(), f"unknown vLLM metrics: {used_vllm - vllm_metric_names()}"
    ours = {metric.name for metric in ControllerMetrics().registry.collect()}
    runtime_registry = CollectorRegistry()
    RuntimeMetrics(runtime_registry)
    ours |= {metric.name for metric in runtime_registry.collect()}
    used_ours = {_base_name(m) for e in exprs for m in MODELPLANE_METRIC.findall(e)}
    assert {m.split("_")[1] for m in used_ours} == {"controller", "runtime"}
    assert used_ours <= ours, f"unknown modelplane metrics: {used_ours - ours}"


def test_dashboard_config_map_has_a_stable_name(full: list[Doc]) -> None:
    # Grafana's sidecar loads every labelled ConfigMap; a hash suffix would leave stale copies behind
    names = [d["metadata"]["name"] for d in find(full, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert names == ["modelplane-grafana-dashboard"]
