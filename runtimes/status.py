"""Status events from the runtime on the bus (adapter loads, model-cache fills, replica starts).

Status is information: publishing is best-effort and bounded in time, a bus that cannot be
reached is logged and never stops a fill or a start. The bus is used only where the
controller rendered its address (`STOKEHOLD_NATS_URL`; credentials from the other
`STOKEHOLD_NATS_*` variables, read by `events.options.NatsOptions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from events.codec import encode
from events.options import NatsOptions
from events.types import SUBJECT_ROOT, EventKind, status_subject

logger = logging.getLogger("stokehold.runtime")

STATUS_SOURCE = "/stokehold/runtime"
ENV_NATS_URL = "STOKEHOLD_NATS_URL"
CONNECT_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 10.0


async def publish_status(js: Any, template: str, kind: EventKind, data: BaseModel, root: str = SUBJECT_ROOT) -> None:
    """One status event on the template's status subject (JetStream: the status stream stores it)."""
    headers, body = encode(kind, data, source=STATUS_SOURCE)
    await js.publish(status_subject(template, kind, root), body, headers=headers)


class StatusBus:
    """A connection that only publishes status; without options (no bus configured) every publish is a no-op."""

    def __init__(self, options: NatsOptions | None) -> None:
        self.options = options
        self._client: Any = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StatusBus:
        if not env.get(ENV_NATS_URL, "").strip():
            return cls(None)
        prefix = "STOKEHOLD_NATS_"
        try:  # from `env` (the process's, or a test's), not only from os.environ
            return cls(
                NatsOptions.model_validate({k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix) and v})
            )
        except ValueError as exc:  # a bad STOKEHOLD_NATS_* value: status is lost, the work goes on
            logger.warning("status not published: bad bus settings: %s", exc)
            return cls(None)

    async def __aenter__(self) -> StatusBus:
        if self.options is not None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    self._client = await self.options.connect()
            except Exception as exc:
                logger.warning("status not published: cannot reach the bus: %s: %s", type(exc).__name__, exc)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception as close_error:
                logger.debug("closing the status connection: %s", close_error)

    async def publish(self, template: str, kind: EventKind, data: BaseModel) -> None:
        if self._client is None:
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await publish_status(self._client.jetstream(), template, kind, data)
        except Exception as exc:
            logger.warning("could not publish %s for %s: %s", kind.value, template, exc)
