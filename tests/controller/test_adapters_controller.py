"""The controller with adapter events, against a real nats-server: an accepted attach reports REQUESTED
(the replicas report the rest), a bad one is dead-lettered with the reason, and the pod never changes."""

from __future__ import annotations

import pytest
import yaml

from events.types import (
    AdapterLoadStatusData,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentRequested,
    EventKind,
    LoadStatus,
    TemplateVersionPublished,
)
from tests.controller.test_integration import TINY, Env, env, settled

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["env"]  # the fixture, imported for this module's tests


def lora_tiny() -> TemplateVersionPublished:
    document = TINY.to_document()
    document["spec"].setdefault("engine", {})["lora"] = {"max_loras": 2, "max_rank": 8}
    return TemplateVersionPublished.model_validate(document)


def adapter(name: str, rank: int) -> AdapterVersionPublished:
    return AdapterVersionPublished(template="tiny-demo", name=name, version=1, source=f"adapters/{name}", rank=rank)


async def test_an_accepted_attach_reports_requested_and_a_bad_one_is_dead_lettered(env: Env) -> None:
    async with env.controller() as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, lora_tiny(), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await settled(controller, env, lambda: env.file("tiny-demo").exists())
        before = yaml.safe_load(env.file("tiny-demo").read_text())
        await env.publish(EventKind.ADAPTER_PUBLISHED, adapter("alpha", 8), "tiny-demo")
        await env.publish(EventKind.ADAPTER_PUBLISHED, adapter("wide", 16), "tiny-demo")
        await env.publish(EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template="tiny-demo", adapter="alpha"), "tiny-demo")
        await env.publish(EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template="tiny-demo", adapter="wide"), "tiny-demo")
        await settled(controller, env, lambda: bool(env.dead_letters) and any(isinstance(d, AdapterLoadStatusData) for _, d in env.status))

    requested = [data for _, data in env.status if isinstance(data, AdapterLoadStatusData)]
    assert [(d.adapter, d.adapter_version, d.status, d.replica, d.name) for d in requested] == [
        ("alpha", 1, LoadStatus.REQUESTED, "", "tiny-demo")
    ]
    assert [d.reason for d in env.dead_letters] == ["adapter wide@1 has rank 16, above the deployment's limit 8"]
    after = yaml.safe_load(env.file("tiny-demo").read_text())
    assert after["spec"] == before["spec"], "attaching an adapter never changes the pod"
    env_names = {item["name"] for item in after["spec"]["predictor"]["model"]["env"]}
    assert {"STOKEHOLD_DEPLOYMENT", "STOKEHOLD_TEMPLATE", "STOKEHOLD_NATS_URL"} <= env_names
