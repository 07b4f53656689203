"""The Knative settings overlay, and the monitoring component (monitors and the Grafana dashboard)."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from controller.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEMPLATE_LABEL, VERSION_LABEL
from controller.metrics import ControllerMetrics
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
    for flag in ("tolerations", "nodeselector", "persistent-volume-claim", "persistent-volume-write", "emptydir"):
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
    monitor = one(full, "ServiceMonitor", "stokehold-controller")
    service = one(full, "Service", "stokehold-controller-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


def test_pod_monitor_selects_the_runtime_pods_stokehold_renders(full: list[Doc]) -> None:
    monitor = one(full, "PodMonitor", "stokehold-runtimes")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    # KServe copies the InferenceService's labels to its pods; these are the labels controller/render.py sets
    assert spec["selector"]["matchLabels"] == {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    source_labels = {s for e in spec["podMetricsEndpoints"] for r in e.get("relabelings", []) for s in r.get("sourceLabels", [])}
    for label in (TEMPLATE_LABEL, VERSION_LABEL):
        assert "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label) in source_labels
    assert "user-port" in {e["port"] for e in spec["podMetricsEndpoints"]}  # Knative's name for the serving port


def dashboard(full: list[Doc]) -> dict[str, object]:
    config_map = one(full, "ConfigMap", "stokehold-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(config_map["data"]) == ["stokehold.json"]
    loaded: dict[str, object] = json.loads(config_map["data"]["stokehold.json"])
    return loaded


def expressions(board: dict[str, object]) -> dict[str, list[str]]:
    panels = board["panels"]
    assert isinstance(panels, list)
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in panels if p["type"] != "row"}


def test_dashboard_has_the_panels_users_look_at(full: list[Doc]) -> None:
    board = dashboard(full)
    assert board["uid"] == "stokehold"
    panels = expressions(board)
    wanted = {
        "Requests": "vllm:request_success_total",
        "Time to first token": "vllm:time_to_first_token_seconds_bucket",
        "Tokens / s": "vllm:generation_tokens_total",
        "Replicas": "vllm:num_requests_running",
        "Cold starts": "stokehold_runtime_cold_start_seconds",
        "Cold-start time": "stokehold_runtime_cold_start_seconds",
        "Dead letters": "stokehold_controller_dead_letters_total",
    }
    for title, needle in wanted.items():
        assert any(needle in expr for expr in panels[title]), f"panel {title!r} does not use {needle}"
    ids = [p["id"] for p in board["panels"]]  # type: ignore[attr-defined]
    assert len(ids) == len(set(ids))


VLLM_METRIC = re.compile(r"vllm:[a-z_]+")
STOKEHOLD_METRIC = re.compile(r"stokehold_[a-z_]+")
# what each metric type exports (prometheus_client's names; a counter's family name has no _total)
SERIES_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}
# target labels the Prometheus Operator puts on every scraped series
OPERATOR_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "job", "instance", "service"})


@dataclass(frozen=True)
class Family:
    type: str
    labels: frozenset[str]

    def series(self, name: str) -> set[str]:
        return {name + suffix for suffix in SERIES_SUFFIXES[self.type]}


def vllm_families() -> dict[str, Family]:
    """vLLM's metric families, read from the installed vLLM's sources (importing vLLM takes seconds).

    vLLM v1 declares them as `self._counter_cls(name="vllm:…", …, labelnames=labelnames [+ ["extra"]])`
    with `labelnames = ["model_name", "engine"]`; a metric declared any other way is not found,
    so a dashboard that used it would fail here.
    """
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin is not None, "vLLM is not installed in this environment"
    metrics_dir = Path(spec.origin).parent / "v1" / "metrics"
    families: dict[str, Family] = {}
    for path in metrics_dir.glob("*.py"):
        text = path.read_text()
        base = re.search(r"^\s*labelnames = (\[[^\]]*\])", text, re.MULTILINE)
        for match in re.finditer(r"self\._(counter|gauge|histogram)_cls\(\s*name=\"(vllm:[a-z_]+)\"(.*?)\n\s*\)", text, re.DOTALL):
            kind, name, arguments = match.groups()
            labels: set[str] = set()
            if "labelnames=labelnames" in arguments:
                assert base is not None, f"{path.name}: {name} uses `labelnames` but no `labelnames = [...]` was found"
                labels |= set(ast.literal_eval(base.group(1)))
            for extra in re.findall(r"labelnames=labelnames \+ (\[[^\]]*\])", arguments):
                labels |= set(ast.literal_eval(extra))
            families[name] = Family(kind, frozenset(labels))
    return families


def stokehold_families() -> dict[str, Family]:
    """The controller's and the runtime's own families, from the objects that register them."""
    runtime = RuntimeMetrics(CollectorRegistry())
    families: dict[str, Family] = {}
    for owner in (ControllerMetrics(), runtime):
        for metric in vars(owner).values():
            if isinstance(metric, MetricWrapperBase):
                families[metric._name] = Family(str(metric._type), frozenset(metric._labelnames))
    return families


GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _label_names(expression: str) -> set[str]:
    """Label names an expression groups, joins or matches on."""
    grouped = {name.strip() for clause in GROUPING.findall(expression) for name in clause.split(",")}
    matched = {name for selector in re.findall(r"\{([^}]*)\}", expression) for name in MATCHER_LABEL.findall(selector)}
    return (grouped | matched) - {""}


def test_dashboard_uses_series_and_labels_that_exist(full: list[Doc]) -> None:
    """Every series a panel queries is one its metric exports (type-aware suffix), with labels it has."""
    vllm, ours = vllm_families(), stokehold_families()
    assert {"vllm:time_to_first_token_seconds", "vllm:num_requests_running"} <= set(vllm), "the source parse found nothing"
    relabelled = {
        r["targetLabel"]
        for e in one(full, "PodMonitor", "stokehold-runtimes")["spec"]["podMetricsEndpoints"]
        for r in e.get("relabelings", [])
        if "targetLabel" in r
    }
    exported = {series: (name, family) for families in (vllm, ours) for name, family in families.items() for series in family.series(name)}
    problems: list[str] = []
    used_kinds: set[str] = set()
    for title, targets in expressions(dashboard(full)).items():
        for expression in targets:
            used = set(VLLM_METRIC.findall(expression)) | set(STOKEHOLD_METRIC.findall(expression))
            problems += [f"{title}: {series} is not a series any metric exports" for series in sorted(used - set(exported))]
            known = [exported[series] for series in used if series in exported]
            used_kinds |= {"vllm" if name.startswith("vllm:") else name.split("_")[1] for name, _ in known}
            available = OPERATOR_LABELS | relabelled | {label for _, family in known for label in family.labels}
            if any(family.type == "histogram" for _, family in known):
                available |= {"le"}
            problems += [f"{title}: label {label!r} is on none of {sorted(used)}" for label in sorted(_label_names(expression) - available)]
    assert problems == []
    assert used_kinds == {"vllm", "controller", "runtime"}


def test_the_series_check_catches_a_wrong_suffix_and_label(full: list[Doc]) -> None:
    vllm, ours = vllm_families(), stokehold_families()
    assert "vllm:num_requests_running_total" not in vllm["vllm:num_requests_running"].series("vllm:num_requests_running")  # a gauge
    assert ours["stokehold_runtime_cold_start_seconds"].series("stokehold_runtime_cold_start_seconds") == {
        "stokehold_runtime_cold_start_seconds"
    }
    assert "finished_reason" in vllm["vllm:request_success"].labels and "model_name" in vllm["vllm:request_success"].labels
    assert ours["stokehold_controller_sink_errors"] == Family("counter", frozenset({"kind"}))
    assert _label_names('sum by (le, model_name) (rate(x{namespace=~"$ns", a!="b"}[5m]))') == {"le", "model_name", "namespace", "a"}


def test_dashboard_config_map_has_a_stable_name(full: list[Doc]) -> None:
    # Grafana's sidecar loads every labelled ConfigMap; a hash suffix would leave stale copies behind
    names = [d["metadata"]["name"] for d in find(full, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert names == ["stokehold-grafana-dashboard"]
