"""Status mapping (pure): InferenceService status → load status, ready and failed events, transitions only."""

from __future__ import annotations

from typing import Any

import pytest

from controller.labels import STOP_ANNOTATION
from controller.status import Observation, observe, transition
from events.types import DeploymentFailed, DeploymentLoadStatus, DeploymentReady, EventKind, LoadStatus
from tests.k8s_emulator import isvc_status
from tests.kube.helpers import isvc


def with_status(status: dict[str, Any] | None, *, generation: int = 1) -> dict[str, Any]:
    obj = isvc("chat", template="llama", version=3, namespace="team-a", content_hash="sha256:abc")
    obj["metadata"]["generation"] = generation
    if status is not None:
        obj["status"] = status
    return obj


def condition(kind: str, status: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    found = {"type": kind, "status": status}
    if reason:
        found["reason"] = reason
    if message:
        found["message"] = message
    return found


@pytest.mark.parametrize(
    ("status", "expected", "reason"),
    [
        (None, LoadStatus.REQUESTED, None),
        ({}, LoadStatus.REQUESTED, None),
        (isvc_status("chat", "team-a", ready=None), LoadStatus.LOADING, "Pending"),
        (isvc_status("chat", "team-a", ready=False, model_state="Loading"), LoadStatus.LOADING, "Loading"),
        (
            {"conditions": [condition("Ready", "False", "RevisionMissing", "Configuration is waiting for a Revision")]},
            LoadStatus.FAILED,
            None,
        ),
        ({"conditions": [condition("Ready", "False", "Unschedulable", "0/3 nodes have a GPU")]}, LoadStatus.LOADING, "Unschedulable"),
        ({"conditions": [condition("Ready", "Unknown")]}, LoadStatus.LOADING, None),
        (isvc_status("chat", "team-a", ready=True), LoadStatus.SUCCEEDED, None),
        (isvc_status("chat", "team-a", ready=False, reason="FailedToLoad", message="CUDA out of memory"), LoadStatus.FAILED, None),
        (
            {
                "conditions": [
                    condition("Ready", "False", "Down"),
                    condition("PredictorReady", "False", "ProgressDeadlineExceeded", "too slow"),
                ]
            },
            LoadStatus.FAILED,
            None,
        ),
    ],
)
def test_observe(status: dict[str, Any] | None, expected: LoadStatus, reason: str | None) -> None:
    observation = observe(with_status(status))
    assert observation is not None and observation.status is expected
    if expected is not LoadStatus.FAILED:
        assert observation.reason == reason


def test_failure_reasons_carry_the_message() -> None:
    failed = observe(with_status(isvc_status("chat", "team-a", ready=False, reason="FailedToLoad", message="CUDA out of memory")))
    assert failed is not None and failed.reason == "ModelLoadFailed: CUDA out of memory"
    deadline = observe(with_status({"conditions": [condition("Ready", "False", "ProgressDeadlineExceeded", "no progress in 600s")]}))
    assert deadline is not None and deadline.reason == "ProgressDeadlineExceeded: no progress in 600s"


def test_a_status_for_an_older_generation_is_still_loading() -> None:
    stale = with_status(isvc_status("chat", "team-a", ready=True, observed_generation=1), generation=2)
    observation = observe(stale)
    assert observation is not None and observation.status is LoadStatus.LOADING
    current = with_status(isvc_status("chat", "team-a", ready=True, observed_generation=2), generation=2)
    assert observe(current) == Observation(LoadStatus.SUCCEEDED, url="http://chat.team-a.example.com", content_hash="sha256:abc")


def test_stopped_services_report_nothing() -> None:
    stopped = with_status(isvc_status("chat", "team-a", ready=False, reason="FailedToLoad"))
    stopped["metadata"]["annotations"][STOP_ANNOTATION] = "true"
    assert transition(None, stopped) == (None, [])


def test_ready_publishes_load_status_and_ready_with_the_url() -> None:
    observation, events = transition(None, with_status(isvc_status("chat", "team-a", ready=True)))
    assert observation is not None
    assert [e.kind for e in events] == [EventKind.LOAD_STATUS, EventKind.DEPLOYMENT_READY]
    assert all(e.template == "llama" for e in events)
    load, ready = events[0].data, events[1].data
    assert isinstance(load, DeploymentLoadStatus) and isinstance(ready, DeploymentReady)
    assert load.status is LoadStatus.SUCCEEDED
    assert (ready.template, ready.version, ready.namespace, ready.name, ready.content_hash) == ("llama", 3, "team-a", "chat", "sha256:abc")
    assert ready.url == "http://chat.team-a.example.com"


def test_failed_publishes_load_status_and_failed_with_the_reason() -> None:
    _, events = transition(None, with_status(isvc_status("chat", "team-a", ready=False, reason="FailedToLoad", message="OOM")))
    assert [e.kind for e in events] == [EventKind.LOAD_STATUS, EventKind.DEPLOYMENT_FAILED]
    failed = events[1].data
    assert isinstance(failed, DeploymentFailed) and failed.reason == "ModelLoadFailed: OOM"
    assert isinstance(events[0].data, DeploymentLoadStatus) and events[0].data.reason == failed.reason


def test_only_transitions_are_reported() -> None:
    sequence = [
        with_status(None),
        with_status(None),
        with_status(isvc_status("chat", "team-a", ready=None)),
        with_status(isvc_status("chat", "team-a", ready=False, model_state="Loading")),  # still LOADING: nothing new
        with_status(isvc_status("chat", "team-a", ready=True)),
        with_status(isvc_status("chat", "team-a", ready=True)),
        with_status(isvc_status("chat", "team-a", ready=False, reason="FailedToLoad", message="a")),
        with_status(isvc_status("chat", "team-a", ready=False, reason="FailedToLoad", message="b")),  # another reason: news
    ]
    previous: Observation | None = None
    reported: list[tuple[str, str]] = []
    for obj in sequence:
        previous, events = transition(previous, obj)
        reported += [(e.kind.value, getattr(e.data, "status", "")) for e in events]
    assert reported == [
        ("deployment.load_status", LoadStatus.REQUESTED),
        ("deployment.load_status", LoadStatus.LOADING),
        ("deployment.load_status", LoadStatus.SUCCEEDED),
        ("deployment.ready", ""),
        ("deployment.load_status", LoadStatus.FAILED),
        ("deployment.failed", ""),
        ("deployment.load_status", LoadStatus.FAILED),
        ("deployment.failed", ""),
    ]


def test_a_new_content_hash_is_news_even_in_the_same_state() -> None:
    ready = with_status(isvc_status("chat", "team-a", ready=True))
    previous, _ = transition(None, ready)
    ready["metadata"]["annotations"]["stokehold.dev/content-hash"] = "sha256:def"
    _, events = transition(previous, ready)
    assert [e.kind for e in events] == [EventKind.LOAD_STATUS, EventKind.DEPLOYMENT_READY]


def test_objects_without_a_template_label_produce_no_events() -> None:
    obj = with_status(isvc_status("chat", "team-a", ready=True))
    del obj["metadata"]["labels"]["stokehold.dev/template"]
    observation, events = transition(None, obj)
    assert observation is not None and events == []
