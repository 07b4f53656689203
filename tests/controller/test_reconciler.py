"""The reconciler against the real `dir` sink: writes only what changed, deletes what is no longer desired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from controller.labels import Object
from controller.reconciler import Reconciler
from controller.render_config import RenderConfig
from controller.sinks.base import ApplyAction, TransientSinkError
from controller.sinks.dir import DirSink
from controller.state import DesiredState, InboundEvent
from events.types import (
    DeploymentApplied,
    DeploymentDeleted,
    DeploymentFailed,
    DeploymentLoadStatus,
    DeploymentRequested,
    DeploymentStopped,
    EventKind,
    LoadStatus,
    TemplateVersionDeleted,
    TemplateVersionPublished,
)
from tests.controller.test_state import KINDS, version


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[EventKind, BaseModel, str]] = []

    async def report(self, kind: EventKind, data: BaseModel, template: str) -> None:
        self.events.append((kind, data, template))

    def of(self, kind: EventKind) -> list[Any]:
        return [data for k, data, _ in self.events if k is kind]


class CountingSink(DirSink):
    """The real dir sink, counting calls and optionally failing transiently."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.applies = 0
        self.deletes = 0
        self.fail_next: int = 0
        self.fail_after_write: int = 0  # the write happens, then the answer is lost (a timeout)

    async def apply(self, isvc: Object) -> ApplyAction:
        self.applies += 1
        if self.fail_next:
            self.fail_next -= 1
            raise TransientSinkError("API 503")
        action = await super().apply(isvc)
        if self.fail_after_write:
            self.fail_after_write -= 1
            raise TransientSinkError("timed out waiting for the API's answer")
        return action

    async def delete(self, namespace: str, name: str) -> bool:
        self.deletes += 1
        return await super().delete(namespace, name)


class Harness:
    def __init__(self, root: Path) -> None:
        self.state = DesiredState(allowed_namespaces=frozenset({"default", "llm"}))
        self.sink = CountingSink(root)
        self.recorder = Recorder()
        self.reconciler = Reconciler(self.state, self.sink, RenderConfig(), self.recorder)
        self.sequence = 0

    def event(self, data: BaseModel) -> str:
        self.sequence += 1
        self.state.apply(InboundEvent(KINDS[type(data)], data, f"e{self.sequence}", self.sequence))
        return str(data.template_name)  # type: ignore[attr-defined]

    def file(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return yaml.safe_load((self.sink.root / namespace / f"{name}.yaml").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def test_identical_content_causes_no_write(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    first = await h.reconciler.reconcile("tiny-demo", [("default", "tiny-demo")])
    assert first.actions == {("default", "tiny-demo"): "created"} and h.sink.applies == 1
    h.event(version(1))  # duplicate publish
    again = await h.reconciler.reconcile("tiny-demo")
    assert again.actions == {("default", "tiny-demo"): "unchanged"} and h.sink.applies == 1, "no API call at all"
    applied = h.recorder.of(EventKind.DEPLOYMENT_APPLIED)
    assert [a.action for a in applied] == ["created"]
    assert [s.status for s in h.recorder.of(EventKind.LOAD_STATUS)] == [LoadStatus.REQUESTED, LoadStatus.LOADING]
    assert isinstance(applied[0], DeploymentApplied) and applied[0].scale_to_zero


async def test_new_version_updates_followers_and_an_older_one_does_not(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    await h.reconciler.reconcile("tiny-demo")
    h.event(version(3, max_tokens=64))
    result = await h.reconciler.reconcile("tiny-demo")
    assert result.actions == {("default", "tiny-demo"): "updated"}
    assert h.file("tiny-demo")["metadata"]["labels"]["stokehold.dev/version"] == "3"
    h.event(version(2, max_tokens=16))  # older, arrives late
    assert (await h.reconciler.reconcile("tiny-demo")).writes == 0
    assert h.file("tiny-demo")["metadata"]["labels"]["stokehold.dev/version"] == "3"


async def test_stop_resume_and_delete_are_reported(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo", namespace="llm"))
    await h.reconciler.reconcile("tiny-demo")
    h.event(DeploymentStopped(template="tiny-demo", namespace="llm"))
    assert (await h.reconciler.reconcile("tiny-demo")).actions == {("llm", "tiny-demo"): "stopped"}
    assert h.file("tiny-demo", "llm")["metadata"]["annotations"]["serving.kserve.io/stop"] == "true"
    h.event(DeploymentDeleted(template="tiny-demo", namespace="llm"))
    assert (await h.reconciler.reconcile("tiny-demo")).actions == {("llm", "tiny-demo"): "deleted"}
    assert not (h.sink.root / "llm" / "tiny-demo.yaml").exists()
    assert [a.action for a in h.recorder.of(EventKind.DEPLOYMENT_APPLIED)] == ["created", "stopped", "deleted"]


async def test_deleting_the_pinned_version_deletes_the_service(h: Harness) -> None:
    h.event(version(1))
    h.event(version(2))
    h.event(DeploymentRequested(template="tiny-demo", name="pinned", version=2))
    h.event(DeploymentRequested(template="tiny-demo", name="latest"))
    await h.reconciler.reconcile("tiny-demo")
    h.event(TemplateVersionDeleted(template="tiny-demo", version=2))
    result = await h.reconciler.reconcile("tiny-demo")
    assert result.actions == {("default", "pinned"): "deleted", ("default", "latest"): "updated"}
    assert h.file("latest")["metadata"]["labels"]["stokehold.dev/version"] == "1"


async def test_transient_failure_is_retried_by_the_next_reconciliation(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    h.sink.fail_next = 1
    result = await h.reconciler.reconcile("tiny-demo")
    assert isinstance(result.transient, TransientSinkError) and not (h.sink.root / "default").exists()
    assert (await h.reconciler.reconcile("tiny-demo")).actions == {("default", "tiny-demo"): "created"}


async def test_a_write_whose_answer_was_lost_is_deleted_when_no_longer_wanted(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    h.sink.fail_after_write = 1
    assert isinstance((await h.reconciler.reconcile("tiny-demo")).transient, TransientSinkError)
    assert (h.sink.root / "default" / "tiny-demo.yaml").exists(), "the write happened; only its answer was lost"
    h.event(DeploymentDeleted(template="tiny-demo"))
    assert (await h.reconciler.reconcile("tiny-demo")).actions == {("default", "tiny-demo"): "deleted"}
    assert not (h.sink.root / "default" / "tiny-demo.yaml").exists()


async def test_a_failed_write_that_never_happened_needs_no_delete_and_reports_none(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    h.sink.fail_next = 1
    await h.reconciler.reconcile("tiny-demo")
    h.event(DeploymentDeleted(template="tiny-demo"))
    result = await h.reconciler.reconcile("tiny-demo")
    assert result.actions == {} and result.transient is None and h.sink.deletes == 1
    assert [a.action for a in h.recorder.of(EventKind.DEPLOYMENT_APPLIED)] == []


async def test_objects_not_managed_by_stokehold_are_never_touched(h: Harness) -> None:
    foreign = h.sink.root / "default" / "tiny-demo.yaml"
    foreign.parent.mkdir(parents=True)
    foreign.write_text(yaml.safe_dump({"kind": "InferenceService", "metadata": {"name": "tiny-demo"}}))
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    result = await h.reconciler.reconcile("tiny-demo", [("default", "tiny-demo")])
    assert "not managed by stokehold" in result.failures[("default", "tiny-demo")]
    assert "stokehold" not in foreign.read_text()
    failed = h.recorder.of(EventKind.DEPLOYMENT_FAILED)
    assert isinstance(failed[0], DeploymentFailed) and "not managed" in failed[0].reason


async def test_an_object_without_desired_state_is_kept_and_reported_until_an_explicit_delete(h: Harness) -> None:
    """A restarted controller whose stream lost the request for "orphan" (deleted messages, a recreated stream):
    the object stays, reported once (log, gauge, `deployment.applied` action `kept`); a deployment.deleted removes it."""
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo", name="keep"))
    h.event(DeploymentRequested(template="tiny-demo", name="orphan"))
    h.event(version(1, template="other"))
    h.event(DeploymentRequested(template="other"))
    await h.reconciler.reconcile_all()
    restarted = Harness(h.sink.root)  # its history holds tiny-demo's version and "keep" only
    restarted.event(version(1))
    restarted.event(DeploymentRequested(template="tiny-demo", name="keep"))
    assert await restarted.reconciler.prime() == 3
    result = await restarted.reconciler.reconcile_all()
    assert result.actions == {("default", "keep"): "unchanged"}
    assert result.kept == {("default", "orphan"), ("default", "other")}
    assert restarted.sink.applies == 0 and restarted.sink.deletes == 0, "nothing written, nothing deleted"
    kept = restarted.recorder.of(EventKind.DEPLOYMENT_APPLIED)
    assert sorted((k.name, k.action, k.version) for k in kept) == [("orphan", "kept", 1), ("other", "kept", 1)]
    assert restarted.reconciler.metrics.kept_objects._value.get() == 2

    assert (await restarted.reconciler.reconcile_all()).kept == result.kept
    assert len(restarted.recorder.of(EventKind.DEPLOYMENT_APPLIED)) == 2, "reported once, not at every resync"

    restarted.event(DeploymentDeleted(template="tiny-demo", name="orphan"))
    assert (await restarted.reconciler.reconcile("tiny-demo")).actions == {
        ("default", "keep"): "unchanged",
        ("default", "orphan"): "deleted",
    }
    assert not (h.sink.root / "default" / "orphan.yaml").exists() and (h.sink.root / "default" / "other.yaml").exists()
    assert restarted.reconciler.metrics.kept_objects._value.get() == 1


async def test_a_deployment_whose_version_is_missing_but_never_deleted_is_kept(h: Harness) -> None:
    h.event(version(1))
    h.event(version(2))
    h.event(DeploymentRequested(template="tiny-demo", name="pinned", version=2))
    h.event(DeploymentRequested(template="tiny-demo", name="latest"))
    await h.reconciler.reconcile("tiny-demo")
    h.state.versions.remove("tiny-demo", 2)  # gone from the history without a template.version.deleted
    result = await h.reconciler.reconcile("tiny-demo")
    assert result.kept == {("default", "pinned")} and result.actions == {("default", "latest"): "updated"}
    assert h.file("pinned")["metadata"]["labels"]["stokehold.dev/version"] == "2"
    h.event(DeploymentDeleted(template="tiny-demo", name="pinned"))
    assert (await h.reconciler.reconcile("tiny-demo")).actions[("default", "pinned")] == "deleted"


async def test_a_transient_failure_leaves_the_template_unsettled_until_a_retry_succeeds(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo"))
    h.sink.fail_next = 2
    assert (await h.reconciler.reconcile("tiny-demo")).transient is not None
    assert h.reconciler.unsettled == {"tiny-demo"} and h.reconciler.troubled.is_set()
    assert (await h.reconciler.retry_unsettled()).transient is not None, "the sink is still down"
    retried = await h.reconciler.retry_unsettled()
    assert retried.actions == {("default", "tiny-demo"): "created"}
    assert h.reconciler.unsettled == set() and not h.reconciler.troubled.is_set()


async def test_overrides_that_stop_fitting_a_new_version_report_a_failure(h: Harness) -> None:
    h.event(version(1))
    h.event(DeploymentRequested(template="tiny-demo", overrides={"max_replicas": 1}))  # type: ignore[arg-type]
    await h.reconciler.reconcile("tiny-demo")
    document = version(2).model_dump(by_alias=True)
    document["spec"]["scaling"] = {"min_replicas": 2, "max_replicas": 3}
    h.event(TemplateVersionPublished.model_validate(document))
    result = await h.reconciler.reconcile("tiny-demo")
    assert "overrides do not fit tiny-demo@2" in result.failures[("default", "tiny-demo")]
    assert h.file("tiny-demo")["metadata"]["labels"]["stokehold.dev/version"] == "1", "the running service is left alone"
    assert not [s for s in h.recorder.of(EventKind.LOAD_STATUS) if isinstance(s, DeploymentLoadStatus) and s.version == 2]
