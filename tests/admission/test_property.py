"""Property: what stokehold's validation accepts renders an InferenceService a real cluster accepts; what breaks a rule is refused.

For hypothesis-generated templates, deployment requests and controller settings:

- accepted → the rendered InferenceService passes KServe v0.16.0's CRD schema with nothing pruned
  and nothing defaulted, and breaks none of the cluster's rules (tests/admission/cluster.py);
- a rule broken on purpose (a name that is no DNS-1035 label or leaves no room for derived names,
  keep_hot over Knative's hour, a gpu_type that is no label value) → refused at validation, with a
  message that names the rule.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.render import render_inference_service
from controller.render_config import MAX_REQUEST_TIMEOUT_S, RenderConfig
from controller.state import Deployment
from events.types import DeploymentRequested
from templates.schema import TemplateValidationError, parse_version
from tests.admission.cluster import violations
from tests.k8s_emulator import openapi
from tests.k8s_emulator.resources import INFERENCE_SERVICES

SCHEMA = INFERENCE_SERVICES.schema or {}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z]([-a-z0-9]{0,39}[a-z0-9])?", fullmatch=True)
label_values = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
gpu_types = st.one_of(st.sampled_from(["nvidia-l4", "nvidia-a100-80gb", "nvidia-h100-80gb", "nvidia-t4"]), label_values)


@st.composite
def durations(draw: st.DrawFn, max_seconds: int = 3600) -> str:
    seconds = draw(st.integers(0, max_seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs or not seconds else "")
    return text


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], RenderConfig]:
    """A template document, a deployment request and controller settings that should all be accepted."""
    template = draw(names)
    nodes = draw(st.sampled_from([1, 1, 1, 2]))
    gpus = draw(st.sampled_from([1, 2, 4, 8])) if nodes > 1 else draw(st.sampled_from([0, 1, 2, 4, 8]))
    resources: dict[str, Any] = {"gpus": gpus, "cpu": draw(st.sampled_from(["4", "500m", "16"])), "memory": "24Gi"}
    if gpus and draw(st.booleans()):
        resources["gpu_type"] = draw(gpu_types)
    source = "pvc://models/m" if nodes > 1 else draw(st.sampled_from(["hf://org/model", "s3://bucket/m", "pvc://models/m", "/models/m"]))
    min_replicas = draw(st.integers(0, 3))
    scaling = {
        "min_replicas": min_replicas,
        "max_replicas": draw(st.integers(max(1, min_replicas), 5)),
        "target_concurrency": draw(st.integers(1, 64)),
        "keep_hot": draw(durations()),
        "priority": draw(st.integers(0, 3)),
    }
    spec: dict[str, Any] = {
        "source": source,
        "resources": resources,
        "parallelism": {"tensor": max(1, gpus), "pipeline": nodes, "nodes": nodes},
        "scaling": scaling,
    }
    if draw(st.booleans()):
        spec["storage"] = {"cache_pvc": "model-cache", "hf_token_secret": {"name": "hf-token"}}
    labels = draw(st.dictionaries(st.sampled_from(["team", "tier", "example.com/owner"]), label_values, max_size=2))
    document = {"template": {"name": template, "labels": labels}, "version": draw(st.integers(1, 50)), "spec": spec}
    request: dict[str, Any] = {"template": template, "namespace": "llm"}
    if draw(st.booleans()):
        request["name"] = draw(names)
    overrides = {}
    if draw(st.booleans()):
        overrides["keep_hot"] = draw(durations())
    if draw(st.booleans()):
        overrides["priority"] = draw(st.integers(0, 3))
    if overrides:
        request["overrides"] = overrides
    config = RenderConfig(request_timeout_s=draw(st.integers(30, MAX_REQUEST_TIMEOUT_S)))
    return document, request, config


def render(document: dict[str, Any], request: dict[str, Any], config: RenderConfig) -> dict[str, Any]:
    version = parse_version(document)
    asked = DeploymentRequested.model_validate(request)
    deployment = Deployment(asked.template, asked.namespace, asked.deployment_name, version=None, overrides=asked.overrides)
    return render_inference_service(version, deployment, config)


@SETTINGS
@given(case=cases())
def test_what_validation_accepts_renders_what_the_cluster_accepts(case: tuple[dict[str, Any], dict[str, Any], RenderConfig]) -> None:
    isvc = render(*case)  # every generated case is valid: a refusal here is a failure too
    pruned, unknown = openapi.prune(isvc, SCHEMA)
    assert unknown == [], "the CRD schema would prune these"
    assert openapi.default(pruned, SCHEMA) == isvc, "the API server would add defaults: the live object would differ"
    assert openapi.validate(isvc, SCHEMA) == []
    assert violations(isvc) == []


Case = tuple[dict[str, Any], dict[str, Any], RenderConfig]
RETENTION = "scale-to-zero-pod-retention-period"
# (where the break goes, the value, words the refusal must contain)
BREAKS = st.one_of(
    st.tuples(st.just("template"), st.from_regex(r"[0-9][-a-z0-9]{0,30}[a-z0-9]", fullmatch=True), st.just("DNS-1035")),
    st.tuples(st.just("template"), st.from_regex(r"[a-z][-a-z0-9]{41,61}[a-z0-9]", fullmatch=True), st.just("at most 41")),
    st.tuples(st.just("name"), st.from_regex(r"[0-9][-a-z0-9]{0,20}[a-z0-9]", fullmatch=True), st.just("DNS-1035")),
    st.tuples(st.just("name"), st.from_regex(r"[a-z][-a-z0-9]{41,61}[a-z0-9]", fullmatch=True), st.just("at most 41")),
    st.tuples(st.just("keep_hot"), st.integers(3601, 24 * 3600).map(lambda s: f"{s // 60}m{s % 60}s"), st.just(RETENTION)),
    st.tuples(st.just("override_keep_hot"), st.integers(2, 24).map(lambda h: f"{h}h"), st.just(RETENTION)),
    st.tuples(st.just("gpu_type"), st.from_regex(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,40}[-_.]", fullmatch=True), st.just("label value")),
)


@SETTINGS
@given(case=cases(), broken=BREAKS)
def test_inputs_that_break_a_rule_are_refused_naming_it(case: Case, broken: tuple[str, str, str]) -> None:
    document, request, config = case
    where, value, words = broken
    if where == "template":
        document["template"]["name"] = request["template"] = value
        request.pop("name", None)
    elif where == "name":
        request["name"] = value
    elif where == "keep_hot":
        document["spec"]["scaling"]["keep_hot"] = value
    elif where == "override_keep_hot":
        request["overrides"] = {"keep_hot": value}
    else:
        document["spec"]["resources"] = {"gpus": 1, "gpu_type": value}
        document["spec"]["parallelism"] = {"tensor": 1}
    try:
        version = parse_version(document)
        asked = DeploymentRequested.model_validate(request)
        asked.overrides.apply_to(version.spec.scaling)  # what the controller checks on a deployment.requested
    except (TemplateValidationError, ValidationError) as refusal:
        assert words in str(refusal)
    else:
        raise AssertionError(f"accepted although {where}={value!r} breaks a rule: {render(document, request, config)['metadata']}")
