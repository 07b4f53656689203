"""Follow the controller's answer to events one published (`stokehold deploy --wait` and friends).

The controller answers every inbound event it consumes: `event.accepted` once applied, or an
`event.rejected` dead letter with the reason; both carry the answered event's id. A
deployment's answer is preceded by its `deployment.applied`, and, when the service loads,
followed by `deployment.ready` or `deployment.failed` with the same content hash.

`Waiter` is the pure part: it is told which events to expect and fed every event seen on
their templates' status and dead-letter subjects; `answer_feed` subscribes to those subjects
(before anything is published, so no answer can be missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from events.codec import DecodedEvent
from events.status_view import DeploymentSummary
from events.types import (
    SUBJECT_ROOT,
    DeploymentApplied,
    DeploymentFailed,
    DeploymentReady,
    EventAccepted,
    EventRejected,
    deadletter_subject,
)

# what an applied deployment ends in without ever loading: nothing more to wait for
_NOTHING_TO_LOAD = frozenset({"stopped", "deleted", "kept"})


class Verdict(enum.StrEnum):
    APPLIED = "applied"  # accepted; for a deployment, written as its deployment.applied says
    READY = "ready"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self in (Verdict.APPLIED, Verdict.READY)


@dataclass
class Expected:
    """One published event whose answer is awaited."""

    event_id: str
    template: str
    key: tuple[str, str] | None = None  # (namespace, name) of a deployment event
    until_ready: bool = False
    applied: DeploymentApplied | None = None
    accepted: EventAccepted | None = None
    verdict: Verdict | None = None
    detail: str | None = None  # the reason, the URL or what was applied

    @property
    def awaits_load(self) -> bool:
        """Accepted, and now waiting for the service to be ready (or to fail)."""
        return self.verdict is None and self.accepted is not None


@dataclass
class Waiter:
    expected: list[Expected] = field(default_factory=list)

    def expect(self, event_id: str, template: str, key: tuple[str, str] | None = None, *, until_ready: bool = False) -> Expected:
        entry = Expected(event_id, template, key, until_ready)
        self.expected.append(entry)
        return entry

    @property
    def done(self) -> bool:
        return all(entry.verdict is not None for entry in self.expected)

    def feed(self, event: DecodedEvent) -> list[Expected]:
        """Take one event in; the entries that got their answer from it (or now await only their service)."""
        data = event.data
        changed = []
        for entry in self.expected:
            if entry.verdict is not None:
                continue
            if isinstance(data, EventRejected) and data.original_id == entry.event_id:
                entry.verdict, entry.detail = Verdict.REJECTED, data.reason
            elif isinstance(data, EventAccepted) and data.original_id == entry.event_id:
                entry.accepted = data
                if not entry.until_ready or (entry.applied is not None and entry.applied.action in _NOTHING_TO_LOAD):
                    entry.verdict, entry.detail = Verdict.APPLIED, _applied_text(entry, data)
            elif isinstance(data, DeploymentApplied) and self._concerns(entry, data):
                if entry.accepted is None:  # the applied that precedes this event's answer
                    entry.applied = data
            elif isinstance(data, DeploymentReady | DeploymentFailed) and entry.awaits_load and self._concerns(entry, data):
                if entry.applied is not None and data.content_hash not in (None, entry.applied.content_hash):
                    continue  # about an earlier object than the one this event wrote
                if isinstance(data, DeploymentReady):
                    entry.verdict, entry.detail = Verdict.READY, data.url or "(no URL yet)"
                else:
                    entry.verdict, entry.detail = Verdict.FAILED, data.reason
            else:
                continue
            changed.append(entry)
        return changed

    def settle_from(self, entry: Expected, summary: DeploymentSummary | None) -> None:
        """What the status stream already says of an accepted deployment: a service that was Ready, and is left unchanged,
        reports nothing new."""
        if not entry.awaits_load or summary is None:
            return
        same_object = entry.applied is None or summary.content_hash in (None, entry.applied.content_hash)
        if summary.phase == "Ready" and same_object:
            entry.verdict, entry.detail = Verdict.READY, summary.url or "(no URL yet)"
        elif summary.phase == "Failed" and same_object:
            entry.verdict, entry.detail = Verdict.FAILED, summary.reason or "failed"

    @staticmethod
    def _concerns(entry: Expected, data: DeploymentApplied | DeploymentReady | DeploymentFailed) -> bool:
        return entry.key == (data.namespace, data.name) and data.template == entry.template


def _applied_text(entry: Expected, accepted: EventAccepted) -> str:
    if entry.applied is not None:
        applied = entry.applied
        version = f"@{applied.version}" if applied.version is not None else ""
        text = f"{applied.namespace}/{applied.name} {applied.action} ({applied.template}{version})"
        return text + (f": {applied.note}" if applied.note else "")
    return accepted.note or "accepted by the controller"


def answer_subjects(templates: Iterable[str], root: str = SUBJECT_ROOT) -> list[str]:
    """Where the answers to events of `templates` arrive: their status subjects and dead letters."""
    names = sorted(set(templates))
    return [subject for name in names for subject in (f"{root}.status.{name}.>", deadletter_subject(name, root))]


@contextlib.asynccontextmanager
async def answer_feed(client: NatsClient, templates: Iterable[str], root: str = SUBJECT_ROOT) -> AsyncIterator[asyncio.Queue[Msg]]:
    """Messages on the answer subjects of `templates`, subscribed (and confirmed by the server) before the block runs."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        await queue.put(msg)

    subscriptions = [await client.subscribe(subject, cb=enqueue) for subject in answer_subjects(templates, root)]
    await client.flush()
    try:
        yield queue
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


__all__ = ["Expected", "Verdict", "Waiter", "answer_feed", "answer_subjects"]
