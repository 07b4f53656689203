"""Read events back: follow subjects as events arrive, or replay the streams from their start.

Both yield `ReceivedEvent`s, which hold either the decoded event or the reason it could not
be decoded, so one bad message never stops a reader. A replay of a stream that does not
exist raises `StreamMissingError` (nothing stored and nothing provisioned are not the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NotJSMessageError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from events.codec import DecodedEvent, EventDecodeError, decode
from events.types import (
    STREAM_NAME,
    SUBJECT_ROOT,
    StreamRole,
    deadletter_subject,
    inbound_filter,
    role_of_subject,
    status_filter,
    stream_name,
)


class StreamMissingError(LookupError):
    """The stream to read does not exist (yet); the message is one line meant for people."""

    def __init__(self, streams: Sequence[str]) -> None:
        self.streams = list(streams)
        names = " and ".join([", ".join(self.streams[:-1]), self.streams[-1]] if len(self.streams) > 1 else self.streams)
        super().__init__(f"the stream {names} does not exist" if len(self.streams) == 1 else f"the streams {names} do not exist")

    def __str__(self) -> str:
        return f"{self.args[0]}: run `stokehold stream provision` (or start the controller, which creates it)"


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
    stream: str | None = None,
    root: str = SUBJECT_ROOT,
    base: str = STREAM_NAME,
    limit: int | None = None,
    last: int | None = None,
    idle_timeout: float = 5.0,
) -> AsyncGenerator[ReceivedEvent, None]:
    """Stored events on `subject_filter` (default: all), oldest first, up to `limit`; ends when caught up.

    Without `stream`, the filter picks the stream (desired state, status or dead letters); a
    filter that spans them, or none, reads the three streams one after the other, skipping
    those that do not exist. `StreamMissingError` when none of the streams read exists.
    `last`: only the newest `last` events of each stream (all on the filter's subjects).
    """
    subject_filter = subject_filter or f"{root}.>"
    if stream is not None:
        streams = [stream]
    else:
        role = role_of_subject(subject_filter, root)
        streams = [stream_name(role, base)] if role is not None else [stream_name(each, base) for each in StreamRole]
    remaining = limit
    missing = []
    for name in streams:
        if remaining is not None and remaining <= 0:
            return
        try:
            info = await client.jetstream().stream_info(name, subjects_filter=subject_filter)
        except NotFoundError:
            missing.append(name)
            continue
        stored = sum((info.state.subjects or {}).values())
        start = None if last is None else max(info.state.first_seq, info.state.last_seq - last + 1)
        wanted = stored if last is None else min(last, stored)
        wanted = wanted if remaining is None else min(remaining, wanted)
        async with contextlib.aclosing(_replay_stream(client, name, subject_filter, wanted, start, idle_timeout)) as events:
            async for event in events:
                yield event
                if remaining is not None:
                    remaining -= 1
    if len(missing) == len(streams):
        raise StreamMissingError(missing)


async def _replay_stream(
    client: NatsClient, stream: str, subject_filter: str, wanted: int, start: int | None, idle_timeout: float
) -> AsyncGenerator[ReceivedEvent, None]:
    """Up to `wanted` events of one stream, from its start or from sequence `start`."""
    if wanted <= 0:
        return
    js = client.jetstream()
    if start is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    subscription = await js.subscribe(subject_filter, stream=stream, ordered_consumer=True, config=config)
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


__all__ = ["ReceivedEvent", "StreamMissingError", "follow", "received", "replay", "status_subjects"]
