"""JetStream in: rebuild the desired state from the stream, then consume new events durably.

Each fetched batch is grouped by template (the subject's template token). Groups run
concurrently, the events of one group in stream order: every event is decoded and
reduced into the desired state, then the template is reconciled once for the whole
group. An event is acknowledged only after its template's objects were written (or
needed no write); on a transient sink failure it is nak'ed with a growing delay; an
event that can never succeed is terminated and published as `event.rejected` on the
dead-letter subject with the reason. Nothing here raises on bad input.

Poison ends: a dead letter is bounded (reason and echoed attributes clipped), so it
always fits the stream; an event whose handling fails is retried until its
`max_deliveries`-th delivery, which terminates it with a log line and
`stokehold_controller_gave_up` (a sink outage loses nothing by that: the event is in the
desired state already, and the controller retries the sink by itself). A rejected event
changed nothing, so it is also deleted from the desired-state stream: junk does not hold
the stream's capacity.

Order survives lost deliveries: fetches are sized in bytes, so the server does not cut the
controller off as a slow consumer; when deliveries are lost anyway (a gap in the durable
consumer's delivery sequence), the state is rebuilt from the stream in order before
anything more is handled, since the lost events come back only after their ack wait,
behind later ones of their templates. The same holds when handling a template's group fails
unexpectedly part-way: its events not yet reduced are retried, and the next batch rebuilds first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from controller.config import ControllerConfig
from controller.junk import JunkRemover
from controller.logs import clip
from controller.metrics import ControllerMetrics
from controller.reconciler import Reconciler, ReconcileResult
from controller.state import Change, DeploymentKey, DesiredState, InboundEvent, Rejected, adapters_requested
from events.codec import EventDecodeError, decode
from events.types import EventAccepted, EventKind, EventRejected, inbound_filter, template_of_subject, template_subject
from templates.naming import is_dns1123_label

log = logging.getLogger(__name__)

NO_TEMPLATE = "_"  # group of messages whose subject names no template
REBUILD_BATCH = 2048
FETCH_BYTES = 4 * 1024 * 1024  # what one fetch of the durable consumer should bring at most (see `batch_for`)
MIN_FETCH_BYTES = 64 * 1024  # halved down to this while deliveries are lost on the way (the server cuts a slow client)
FIRST_FETCH = 64
REBUILD_ATTEMPTS = 5
REBUILD_STALL_S = 120.0  # a rebuild that gets no event for this long, with events still pending, fails
BATCHES_IN_FLIGHT = 2
# What a dead letter echoes of the rejected event: enough to find and understand it, never its size.
MAX_REASON_CHARS = 2048
MAX_ECHO_CHARS = 256


class DeadLetters(Protocol):
    async def dead_letter(self, data: EventRejected, template: str | None) -> None:
        """Publish an `event.rejected` and wait until the stream stored it."""
        ...


@dataclass
class Delivery:
    """One fetched message and what became of it."""

    msg: Msg
    sequence: int
    deliveries: int
    template: str | None
    event_type: str | None = None
    event: InboundEvent | None = None
    change: Change | None = None

    @property
    def addressed(self) -> DeploymentKey | None:
        key = getattr(self.event.data, "key", None) if self.event is not None else None
        return key if isinstance(key, tuple) else None


class RebuildIncomplete(RuntimeError):
    """The stream could not be read to its end: the state would miss events, so it is not used."""


class InvalidEvent(Exception):
    def __init__(self, reason: str, event_id: str | None = None, event_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.event_id, self.event_type = reason, event_id, event_type


def to_inbound(subject: str, headers: Mapping[str, str] | None, payload: bytes, sequence: int, root: str) -> InboundEvent:
    """Decode and check one inbound message; raises `InvalidEvent` with the reason otherwise."""
    try:
        decoded = decode(headers, payload)
    except EventDecodeError as exc:
        raise InvalidEvent(exc.reason, exc.event_id, exc.event_type) from None
    kind: EventKind = decoded.kind
    if not kind.inbound:
        raise InvalidEvent(f"{kind.ce_type} is an outbound event type; the controller only consumes inbound ones", decoded.id, kind.ce_type)
    template = template_of_subject(subject, root)
    if template is None or subject != template_subject(template, kind, root):
        raise InvalidEvent(f"{kind.ce_type} does not belong on subject {subject!r}", decoded.id, kind.ce_type)
    return InboundEvent(kind=kind, data=decoded.data, event_id=decoded.id, sequence=sequence, subject_template=template)


class EventConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        config: ControllerConfig,
        state: DesiredState,
        reconciler: Reconciler,
        dead_letters: DeadLetters,
        metrics: ControllerMetrics,
        *,
        client: NatsClient | None = None,  # deletes rejected events from the desired-state stream; without it they stay
    ) -> None:
        self.js = js
        self.config = config
        self.state = state
        self.reconciler = reconciler
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._filter = inbound_filter(config.subject_root)
        self._limit = asyncio.Semaphore(config.concurrency)
        self._tails: dict[str, asyncio.Task[None]] = {}  # template → its latest group task, while one runs
        self._rebuilt = False
        self._reduced: set[int] = set()  # sequences reduced since the last rebuild and not settled yet
        self._last_delivery: int | None = None  # highest consumer sequence received
        self._resequence_needed = False  # deliveries were lost or events retried unreduced, and no rebuild has succeeded since
        self._unreduced: set[str] = set()  # templates with events retried unreduced since the last rebuild
        # events per fetch, fewer when they are large (`batch_for`); the first fetch is small, as their size is not known
        self._fetch_size = min(config.fetch_batch, FIRST_FETCH)
        self._fetch_bytes = FETCH_BYTES
        self._state_gate = asyncio.Lock()  # held while a rebuild replaces the state: no event is reduced meanwhile
        self.junk = JunkRemover(client, config.stream, config.retry_delay)

    # --------------------------------------------------------------- rebuild

    async def rebuild(self, into: DesiredState | None = None) -> int:
        """Reduce every inbound event after the state's high-water mark, up to the end of the stream.

        Reads with an ephemeral, unacknowledged consumer; returns the number of events read.
        `into`: another state to reduce into (a rebuild from scratch beside the live one).
        """
        state = self.state if into is None else into
        started = time.perf_counter()
        start = state.stream_position + 1
        sub = await self.js.pull_subscribe(
            self._filter,
            stream=self.config.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        read = 0
        loop = asyncio.get_running_loop()
        # the ephemeral consumer's delivery sequence, from 1: a gap is a delivery lost on the way, the first ones included
        last = 0
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            stalled_since = loop.time()
            batch = FIRST_FETCH  # until the size of the events is known
            while pending > 0:
                try:
                    msgs = await sub.fetch(min(batch, pending), timeout=5.0)
                except TimeoutError:  # nats-py raises both its own and asyncio's
                    # events deleted meanwhile (dead-lettered junk) are no longer pending; anything else is
                    # still to come: a state that misses events must never be used
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        pending = (await sub.consumer_info()).num_pending or 0
                    if pending and loop.time() - stalled_since > REBUILD_STALL_S:
                        raise RebuildIncomplete(f"the stream stopped delivering with {pending} events still to read") from None
                    continue
                stalled_since = loop.time()
                batch = batch_for(msgs, REBUILD_BATCH, self._fetch_bytes // 2)  # a rebuild reads while the consumer may be busy
                for msg in msgs:
                    metadata = msg.metadata
                    if metadata.sequence.consumer != last + 1:
                        raise RebuildIncomplete(f"{metadata.sequence.consumer - last - 1} events lost on the way while reading")
                    last = metadata.sequence.consumer
                    pending = metadata.num_pending
                    state.stream_position = max(state.stream_position, metadata.sequence.stream)
                    read += 1
                    # an invalid or rejected event is dead-lettered when the durable consumer delivers it
                    with contextlib.suppress(InvalidEvent, Rejected):
                        state.apply(to_inbound(msg.subject, msg.headers, msg.data, metadata.sequence.stream, self.config.subject_root))
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered is not None else 0
            if delivered != last:  # the last deliveries were lost: nothing came after them to show the gap
                raise RebuildIncomplete(f"{delivered - last} events lost on the way at the end of the stream")
        except nats.errors.Error as exc:  # e.g. cut off while reading
            raise RebuildIncomplete(f"reading the stream failed: {exc}") from exc
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()
        await self._forget_settled_rejections(state)
        if into is not None:
            return read
        elapsed = time.perf_counter() - started
        self.metrics.rebuild_seconds.set(elapsed)
        self._observe_state()
        first, self._rebuilt = not self._rebuilt, True
        log.log(
            logging.INFO if first or read else logging.DEBUG,  # "state rebuilt" once; a catch-up only when it read something
            "state rebuilt from the stream" if first else "state caught up with the stream",
            extra={
                "events": read,
                "seconds": round(elapsed, 3),
                "versions": len(self.state.versions),
                "deployments": len(self.state.deployments),
            },
        )
        return read

    async def rebuild_fully(self) -> int:
        """`rebuild`, read again from the start of the stream while a read is cut short (a state missing events is never used)."""
        for attempt in range(1, REBUILD_ATTEMPTS + 1):
            try:
                return await self.rebuild()
            except RebuildIncomplete as exc:
                if attempt == REBUILD_ATTEMPTS:
                    raise
                self._fetch_bytes = max(MIN_FETCH_BYTES, self._fetch_bytes // 2)
                log.warning("reading the stream was cut short (%s): reading it again from the start", exc)
                self.state.take(self.state.cleared())
                await asyncio.sleep(self.config.retry_delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _forget_settled_rejections(self, state: DesiredState) -> None:
        try:
            info = await self.js.consumer_info(self.config.stream, self.config.durable)
        except nats.js.errors.NotFoundError:
            return
        state.settled_through(info.ack_floor.stream_seq if info.ack_floor else 0)

    def _out_of_order(self, event: InboundEvent) -> bool:
        """A first delivery below its template's high-water mark: a later event of the template was reduced first.

        JetStream delivers a template's events in order, but a delivery can be lost on the way (a
        slow-consumer cut, a reconnect) and come back after its ack wait, when later ones were handled.
        Reducing it late would apply it out of order; skipping it as a redelivery would lose it.
        """
        sequence, template = event.sequence, event.subject_template
        if template is None or sequence <= self.state.stream_position or sequence > self.state.high_water.get(template, 0):
            return False
        return sequence not in self._reduced and sequence not in self.state.rejections

    async def _rebuild_in_order(self, event: InboundEvent) -> None:
        async with self._state_gate:
            if not self._out_of_order(event):
                return  # another rebuild took care of it
            log.warning(
                "an event of %s arrived after later ones (a delivery lost on the way): rebuilding the state from the stream",
                event.subject_template,
                extra={"stream_sequence": event.sequence},
            )
            await self._resequence()

    def _lost_deliveries(self, msgs: list[Msg]) -> int:
        """Deliveries of the durable consumer this process never received (gaps in the consumer's sequence).

        They come back after their ack wait, by then possibly behind later events of their template.
        """
        lost = 0
        for msg in msgs:
            delivered = msg.metadata.sequence.consumer
            if self._last_delivery is not None and delivered > self._last_delivery + 1:
                lost += delivered - self._last_delivery - 1
            self._last_delivery = max(delivered, self._last_delivery or 0)
        return lost

    async def _resequence(self) -> None:
        """Rebuild the state from the stream, in order, beside the live one; then swap it in (caller holds the gate).

        Every event up to the end of the stream is then reduced in stream order, lost deliveries
        included: when they come back they are redeliveries, and nothing was rejected for want of them.
        """
        fresh = self.state.cleared()
        await self.rebuild(into=fresh)
        self.state.take(fresh)
        self._reduced.clear()
        self._resequence_needed = False
        self._unreduced.clear()
        self.metrics.order_rebuilds.inc()

    # --------------------------------------------------------------- consume

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        await self.junk.probe()
        sub = await self.js.pull_subscribe(
            self._filter,
            durable=self.config.durable,
            stream=self.config.stream,
            config=ConsumerConfig(
                durable_name=self.config.durable,
                filter_subject=self._filter,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait_s,
                # not JetStream's max_deliver: it also counts deliveries that never reached the handler (an
                # expired ack wait, a slow-consumer drop) and would then drop a valid event unprocessed; the
                # limit is the controller's own, on attempts that failed (`_retry`)
                max_deliver=-1,
                max_ack_pending=max(1000, self.config.fetch_batch * 4),
            ),
        )
        # where the count of deliveries starts: the durable's deliveries so far (before this process, or this
        # leadership term), so that losing the very first deliveries of this subscription is a gap too
        try:
            info = await sub.consumer_info()
            self._last_delivery = info.delivered.consumer_seq if info.delivered is not None else 0
        except (nats.errors.Error, TimeoutError):
            self._last_delivery = None  # unknown: the first delivery received sets it
        return sub

    async def run(self, stop: asyncio.Event, sub: JetStreamContext.PullSubscription | None = None) -> None:
        """Fetch and handle batches until `stop` is set; the batches in hand are always finished.

        The next batch is fetched while the previous one is still being written (at most
        `BATCHES_IN_FLIGHT`), so decoding overlaps API calls; each template's group waits for
        that template's group of the previous batch, so its events stay in stream order.
        """
        sub = sub or await self.subscribe()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                if len(in_flight) >= BATCHES_IN_FLIGHT:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(self._fetch_size, timeout=self.config.fetch_timeout_s)
                except TimeoutError:  # nats-py raises both its own and asyncio's
                    self.metrics.consumer_pending.set(0)
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                    if stop.is_set():
                        break
                    raise
                except nats.errors.Error as exc:  # e.g. a reconnect in progress: try again shortly
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(self.config.fetch_timeout_s)
                    continue
                self._fetch_size = batch_for(msgs, self.config.fetch_batch, self._fetch_bytes)
                batch = asyncio.create_task(self.handle(msgs))
                in_flight.add(batch)
                batch.add_done_callback(in_flight.discard)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            await self.junk.finish()
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()

    async def handle(self, msgs: list[Msg]) -> None:
        """Handle one fetched batch: groups by template concurrently, each group in order."""
        lost = self._lost_deliveries(msgs)
        # fetch less while deliveries are lost (the server cuts a client that does not read fast enough), more again after
        self._fetch_bytes = max(MIN_FETCH_BYTES, self._fetch_bytes // 2) if lost else min(FETCH_BYTES, self._fetch_bytes * 5 // 4)
        if lost:
            log.warning("%d deliveries lost on the way (a slow-consumer cut, a reconnect): rebuilding the state from the stream", lost)
            self._resequence_needed = True
        if self._resequence_needed:
            try:
                async with self._state_gate:
                    if self._resequence_needed:
                        await self._resequence()
            except Exception as exc:  # e.g. cut off again while reading: these events wait for a rebuild that succeeds
                self._fetch_bytes = max(MIN_FETCH_BYTES, self._fetch_bytes // 2)
                log.warning("rebuilding the state failed, retrying the events later: %s", exc)
                for msg in msgs:
                    await self._settle(msg.nak(delay=self.config.retry_delay(msg.metadata.num_delivered)))
                return
        groups: dict[str, list[Delivery]] = defaultdict(list)
        for msg in msgs:
            metadata = msg.metadata
            template = template_of_subject(msg.subject, self.config.subject_root)
            valid_template = template if template and is_dns1123_label(template) else None
            groups[template or NO_TEMPLATE].append(Delivery(msg, metadata.sequence.stream, metadata.num_delivered, valid_template))
        if msgs:
            self.metrics.consumer_pending.set(msgs[-1].metadata.num_pending)
        started = time.perf_counter()
        tasks = []
        for template, deliveries in groups.items():
            task = asyncio.create_task(self._guarded(template, deliveries, after=self._tails.get(template)))
            self._tails[template] = task
            tasks.append(task)
        await asyncio.gather(*tasks)
        mine = set(tasks)
        for template in groups:
            if self._tails.get(template) in mine:
                del self._tails[template]  # no later batch queued behind it
        self._observe_state()
        elapsed = round(time.perf_counter() - started, 4)
        log.debug("handled a batch", extra={"events": len(msgs), "templates": len(groups), "seconds": elapsed})

    async def _guarded(self, template: str, deliveries: list[Delivery], after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait({after})  # the same template's previous group first (its outcome does not matter here)
        async with self._limit:
            try:
                await self._handle_group(template, deliveries)
            except Exception as exc:  # never let one template's bug stop the others: retry its events later
                if isinstance(exc, RebuildIncomplete | nats.errors.Error | TimeoutError):  # cut off while putting events in order
                    log.warning("cannot put the events of %s in order yet, retrying them: %s", template, exc)
                else:
                    log.exception("unexpected error while handling events of %s", template)
                # some of these were not reduced: no later event of the template before a rebuild has put them in order
                self._resequence_needed = True
                self._unreduced.add(template)
                for delivery in deliveries:
                    await self._retry(delivery, "error")

    async def _handle_group(self, template: str, deliveries: list[Delivery]) -> None:
        if template in self._unreduced:  # its previous group failed after this batch was fetched: the next batch rebuilds first
            for delivery in deliveries:
                await self._settle(delivery.msg.nak(delay=self.config.retry_delay(delivery.deliveries)))
            return
        accepted: list[Delivery] = []
        for delivery in deliveries:
            try:
                msg = delivery.msg
                delivery.event = to_inbound(msg.subject, msg.headers, msg.data, delivery.sequence, self.config.subject_root)
                delivery.event_type = delivery.event.kind.ce_type
                if self._out_of_order(delivery.event):
                    await self._rebuild_in_order(delivery.event)
                async with self._state_gate:
                    delivery.change = self.state.apply(delivery.event)
                if delivery.change is not Change.ALREADY_APPLIED:
                    self._reduced.add(delivery.sequence)
            except InvalidEvent as exc:
                delivery.event_type = exc.event_type
                await self._reject(delivery, exc.reason, exc.event_id, changed_nothing=True)
                continue
            except Rejected as exc:
                await self._reject(delivery, exc.reason, delivery.event.event_id if delivery.event else None, changed_nothing=True)
                continue
            accepted.append(delivery)
        if not accepted:
            return
        addressed = [d.addressed for d in accepted if d.addressed is not None and d.change is not Change.ALREADY_APPLIED]
        result = await self.reconciler.reconcile(template, addressed)
        await self._settle_group(accepted, result)

    async def _settle_group(self, accepted: list[Delivery], result: ReconcileResult) -> None:
        if result.transient is not None:
            log.warning("sink unavailable, retrying later: %s", result.transient, extra={"template": accepted[0].template})
            for delivery in accepted:
                await self._retry(delivery, "sink", result.transient.retry_after)
            return
        for delivery in accepted:
            key = delivery.addressed
            failure = result.failures.get(key) if key is not None else None
            if key is not None and failure is not None:
                await self._reject(delivery, f"cannot apply {key[0]}/{key[1]}: {failure}", None, changed_nothing=False)
                continue
            if await self._settle(delivery.msg.ack()):
                self._settled(delivery.sequence)
            outcome = "applied" if result.writes else "unchanged"
            self._count(delivery, "redelivered" if delivery.change is Change.ALREADY_APPLIED else outcome)
            await self._answer(delivery)
            if delivery.change is Change.CHANGED and delivery.event is not None:
                for status in adapters_requested(self.state, delivery.event.data):
                    await self.reconciler.reporter.report(EventKind.ADAPTER_LOAD_STATUS, status, status.template)

    async def _answer(self, delivery: Delivery) -> None:
        """Tell whoever published the event that it was applied (`event.accepted`, what `--wait` follows)."""
        event = delivery.event
        template = event.subject_template or delivery.template if event is not None else None
        if event is None or template is None:
            return
        note = {Change.UNCHANGED: "unchanged: the state already said so", Change.ALREADY_APPLIED: "redelivered: applied before"}
        accepted = EventAccepted(
            original_id=_echo(event.event_id) or "",
            original_type=event.kind.ce_type,
            subject=clip(delivery.msg.subject, MAX_ECHO_CHARS),
            stream_sequence=delivery.sequence,
            note=note.get(delivery.change) if delivery.change is not None else None,
        )
        await self.reconciler.reporter.report(EventKind.EVENT_ACCEPTED, accepted, template)

    async def _reject(self, delivery: Delivery, reason: str, event_id: str | None, *, changed_nothing: bool) -> None:
        """Dead-letter and terminate; `changed_nothing`: the event left the state as it was, so it is also deleted from the stream."""
        original_id = event_id or (delivery.event.event_id if delivery.event else None)
        rejected = EventRejected(
            original_id=_echo(original_id),
            original_type=_echo(delivery.event_type),
            subject=clip(delivery.msg.subject, MAX_ECHO_CHARS),
            reason=clip(reason, MAX_REASON_CHARS),
            stream_sequence=delivery.sequence,
        )
        log.warning("rejected event: %s", rejected.reason, extra={"subject": rejected.subject, "stream_sequence": delivery.sequence})
        try:
            await self.dead_letters.dead_letter(rejected, delivery.template)
        except Exception as exc:  # the dead letter is not stored: keep the event and try again later
            log.warning("cannot publish the dead letter: %s", exc, extra={"stream_sequence": delivery.sequence})
            await self._retry(delivery, "dead_letter")
            return
        if await self._settle(delivery.msg.term()):
            self._settled(delivery.sequence)
        self.metrics.dead_letters.inc()
        self._count(delivery, "rejected")
        if changed_nothing:
            self.junk.remove(delivery.sequence)

    async def _retry(self, delivery: Delivery, why: str, retry_after: float | None = None) -> None:
        """Nak for another delivery after a growing delay; on the last allowed delivery, terminate instead."""
        if delivery.deliveries >= self.config.max_deliveries:
            log.warning(
                "giving up on the event after %d deliveries (%s)",
                delivery.deliveries,
                why,
                extra={"subject": clip(delivery.msg.subject, MAX_ECHO_CHARS), "stream_sequence": delivery.sequence},
            )
            if await self._settle(delivery.msg.term()):
                self._settled(delivery.sequence)
            self.metrics.gave_up.labels(why).inc()
            self._count(delivery, "gave_up")
            return
        delay = max(self.config.retry_delay(delivery.deliveries), retry_after or 0.0)
        await self._settle(delivery.msg.nak(delay=delay))
        self._count(delivery, "retried")

    def _settled(self, sequence: int) -> None:
        self.state.settled(sequence)
        self._reduced.discard(sequence)

    async def _settle(self, acknowledgement: Awaitable[None]) -> bool:
        """Send an ack, nak or term; False when it could not be sent (the message comes back after its ack wait)."""
        try:
            await acknowledgement
        except nats.errors.Error as exc:  # e.g. disconnected: JetStream redelivers after ack_wait
            log.warning("cannot acknowledge: %s", exc)
            return False
        return True

    def _count(self, delivery: Delivery, outcome: str) -> None:
        self.metrics.events.labels(delivery.event_type or "unknown", outcome).inc()

    def _observe_state(self) -> None:
        self.metrics.versions.set(len(self.state.versions))
        self.metrics.deployments.set(len(self.state.deployments))
        self.metrics.unsettled_templates.set(len(self.reconciler.unsettled))


def batch_for(msgs: list[Msg], most: int, budget: int = FETCH_BYTES) -> int:
    """How many events to fetch next, so that a batch of events the size of these stays near `budget` bytes.

    A fetch of `most` events near the 1 MiB cap is a gigabyte: more than the server lets a client
    queue (it cuts a slow consumer off, and the deliveries in transit are lost until their ack wait)
    and more than the controller's memory.
    """
    if not msgs:
        return most
    size = sum(len(msg.data) + sum(len(k) + len(v) for k, v in (msg.headers or {}).items()) for msg in msgs)
    return max(1, min(most, budget * len(msgs) // max(1, size)))


def _echo(value: str | None) -> str | None:
    return None if value is None else clip(value, MAX_ECHO_CHARS)
