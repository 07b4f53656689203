"""Following the controller's answer to one's own event (`--wait`), pure: events in, verdicts out."""

from __future__ import annotations

from typing import Any

from events.codec import DecodedEvent, validate_data
from events.outcome import Verdict, Waiter, answer_subjects
from events.status_view import DeploymentSummary
from events.types import EventKind

KEY = ("llm", "tiny")
STATUS = {"template": "tiny-demo", "version": 1, "namespace": "llm", "name": "tiny"}


def _event(kind: EventKind, **data: Any) -> DecodedEvent:
    return DecodedEvent(id="x", kind=kind, source="/controller", time=None, content_hash=None, data=validate_data(kind, data))


def _accepted(original_id: str = "mine") -> DecodedEvent:
    subject = "stokehold.templates.tiny-demo.deployment.requested"
    return _event(
        EventKind.EVENT_ACCEPTED,
        original_id=original_id,
        original_type="dev.stokehold.deployment.requested",
        subject=subject,
        stream_sequence=4,
    )


def test_a_dead_letter_for_the_event_is_its_verdict_and_others_are_not() -> None:
    waiter = Waiter()
    entry = waiter.expect("mine", "tiny-demo", KEY)
    subject = "stokehold.templates.tiny-demo.deployment.requested"

    waiter.feed(_event(EventKind.EVENT_REJECTED, original_id="someone-else", subject=subject, reason="not mine"))
    assert entry.verdict is None
    waiter.feed(_event(EventKind.EVENT_REJECTED, original_id="mine", subject=subject, reason="namespace 'llm' is not served"))

    assert (entry.verdict, entry.detail, waiter.done) == (Verdict.REJECTED, "namespace 'llm' is not served", True)


def test_accepted_reports_what_the_preceding_applied_did() -> None:
    waiter = Waiter()
    entry = waiter.expect("mine", "tiny-demo", KEY)

    waiter.feed(_event(EventKind.DEPLOYMENT_APPLIED, **(STATUS | {"name": "other"}), action="created"))  # another deployment
    waiter.feed(_event(EventKind.DEPLOYMENT_APPLIED, **STATUS, action="created", content_hash="sha256:a"))
    waiter.feed(_accepted("someone-else"))
    assert entry.verdict is None
    waiter.feed(_accepted())

    assert (entry.verdict, entry.detail) == (Verdict.APPLIED, "llm/tiny created (tiny-demo@1)")


def test_until_ready_waits_for_the_object_it_wrote() -> None:
    waiter = Waiter()
    entry = waiter.expect("mine", "tiny-demo", KEY, until_ready=True)

    waiter.feed(_event(EventKind.DEPLOYMENT_APPLIED, **STATUS, action="updated", content_hash="sha256:new"))
    waiter.feed(_accepted())
    assert entry.awaits_load and entry.verdict is None
    waiter.feed(_event(EventKind.DEPLOYMENT_READY, **STATUS, url="http://old", content_hash="sha256:old"))  # the object before
    assert entry.verdict is None
    waiter.feed(_event(EventKind.DEPLOYMENT_READY, **STATUS, url="http://tiny", content_hash="sha256:new"))

    assert (entry.verdict, entry.detail, entry.verdict.ok) == (Verdict.READY, "http://tiny", True)


def test_until_ready_ends_in_failure_or_in_what_the_stream_already_says() -> None:
    waiter = Waiter()
    failing = waiter.expect("mine", "tiny-demo", KEY, until_ready=True)
    waiter.feed(_event(EventKind.DEPLOYMENT_APPLIED, **STATUS, action="created", content_hash="sha256:a"))
    waiter.feed(_accepted())
    waiter.feed(_event(EventKind.DEPLOYMENT_FAILED, **STATUS, reason="ImagePullBackOff", content_hash="sha256:a"))
    assert (failing.verdict, failing.detail, failing.verdict.ok) == (Verdict.FAILED, "ImagePullBackOff", False)

    ready_before = Waiter()
    other = ready_before.expect("mine", "tiny-demo", KEY, until_ready=True)
    ready_before.feed(_event(EventKind.DEPLOYMENT_APPLIED, **STATUS, action="unchanged", content_hash="sha256:a"))
    ready_before.feed(_accepted())
    summary = DeploymentSummary(
        namespace="llm", name="tiny", template="tiny-demo", phase="Ready", url="http://tiny", event_id="e", content_hash="sha256:a"
    )
    ready_before.settle_from(other, summary)
    assert (other.verdict, other.detail) == (Verdict.READY, "http://tiny")


def test_a_stop_needs_no_loading_and_the_subjects_are_the_templates_answers() -> None:
    waiter = Waiter()
    entry = waiter.expect("mine", "tiny-demo", KEY, until_ready=True)
    waiter.feed(_event(EventKind.DEPLOYMENT_APPLIED, **STATUS, action="stopped"))
    waiter.feed(_accepted())

    assert entry.verdict is Verdict.APPLIED
    assert answer_subjects(["b", "a", "b"]) == [
        "stokehold.status.a.>",
        "stokehold.deadletter.a",
        "stokehold.status.b.>",
        "stokehold.deadletter.b",
    ]
