"""One valid data model per event kind, for round trips and schema checks."""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel

from events.types import (
    DATA_MODELS,
    AdapterLoadStatusData,
    AdapterVersionDeleted,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentAdapterDetached,
    DeploymentApplied,
    DeploymentDeleted,
    DeploymentFailed,
    DeploymentLoadStatus,
    DeploymentReady,
    DeploymentRequested,
    DeploymentResumed,
    DeploymentStopped,
    EventAccepted,
    EventKind,
    EventRejected,
    LoadStatus,
    TemplateVersionDeleted,
    TemplateVersionPublished,
    VersionLoadStatus,
)
from templates.catalog import CATALOG_DIR, load_file


@cache
def tiny_version() -> TemplateVersionPublished:
    return TemplateVersionPublished.model_validate(load_file(CATALOG_DIR / "tiny-demo.yaml").to_document())


def version_of(template: str, number: int, source: str = "hf://acme/model-7b") -> TemplateVersionPublished:
    """A small valid version document for `template`."""
    return TemplateVersionPublished.model_validate(
        {"template": {"name": template}, "version": number, "spec": {"source": source, "scaling": {"max_replicas": 2}}}
    )


def sample(kind: EventKind) -> BaseModel:
    status = {"template": "tiny-demo", "version": 1, "namespace": "llm", "name": "tiny-demo", "content_hash": tiny_version().content_hash}
    samples: dict[EventKind, BaseModel] = {
        EventKind.VERSION_PUBLISHED: tiny_version(),
        EventKind.VERSION_DELETED: TemplateVersionDeleted(template="tiny-demo", version=1),
        EventKind.DEPLOYMENT_REQUESTED: DeploymentRequested.model_validate(
            {"template": "tiny-demo", "version": 1, "namespace": "llm", "name": "tiny", "overrides": {"min_replicas": 1, "keep_hot": "30m"}}
        ),
        EventKind.DEPLOYMENT_DELETED: DeploymentDeleted(template="tiny-demo", namespace="llm"),
        EventKind.DEPLOYMENT_STOPPED: DeploymentStopped(template="tiny-demo", namespace="llm"),
        EventKind.DEPLOYMENT_RESUMED: DeploymentResumed(template="tiny-demo", namespace="llm"),
        EventKind.DEPLOYMENT_APPLIED: DeploymentApplied.model_validate(status | {"action": "created"}),
        EventKind.DEPLOYMENT_READY: DeploymentReady.model_validate(status | {"url": "http://tiny-demo.llm.example.com"}),
        EventKind.DEPLOYMENT_FAILED: DeploymentFailed.model_validate(status | {"reason": "image pull failed"}),
        EventKind.LOAD_STATUS: DeploymentLoadStatus.model_validate(status | {"status": LoadStatus.LOADING}),
        EventKind.VERSION_LOAD_STATUS: VersionLoadStatus(
            template="tiny-demo",
            version=1,
            content_hash="sha256:" + "0" * 64,
            status=LoadStatus.CACHED,
            cache="pvc://model-cache/models/tiny-demo-1",
            bytes=1024,
            seconds=0.5,
        ),
        EventKind.EVENT_ACCEPTED: EventAccepted(
            original_id="abc",
            original_type="dev.stokehold.deployment.requested",
            subject="stokehold.templates.tiny-demo.deployment.requested",
            stream_sequence=7,
        ),
        EventKind.ADAPTER_PUBLISHED: AdapterVersionPublished(
            template="tiny-demo", name="alpha", version=1, source="hf://org/alpha", rank=8
        ),
        EventKind.ADAPTER_DELETED: AdapterVersionDeleted(template="tiny-demo", name="alpha", version=1),
        EventKind.ADAPTER_ATTACHED: DeploymentAdapterAttached(template="tiny-demo", namespace="llm", adapter="alpha"),
        EventKind.ADAPTER_DETACHED: DeploymentAdapterDetached(template="tiny-demo", namespace="llm", adapter="alpha"),
        EventKind.ADAPTER_LOAD_STATUS: AdapterLoadStatusData.model_validate(
            status | {"adapter": "alpha", "adapter_version": 1, "replica": "r1", "status": LoadStatus.SUCCEEDED}
        ),
        EventKind.EVENT_REJECTED: EventRejected(
            original_id="abc",
            original_type="dev.stokehold.deployment.requested",
            subject="stokehold.templates.x.deployment.requested",
            reason="bad",
        ),
    }
    assert set(samples) == set(DATA_MODELS), "a new event kind needs a sample"
    return samples[kind]
