"""JetStream out: status events (`stokehold.status.<template>.<kind>`) and dead letters.

Status events are published in the background — each is still confirmed by the stream,
and a failure is logged and counted — so a burst of writes is not slowed by one round
trip per status. Dead letters wait for the stream's acknowledgement, because the
rejected event is terminated only after its dead letter is stored.

Event ids are a random prefix chosen once per controller instance plus a counter:
unique, and free of the per-event random-number syscall that shows up in profiles.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid

from nats.js import JetStreamContext
from pydantic import BaseModel

from controller.metrics import ControllerMetrics
from events.codec import encode
from events.types import EventKind, EventRejected, deadletter_subject, status_subject

log = logging.getLogger(__name__)


class NatsPublisher:
    def __init__(self, js: JetStreamContext, source: str, subject_root: str, metrics: ControllerMetrics) -> None:
        self.js = js
        self.source = source
        self.subject_root = subject_root
        self.metrics = metrics
        self._id_prefix = f"{source.strip('/').replace('/', '.') or 'controller'}.{uuid.uuid4().hex[:16]}"
        self._counter = itertools.count(1)
        self._in_flight: set[asyncio.Task[None]] = set()

    def next_event_id(self) -> str:
        return f"{self._id_prefix}.{next(self._counter)}"

    async def report(self, kind: EventKind, data: BaseModel, template: str) -> None:
        """Publish a status event; a failure is logged and counted, never raised (status is informational)."""
        try:
            headers, payload = encode(kind, data, source=self.source, subject_template=template, event_id=self.next_event_id())
        except Exception as exc:
            self._failed(kind, template, exc)
            return
        # tasks start in creation order, so status events of one deployment reach the stream in order
        task = asyncio.create_task(self._publish(status_subject(template, kind, self.subject_root), headers, payload, kind, template))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _publish(self, subject: str, headers: dict[str, str], payload: bytes, kind: EventKind, template: str) -> None:
        try:
            await self.js.publish(subject, payload, headers=headers)
        except Exception as exc:
            self._failed(kind, template, exc)

    def _failed(self, kind: EventKind, template: str, exc: Exception) -> None:
        self.metrics.status_publish_failures.inc()
        log.warning("status event %s for %s not stored: %s", kind.ce_type, template, exc)

    async def dead_letter(self, data: EventRejected, template: str | None) -> None:
        kind = EventKind.EVENT_REJECTED
        headers, payload = encode(kind, data, source=self.source, subject_template=template, event_id=self.next_event_id())
        await self.js.publish(deadletter_subject(template, self.subject_root), payload, headers=headers)

    async def flush(self, wait_s: float = 5.0) -> None:
        """Wait until the stream confirmed every status event published so far."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=wait_s)
        if pending:
            log.warning("%d status events still unconfirmed after %.1f s", len(pending), wait_s)
