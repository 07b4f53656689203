"""Folding status events into one row per deployment (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from events.codec import DecodedEvent, validate_data
from events.status_view import rejections, summarize
from events.types import EventKind

TINY = {"template": "tiny-demo", "namespace": "llm", "name": "tiny-demo"}


def _event(number: int, kind: EventKind, **data: Any) -> DecodedEvent:
    return DecodedEvent(
        id=f"e{number}",
        kind=kind,
        source="/controller",
        time=datetime(2024, 1, 1, 0, number, tzinfo=UTC),
        content_hash=None,
        data=validate_data(kind, TINY | data),
    )


def _phases(*events: DecodedEvent) -> list[str]:
    """The phase after each event."""
    return [summarize(events[: index + 1])[0].phase for index in range(len(events))]


def test_a_deployment_goes_from_applied_through_loading_to_ready() -> None:
    events = (
        _event(1, EventKind.DEPLOYMENT_APPLIED, version=1, action="created"),
        _event(2, EventKind.LOAD_STATUS, status="REQUESTED"),
        _event(3, EventKind.LOAD_STATUS, status="LOADING"),
        _event(4, EventKind.LOAD_STATUS, status="SUCCEEDED"),
        _event(5, EventKind.DEPLOYMENT_READY, url="http://tiny"),
        _event(6, EventKind.LOAD_STATUS, status="SUCCEEDED"),
    )

    assert _phases(*events) == ["Applied", "Loading", "Loading", "Loaded", "Ready", "Ready"]
    [row] = summarize(events)
    assert (row.version, row.url, row.event_id, row.updated) == (1, "http://tiny", "e6", datetime(2024, 1, 1, 0, 6, tzinfo=UTC))


def test_stop_delete_and_failure_replace_the_url_or_give_a_reason() -> None:
    ready = _event(1, EventKind.DEPLOYMENT_READY, url="http://tiny")
    stopped = _event(2, EventKind.DEPLOYMENT_APPLIED, action="stopped")
    failed = _event(3, EventKind.DEPLOYMENT_FAILED, reason="CrashLoopBackOff")
    deleted = _event(4, EventKind.DEPLOYMENT_APPLIED, action="deleted")

    assert _phases(ready, stopped, failed, deleted) == ["Ready", "Stopped", "Failed", "Deleted"]
    assert summarize([ready, stopped])[0].url is None
    assert summarize([ready, failed])[0].reason == "CrashLoopBackOff"


def test_one_row_per_namespace_and_name_sorted_and_inbound_events_skipped() -> None:
    other = DecodedEvent(
        id="o",
        kind=EventKind.DEPLOYMENT_READY,
        source="/controller",
        time=None,
        content_hash=None,
        data=validate_data(EventKind.DEPLOYMENT_READY, {"template": "gemma-7b-it", "namespace": "a-team", "name": "gemma"}),
    )
    inbound = DecodedEvent(
        id="i",
        kind=EventKind.DEPLOYMENT_DELETED,
        source="/cli",
        time=None,
        content_hash=None,
        data=validate_data(EventKind.DEPLOYMENT_DELETED, TINY),
    )

    rows = summarize([_event(1, EventKind.DEPLOYMENT_APPLIED, action="created"), inbound, other])

    assert [row.key for row in rows] == [("a-team", "gemma"), ("llm", "tiny-demo")]


def test_an_unchanged_object_keeps_its_phase_and_url() -> None:
    ready = _event(1, EventKind.DEPLOYMENT_READY, url="http://tiny", content_hash="sha256:a")
    unchanged = _event(2, EventKind.DEPLOYMENT_APPLIED, action="unchanged", content_hash="sha256:a")
    updated = _event(3, EventKind.DEPLOYMENT_APPLIED, action="updated", content_hash="sha256:b")

    assert _phases(ready, unchanged, updated) == ["Ready", "Ready", "Applied"]
    assert summarize([ready, unchanged])[0].url == "http://tiny"
    assert summarize([ready, unchanged, updated])[0].content_hash == "sha256:b"


def test_rejections_are_the_dead_letters_in_order() -> None:
    def rejected(number: int, reason: str) -> DecodedEvent:
        data = {"original_id": f"e{number}", "subject": "stokehold.templates.tiny-demo.deployment.requested", "reason": reason}
        return DecodedEvent(
            id=f"r{number}",
            kind=EventKind.EVENT_REJECTED,
            source="/controller",
            time=datetime(2024, 1, 1, 0, number, tzinfo=UTC),
            content_hash=None,
            data=validate_data(EventKind.EVENT_REJECTED, data),
        )

    found = rejections([rejected(1, "first"), _event(2, EventKind.DEPLOYMENT_READY), rejected(3, "second")])

    assert [(row.original_id, row.reason, row.time.minute if row.time else None) for row in found] == [
        ("e1", "first", 1),
        ("e3", "second", 3),
    ]


def _adapter(number: int, status: str, replica: str = "r1", **data: Any) -> DecodedEvent:
    fields = {"adapter": "alpha", "adapter_version": 1, "replica": replica, "status": status, "version": 1}
    return _event(number, EventKind.ADAPTER_LOAD_STATUS, **(fields | data))


def test_adapters_show_requested_until_a_replica_reports_then_the_worst_replica() -> None:
    applied = _event(1, EventKind.DEPLOYMENT_APPLIED, action="created")
    requested = _adapter(2, "REQUESTED", replica="")

    assert summarize([applied, requested])[0].adapters == {"alpha@1": "REQUESTED 0/0"}
    rows = summarize([applied, requested, _adapter(3, "SUCCEEDED"), _adapter(4, "LOADING", replica="r2", report_every_s=30)])
    assert rows[0].adapters == {"alpha@1": "LOADING 1/2"}


def test_a_loading_the_replica_stopped_repeating_reads_as_failed_and_a_fresh_one_as_loading() -> None:
    applied = _event(1, EventKind.DEPLOYMENT_APPLIED, action="created")
    loading = _adapter(2, "LOADING", report_every_s=30)  # at 00:02
    done = _adapter(3, "SUCCEEDED", replica="r2")

    fresh = datetime(2024, 1, 1, 0, 3, tzinfo=UTC)  # 60 s later: two intervals
    silent = datetime(2024, 1, 1, 0, 4, 1, tzinfo=UTC)  # 121 s later: past three intervals
    assert summarize([applied, loading, done], now=fresh)[0].adapters == {"alpha@1": "LOADING 1/2"}
    assert summarize([applied, loading, done], now=silent)[0].adapters == {"alpha@1": "FAILED 1/2 (r1 stopped reporting mid-load)"}
    assert summarize([applied, loading, done])[0].adapters == {"alpha@1": "LOADING 1/2"}, "without a clock, as reported"
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert summarize([applied, loading, _adapter(4, "SUCCEEDED")], now=later)[0].adapters == {"alpha@1": "SUCCEEDED 1/1"}
