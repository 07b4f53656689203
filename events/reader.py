"""Read events back: follow subjects as events arrive, or replay the stream from its start.

Both yield `ReceivedEvent`s, which hold either the decoded event or the reason it could not
be decoded, so one bad message never stops a reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NotJSMessageError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from events.codec import DecodedEvent, EventDecodeError, decode
from events.types import STREAM_NAME, SUBJECT_ROOT, deadletter_subject, inbound_filter, status_filter


@dataclass(frozen=True)
class ReceivedEvent:
    subject: str
    event: DecodedEvent | None
    error: EventDecodeError | None = None
    sequence: int | None = None  # stream sequence, when read from the stream
    stored: datetime | None = None  # when JetStream stored it, when read from the stream


def received(msg: Msg) -> ReceivedEvent:
    sequence, stored = None, None
    if msg.reply:  # a JetStream consumer's message: its reply subject carries the metadata
        try:
            metadata = msg.metadata
            sequence, stored = metadata.sequence.stream, metadata.timestamp
        except (NotJSMessageError, ValueError, IndexError):
            pass
    try:
        return ReceivedEvent(msg.subject, decode(msg.headers, msg.data), None, sequence, stored)
    except EventDecodeError as exc:
        return ReceivedEvent(msg.subject, None, exc, sequence, stored)


def status_subjects(root: str = SUBJECT_ROOT, *, inbound: bool = False) -> list[str]:
    """What `stokehold events tail` follows: status events and dead letters (and inbound events)."""
    subjects = [status_filter(root), deadletter_subject(">", root)]
    return [*subjects, inbound_filter(root)] if inbound else subjects


async def follow(
    client: NatsClient,
    subjects: Sequence[str],
    *,
    count: int | None = None,
    stop_after: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> AsyncGenerator[ReceivedEvent, None]:
    """Events on `subjects` from now on: stops after `count` events or `stop_after` seconds, if given.

    `on_ready` is called once the server has the subscriptions: events published after it are seen.
    """
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        await queue.put(msg)

    subscriptions: list[Subscription] = [await client.subscribe(subject, cb=enqueue) for subject in subjects]
    await client.flush()
    if on_ready is not None:
        on_ready()
    deadline = None if stop_after is None else time.monotonic() + stop_after
    seen = 0
    try:
        while count is None or seen < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                return
            seen += 1
            yield received(msg)
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


async def replay(
    client: NatsClient,
    subject_filter: str | None = None,
    *,
    stream: str = STREAM_NAME,
    root: str = SUBJECT_ROOT,
    limit: int | None = None,
    idle_timeout: float = 5.0,
) -> AsyncGenerator[ReceivedEvent, None]:
    """Stored events on `subject_filter` (default: all), oldest first, up to `limit`; ends when caught up."""
    js = client.jetstream()
    subject_filter = subject_filter or f"{root}.>"
    try:
        info = await js.stream_info(stream, subjects_filter=subject_filter)
    except NotFoundError:
        return
    stored = sum((info.state.subjects or {}).values())
    wanted = stored if limit is None else min(limit, stored)
    if wanted <= 0:
        return
    subscription = await js.subscribe(subject_filter, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        for _ in range(wanted):
            try:
                msg = await subscription.next_msg(timeout=idle_timeout)
            except TimeoutError:
                return  # expired or deleted while we read
            event = received(msg)
            yield event
            if msg.metadata.num_pending == 0:
                return
    finally:
        await subscription.unsubscribe()


__all__ = ["ReceivedEvent", "follow", "received", "replay", "status_subjects"]
