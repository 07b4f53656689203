"""JetStream out: status events (`stokehold.status.<template>.<kind>`) and dead letters.

Status events are published in the background — each is still confirmed by the stream,
and a failure is logged and counted — so a burst of writes is not slowed by one round
trip per status. Dead letters wait for the stream's acknowledgement, because the
rejected event is terminated only after its dead letter is stored.

Every event gets a random id (`events.codec.encode`), so nobody who sees one status event
can compute the next and claim it first in the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from pydantic import BaseModel

from controller.metrics import ControllerMetrics
from events.codec import NATS_MSG_ID, encode
from events.types import EventKind, EventRejected, deadletter_subject, status_subject

log = logging.getLogger(__name__)


class NotStoredError(RuntimeError):
    """JetStream acknowledged an event as a duplicate of one it already held, so did not store it."""


class NatsPublisher:
    def __init__(self, js: JetStreamContext, source: str, subject_root: str, metrics: ControllerMetrics) -> None:
        self.js = js
        self.source = source
        self.subject_root = subject_root
        self.metrics = metrics
        self._in_flight: set[asyncio.Task[None]] = set()

    async def report(self, kind: EventKind, data: BaseModel, template: str) -> None:
        """Publish a status event; a failure is logged and counted, never raised (status is informational)."""
        try:
            headers, payload = encode(kind, data, source=self.source, subject_template=template)
        except Exception as exc:
            self._failed(kind, template, exc)
            return
        # tasks start in creation order, so status events of one deployment reach the stream in order
        task = asyncio.create_task(self._publish(status_subject(template, kind, self.subject_root), headers, payload, kind, template))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _publish(self, subject: str, headers: dict[str, str], payload: bytes, kind: EventKind, template: str) -> None:
        try:
            ack = await self.js.publish(subject, payload, headers=headers)
        except Exception as exc:
            self._failed(kind, template, exc)
            return
        if ack.duplicate:  # another event already holds this id: this one was not stored
            self._failed(kind, template, NotStoredError(f"the stream already held an event with id {headers[NATS_MSG_ID]}"))

    def _failed(self, kind: EventKind, template: str, exc: Exception) -> None:
        self.metrics.status_publish_failures.inc()
        log.warning("status event %s for %s not stored: %s", kind.ce_type, template, exc)

    async def dead_letter(self, data: EventRejected, template: str | None) -> None:
        kind = EventKind.EVENT_REJECTED
        headers, payload = encode(kind, data, source=self.source, subject_template=template)
        ack = await self.js.publish(deadletter_subject(template, self.subject_root), payload, headers=headers)
        if ack.duplicate:  # raised, so the rejected event is retried (with a new id) rather than ended without its dead letter
            raise NotStoredError(f"the stream already held an event with id {headers[NATS_MSG_ID]}: the dead letter was not stored")

    async def flush(self, wait_s: float = 5.0) -> None:
        """Wait until the stream confirmed every status event published so far."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=wait_s)
        if pending:
            log.warning("%d status events still unconfirmed after %.1f s", len(pending), wait_s)
