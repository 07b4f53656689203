"""The status watcher against the emulator: KServe-like status changes become status events, across reconnects."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi
from pydantic import BaseModel

from controller.sinks.kube import KubeSink
from controller.watcher import StatusWatcher, watch_status
from events.types import DeploymentFailed, DeploymentReady, EventKind, LoadStatus
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import eventually, isvc

Reported = list[tuple[EventKind, BaseModel, str]]


class Recorder:
    def __init__(self) -> None:
        self.events: Reported = []

    async def report(self, kind: EventKind, data: BaseModel, template: str) -> None:
        self.events.append((kind, data, template))

    def of(self, name: str) -> list[tuple[str, Any]]:
        """(kind, load status or None) of one service's events, in order."""
        return [(k.value, getattr(d, "status", None)) for k, d, _ in self.events if getattr(d, "name", None) == name]


@pytest.fixture
async def sink(kube: KubernetesEmulator) -> AsyncIterator[KubeSink]:
    kube_sink = KubeSink(kube.api_client(), workers=2)
    yield kube_sink
    await kube_sink.close()


async def start(watcher: StatusWatcher) -> asyncio.Task[None]:
    task = asyncio.create_task(watcher.run())
    await eventually(lambda: watcher.relists >= 1, "the first list")
    return task


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("isvc-watch-")]


async def test_status_changes_become_events(kube: KubernetesEmulator, sink: KubeSink) -> None:
    recorder = Recorder()
    await sink.apply(isvc("chat", template="llama", version=2, content_hash="sha256:1"))
    watcher = StatusWatcher(kube.api_client(), recorder.report, backoff_s=0.05)
    task = await start(watcher)

    await eventually(lambda: recorder.of("chat") == [("deployment.load_status", LoadStatus.REQUESTED)], "REQUESTED")
    kube.set_isvc_status("default", "chat", ready=False, model_state="Loading")
    await eventually(lambda: len(recorder.of("chat")) == 2, "LOADING")
    kube.set_isvc_status("default", "chat", ready=True)
    await eventually(lambda: len(recorder.of("chat")) == 4, "SUCCEEDED and ready")
    CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", "default", "inferenceservices", "chat", {"metadata": {"labels": {"team": "x"}}}
    )  # a change that is no news for the status
    kube.set_isvc_status("default", "chat", ready=False, reason="FailedToLoad", message="CUDA out of memory")
    await eventually(lambda: len(recorder.of("chat")) == 6, "FAILED and failed")

    assert recorder.of("chat") == [
        ("deployment.load_status", LoadStatus.REQUESTED),
        ("deployment.load_status", LoadStatus.LOADING),
        ("deployment.load_status", LoadStatus.SUCCEEDED),
        ("deployment.ready", None),
        ("deployment.load_status", LoadStatus.FAILED),
        ("deployment.failed", None),
    ]
    ready = next(d for k, d, _ in recorder.events if k is EventKind.DEPLOYMENT_READY)
    failed = next(d for k, d, _ in recorder.events if k is EventKind.DEPLOYMENT_FAILED)
    assert isinstance(ready, DeploymentReady) and ready.url == "http://chat.default.example.com" and ready.version == 2
    assert isinstance(failed, DeploymentFailed) and "CUDA out of memory" in failed.reason
    assert {template for _, _, template in recorder.events} == {"llama"}

    await sink.delete("default", "chat")
    await eventually(lambda: ("default", "chat") not in watcher.observations, "the deletion")
    await watcher.stop()
    await asyncio.wait_for(task, 10)
    assert watch_threads() == []


async def test_resumes_after_a_dropped_watch_and_lists_again_after_410(kube: KubernetesEmulator, sink: KubeSink) -> None:
    recorder = Recorder()
    await sink.apply(isvc("a"))
    await sink.apply(isvc("b"))
    watcher = StatusWatcher(kube.api_client(), recorder.report, backoff_s=0.05)
    task = await start(watcher)
    await eventually(lambda: len(recorder.events) == 2, "both REQUESTED")

    # The server drops the watch: the watcher resumes from its resourceVersion, without listing again.
    kube.close_watches()
    kube.set_isvc_status("default", "a", ready=True)
    await eventually(lambda: len(recorder.of("a")) == 3, "a ready after the reconnect")
    assert watcher.relists == 1

    # The server drops it again and its next watch request is slow; meanwhile history is compacted
    # past the watcher's resourceVersion, so the watch answers 410 Gone and the watcher lists again.
    kube.faults.add("delay", delay_s=0.5, methods={"GET"}, path=r"/inferenceservices$", times=1)
    kube.close_watches()
    await eventually(lambda: kube.faults.injected["delay"] == 1, "the delayed watch request")
    kube.set_isvc_status("default", "b", ready=False, reason="FailedToLoad", message="bad weights")
    kube.compact()
    await eventually(lambda: len(recorder.of("b")) == 3, "b failed, seen by the new list")
    assert watcher.relists == 2
    assert recorder.of("a") == [
        ("deployment.load_status", LoadStatus.REQUESTED),
        ("deployment.load_status", LoadStatus.SUCCEEDED),
        ("deployment.ready", None),
    ]  # listing again repeated nothing for `a`
    await watcher.stop()
    await asyncio.wait_for(task, 10)


async def test_server_errors_back_off_and_recover(kube: KubernetesEmulator, sink: KubeSink) -> None:
    recorder = Recorder()
    kube.faults.add("error", status=500, methods={"GET"}, path=r"/inferenceservices$", times=3)
    await sink.apply(isvc("a"))
    watcher = StatusWatcher(kube.api_client(), recorder.report, backoff_s=0.02)
    task = await start(watcher)
    await eventually(lambda: len(recorder.events) == 1, "REQUESTED once the server answers")
    assert watcher.errors == 3
    await watcher.stop()
    await asyncio.wait_for(task, 10)


async def test_configured_namespaces_only_and_cancellation_stops_cleanly(kube: KubernetesEmulator, sink: KubeSink) -> None:
    recorder = Recorder()
    await sink.apply(isvc("mine", namespace="team-a"))
    await sink.apply(isvc("other", namespace="team-b"))
    task = asyncio.create_task(watch_status(kube.api_client(), recorder.report, namespaces=["team-a"], backoff_s=0.05))
    await eventually(lambda: recorder.of("mine"), "team-a's service")
    kube.set_isvc_status("team-b", "other", ready=True)
    kube.set_isvc_status("team-a", "mine", ready=True)
    await eventually(lambda: len(recorder.of("mine")) == 3, "team-a's service ready")
    assert recorder.of("other") == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: watch_threads() == [], "the watch threads to end")
