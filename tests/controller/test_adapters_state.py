"""Adapter events in the desired state: what is attached, and a clear refusal for each bad input."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from controller.state import Change, DesiredState, InboundEvent, Rejected, adapters_requested
from events.adapters import AdapterError, Target, check_files
from events.types import (
    AdapterVersionDeleted,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentAdapterDetached,
    DeploymentDeleted,
    DeploymentRequested,
    EventKind,
    LoadStatus,
    TemplateVersionPublished,
)
from templates.catalog import load_catalog
from templates.schema import LoraLimits

TINY = next(v for v in load_catalog() if v.name == "tiny-demo").to_document()
KINDS: dict[type[BaseModel], EventKind] = {
    TemplateVersionPublished: EventKind.VERSION_PUBLISHED,
    DeploymentRequested: EventKind.DEPLOYMENT_REQUESTED,
    DeploymentDeleted: EventKind.DEPLOYMENT_DELETED,
    AdapterVersionPublished: EventKind.ADAPTER_PUBLISHED,
    AdapterVersionDeleted: EventKind.ADAPTER_DELETED,
    DeploymentAdapterAttached: EventKind.ADAPTER_ATTACHED,
    DeploymentAdapterDetached: EventKind.ADAPTER_DETACHED,
}


def version(template: str = "tiny-demo", lora: dict[str, Any] | None = None) -> TemplateVersionPublished:
    spec = {**TINY["spec"], "engine": {**TINY["spec"].get("engine", {}), "lora": lora}}
    return TemplateVersionPublished.model_validate({**TINY, "version": 1, "template": {**TINY["template"], "name": template}, "spec": spec})


def adapter(name: str, template: str = "tiny-demo", rank: int = 8, number: int = 1, **extra: Any) -> AdapterVersionPublished:
    return AdapterVersionPublished(template=template, name=name, version=number, source=f"adapters/{name}", rank=rank, **extra)


class World:
    """A desired state with a LoRA-enabled tiny-demo (2 adapters, rank ≤ 16) deployed, fed like a stream."""

    def __init__(self, lora: dict[str, Any] | None = None) -> None:
        self.state = DesiredState(allowed_namespaces=frozenset({"default"}))
        self.sequence = itertools.count(1)
        self.apply(version(lora=lora if lora is not None else {"max_loras": 2, "max_rank": 16}))
        self.apply(version("other", lora={"max_loras": 2, "max_rank": 16}))
        self.apply(DeploymentRequested(template="tiny-demo"))

    def apply(self, data: BaseModel) -> Change:
        seq = next(self.sequence)
        return self.state.apply(InboundEvent(KINDS[type(data)], data, f"e{seq}", seq, data.template_name))  # type: ignore[attr-defined]

    def attached(self) -> dict[str, int]:
        target = self.state.adapter_target(self.state.deployments[("default", "tiny-demo")])
        assert target is not None
        return {name: doc.version for name, doc in self.state.adapters.desired(("default", "tiny-demo"), target).items()}


def test_attach_detach_and_latest() -> None:
    world = World()
    world.apply(adapter("alpha"))
    assert world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="alpha")) is Change.CHANGED
    world.apply(adapter("alpha", number=2))
    assert world.attached() == {"alpha": 2}  # follows the adapter's latest
    assert world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="alpha")) is Change.UNCHANGED
    assert world.apply(DeploymentAdapterDetached(template="tiny-demo", adapter="alpha")) is Change.CHANGED
    assert world.attached() == {}
    assert world.apply(DeploymentAdapterDetached(template="tiny-demo", adapter="alpha")) is Change.UNCHANGED


def test_the_requested_set_replaces_attachments_and_a_plain_rerequest_keeps_them() -> None:
    world = World()
    world.apply(adapter("alpha"))
    world.apply(adapter("beta"))
    world.apply(DeploymentRequested(template="tiny-demo", adapters=["alpha", "beta@1"]))
    assert world.attached() == {"alpha": 1, "beta": 1}
    assert world.apply(DeploymentRequested(template="tiny-demo")) is Change.UNCHANGED
    assert world.attached() == {"alpha": 1, "beta": 1}
    world.apply(DeploymentRequested(template="tiny-demo", adapters=[]))
    assert world.attached() == {}


def test_adapter_versions_are_immutable() -> None:
    world = World()
    world.apply(adapter("alpha"))
    assert world.apply(adapter("alpha")) is Change.UNCHANGED
    with pytest.raises(Rejected, match="immutable"):
        world.apply(adapter("alpha", rank=4))
    world.apply(AdapterVersionDeleted(template="tiny-demo", name="alpha", version=1))
    with pytest.raises(Rejected, match="deleted"):
        world.apply(adapter("alpha"))


@pytest.mark.parametrize(
    ("setup", "event", "reason"),
    [
        ([adapter("alpha", template="other")], DeploymentAdapterAttached(template="tiny-demo", adapter="alpha"), "unknown adapter"),
        (
            [adapter("alpha", base_versions=[2])],
            DeploymentAdapterAttached(template="tiny-demo", adapter="alpha"),
            "fits tiny-demo versions 2",
        ),
        (
            [adapter("wide", rank=32)],
            DeploymentAdapterAttached(template="tiny-demo", adapter="wide"),
            "rank 32, above the deployment's limit 16",
        ),
        (
            [adapter("a"), adapter("b"), adapter("c")],
            DeploymentRequested(template="tiny-demo", adapters=["a", "b", "c"]),
            "3 adapters exceed the deployment's limit of 2",
        ),
        ([], DeploymentAdapterAttached(template="tiny-demo", adapter="ghost"), "unknown adapter 'ghost'"),
        ([adapter("alpha")], DeploymentAdapterAttached(template="tiny-demo", name="nope", adapter="alpha"), "no deployment default/nope"),
    ],
)
def test_bad_attachments_are_rejected(setup: list[BaseModel], event: BaseModel, reason: str) -> None:
    world = World()
    for data in setup:
        world.apply(data)
    with pytest.raises(Rejected, match=reason.replace("(", r"\(")):
        world.apply(event)


def test_more_attaches_than_the_limit_are_rejected() -> None:
    world = World()
    for name in ("a", "b", "c"):
        world.apply(adapter(name))
    world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="a"))
    world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="b"))
    with pytest.raises(Rejected, match="exceed the deployment's limit of 2"):
        world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="c"))
    assert world.attached() == {"a": 1, "b": 1}


def test_a_version_without_lora_serves_no_adapters() -> None:
    world = World(lora={})
    world.state = DesiredState(allowed_namespaces=frozenset({"default"}))
    world.apply(version())  # no engine.lora
    world.apply(DeploymentRequested(template="tiny-demo"))
    world.apply(adapter("alpha"))
    with pytest.raises(Rejected, match="does not enable LoRA"):
        world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="alpha"))


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("../outside", "must not contain '..'"),
        ("adapters/../../etc", "must not contain '..'"),
        ("/etc/passwd", "relative to the model cache"),
        ("gs://bucket/adapter", "scheme 'gs://' is not allowed"),
        ("http://example.com/adapter", "scheme 'http://' is not allowed"),
    ],
)
def test_bad_sources_are_refused(source: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        AdapterVersionPublished(template="tiny-demo", name="alpha", version=1, source=source, rank=8)


def test_pickle_files_are_refused_and_safetensors_accepted() -> None:
    with pytest.raises(AdapterError, match="pickles: only safetensors"):
        check_files(["adapter_config.json", "adapter_model.bin"])
    with pytest.raises(AdapterError, match=r"no \.safetensors"):
        check_files(["adapter_config.json"])
    check_files(["adapter_config.json", "adapter_model.safetensors", "README.md"])


def test_an_adapter_that_no_longer_fits_is_not_desired() -> None:
    world = World()
    world.apply(adapter("alpha", base_versions=[1]))
    world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="alpha"))
    target = world.state.adapter_target(world.state.deployments[("default", "tiny-demo")])
    assert target is not None
    moved = Target(target.template, 2, LoraLimits(max_loras=2, max_rank=16))
    assert world.state.adapters.desired(("default", "tiny-demo"), moved) == {}


def test_only_the_lora_limits_reach_the_inference_service() -> None:
    from controller.render import render_inference_service
    from controller.render_config import RenderConfig
    from controller.state import Deployment

    world = World()
    deployment = world.state.deployments[("default", "tiny-demo")]
    before = render_inference_service(version(lora={"max_loras": 2, "max_rank": 16}), deployment, RenderConfig())
    world.apply(adapter("alpha"))
    world.apply(DeploymentAdapterAttached(template="tiny-demo", adapter="alpha"))
    after = render_inference_service(
        version(lora={"max_loras": 2, "max_rank": 16}), world.state.deployments[deployment.key], RenderConfig()
    )
    assert after == before  # attaching changes no rendered field: no new revision, no restart
    args = before["spec"]["predictor"]["model"]["args"]
    assert {"--enable-lora", "--max-loras=2", "--max-lora-rank=16"} <= set(args)
    wider = render_inference_service(
        version(lora={"max_loras": 4, "max_rank": 16}), Deployment("tiny-demo", "default", "tiny-demo", None), RenderConfig()
    )
    assert wider["spec"] != before["spec"]


def test_an_accepted_attach_or_request_reports_requested_for_the_adapters_it_names() -> None:
    world = World()
    world.apply(adapter("alpha"))
    world.apply(adapter("beta"))
    world.apply(adapter("beta", number=2))
    attach = DeploymentAdapterAttached(template="tiny-demo", adapter="alpha")
    world.apply(attach)
    [requested] = adapters_requested(world.state, attach)
    assert (requested.adapter, requested.adapter_version, requested.status, requested.replica) == ("alpha", 1, LoadStatus.REQUESTED, "")
    assert (requested.namespace, requested.name, requested.version) == ("default", "tiny-demo", 1)

    request = DeploymentRequested(template="tiny-demo", adapters=["alpha", "beta@1"])
    world.apply(request)
    assert {(r.adapter, r.adapter_version) for r in adapters_requested(world.state, request)} == {("alpha", 1), ("beta", 1)}
    assert adapters_requested(world.state, DeploymentAdapterDetached(template="tiny-demo", adapter="alpha")) == []
    assert adapters_requested(world.state, DeploymentRequested(template="tiny-demo")) == [], "a request without adapters names none"
