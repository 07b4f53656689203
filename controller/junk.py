"""Deleting rejected events from the desired-state stream, in the background (best effort).

A dead-lettered inbound event changed nothing, so keeping it only holds capacity of a stream
that refuses new events when full. Deletes run beside the consumer, a few at a time, retried
through a busy server or a reconnect; a controller without the permission
(`$JS.API.STREAM.MSG.DELETE.<stream>`) says so once and leaves the junk where it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from events.stream import delete_message

log = logging.getLogger(__name__)

DELETE_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0
IN_FLIGHT = 16
ATTEMPTS = 5


class JunkRemover:
    def __init__(self, client: NatsClient | None, stream: str, retry_delay: Callable[[int], float]) -> None:
        self.client = client  # None: nothing is deleted
        self.stream = stream
        self.retry_delay = retry_delay
        self.allowed = client is not None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(IN_FLIGHT)

    async def probe(self) -> None:
        """Whether the controller may delete: the server answers a delete of sequence 0 with an error when it
        may; without the permission the request goes unanswered."""
        if self.client is None:
            return
        try:
            await delete_message(self.client, self.stream, 0, wait_s=PROBE_TIMEOUT_S)
        except nats.js.errors.APIError:
            self.allowed = True
        except (nats.errors.Error, TimeoutError):
            self.allowed = False
            log.warning(
                "cannot delete rejected events from the stream %s: they stay and hold its capacity; "
                "grant the controller $JS.API.STREAM.MSG.DELETE.%s",
                self.stream,
                self.stream,
            )

    def remove(self, sequence: int) -> None:
        """Delete the event at `sequence`, in the background."""
        if self.client is None or not self.allowed:
            return
        task = asyncio.create_task(self._remove(self.client, sequence))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self) -> None:
        """Wait a little for the deletes in flight (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=DELETE_TIMEOUT_S)

    async def _remove(self, client: NatsClient, sequence: int) -> None:
        async with self._slots:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    await delete_message(client, self.stream, sequence, wait_s=DELETE_TIMEOUT_S)
                    return
                except nats.js.errors.APIError as exc:  # answered: e.g. already gone
                    log.debug("rejected event not deleted from the stream: %s", exc, extra={"stream_sequence": sequence})
                    return
                except (nats.errors.Error, TimeoutError) as exc:  # e.g. a reconnect, a busy server: try again
                    if attempt == ATTEMPTS:
                        reason = str(exc) or type(exc).__name__
                        log.warning("cannot delete the rejected event from the stream: %s", reason, extra={"stream_sequence": sequence})
                        return
                await asyncio.sleep(self.retry_delay(attempt))
