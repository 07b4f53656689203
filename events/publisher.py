"""Publish stokehold events to JetStream: validated first, then sent and acknowledged.

    async with await Publisher.connect(NatsOptions()) as publisher:
        await publisher.publish_version(version)
        await publisher.request_deployment("gemma-7b-it", namespace="llm", overrides={"min_replicas": 1})

One connection serves every publish; data that is already a validated model is not
validated again. Invalid data raises `EventDataError` (naming the field) before anything
is sent; a failed publish raises `PublishError`.

A JetStream publish is a NATS request to the event's subject that the stream answers with a
JSON acknowledgement (`{"stream": ..., "seq": ..., "duplicate": ...}` or `{"error": ...}`).
The publisher makes that request itself rather than through nats-py's
`JetStreamContext.publish`: same protocol and errors, without a wrapper whose acknowledgement
dataclass cost more than our own encoding (a publish's client-side work runs with the
processor's caches cold from the wait for the previous acknowledgement, so every step counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.errors import APIError
from pydantic import BaseModel

from events.codec import NATS_MSG_ID, Mode, encode, subject_for, template_of, validate_data
from events.options import NatsOptions
from events.types import (
    SOURCE_DEFAULT,
    STREAM_NAME,
    SUBJECT_ROOT,
    DeploymentOverrides,
    EventKind,
)
from templates.schema import ModelTemplateVersion


class PublishError(RuntimeError):
    """JetStream did not store the event (no stream, no ack in time, or an API error)."""


class PublishResult(NamedTuple):
    event_id: str
    kind: EventKind
    subject: str
    stream: str
    sequence: int
    duplicate: bool  # JetStream already held an event with this id: stored once


class Publisher:
    def __init__(
        self,
        client: NatsClient,
        *,
        source: str = SOURCE_DEFAULT,
        mode: Mode = "binary",
        stream: str = STREAM_NAME,
        subject_root: str = SUBJECT_ROOT,
        ack_timeout: float = 5.0,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.source = source
        self.mode: Mode = mode
        self.stream = stream
        self.subject_root = subject_root
        self.ack_timeout = ack_timeout
        self._owns_client = owns_client

    @classmethod
    async def connect(cls, options: NatsOptions | None = None, **settings: Any) -> Publisher:
        """Connect with `options` (default: from the environment); the publisher closes the connection."""
        client = await (options or NatsOptions()).connect()
        return cls(client, owns_client=True, **settings)

    async def close(self) -> None:
        if self._owns_client and not self.client.is_closed:
            await self.client.drain()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ generic

    async def publish(self, kind: EventKind, data: BaseModel | Mapping[str, Any], *, event_id: str | None = None) -> PublishResult:
        """Validate, encode and publish one event; returns once JetStream has stored it."""
        model = validate_data(kind, data)
        template = template_of(kind, model)
        subject = subject_for(kind, template, self.subject_root)
        headers, payload = encode(kind, model, source=self.source, subject_template=template, event_id=event_id, mode=self.mode)
        try:
            reply = await self.client.request(subject, payload, timeout=self.ack_timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise PublishError(f"no JetStream stream stores {subject}: run `stokehold stream provision` first") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise PublishError(f"JetStream did not acknowledge the event on {subject} in time") from None
        except nats.errors.Error as exc:
            raise PublishError(f"publishing to {subject} failed: {exc}") from None
        stream, sequence, duplicate = _acknowledgement(subject, reply.data)
        if stream != self.stream:  # checked after the fact: an expected-stream header costs every publish
            raise PublishError(f"{subject} is stored by stream {stream}, not {self.stream}: check the streams' subjects")
        return PublishResult(headers[NATS_MSG_ID], kind, subject, stream, sequence, duplicate)

    # ----------------------------------------------------------------- inbound

    async def publish_version(self, version: ModelTemplateVersion | Mapping[str, Any], *, event_id: str | None = None) -> PublishResult:
        return await self.publish(EventKind.VERSION_PUBLISHED, version, event_id=event_id)

    async def delete_version(self, template: str, version: int, *, event_id: str | None = None) -> PublishResult:
        return await self.publish(EventKind.VERSION_DELETED, {"template": template, "version": version}, event_id=event_id)

    async def request_deployment(
        self,
        template: str,
        *,
        version: int | None = None,
        namespace: str = "default",
        name: str | None = None,
        overrides: DeploymentOverrides | Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> PublishResult:
        """The one-click deploy: `template` at `version` (None: its latest, following new versions)."""
        data: dict[str, Any] = {"template": template, "namespace": namespace}
        if version is not None:
            data["version"] = version
        if name is not None:
            data["name"] = name
        if overrides is not None:
            data["overrides"] = overrides.model_dump(exclude_none=True) if isinstance(overrides, BaseModel) else dict(overrides)
        return await self.publish(EventKind.DEPLOYMENT_REQUESTED, data, event_id=event_id)

    async def delete_deployment(
        self, template: str, *, namespace: str = "default", name: str | None = None, event_id: str | None = None
    ) -> PublishResult:
        return await self._deployment_event(EventKind.DEPLOYMENT_DELETED, template, namespace, name, event_id)

    async def stop_deployment(
        self, template: str, *, namespace: str = "default", name: str | None = None, event_id: str | None = None
    ) -> PublishResult:
        """Stop serving without deleting (KServe's stop annotation); `resume_deployment` undoes it."""
        return await self._deployment_event(EventKind.DEPLOYMENT_STOPPED, template, namespace, name, event_id)

    async def resume_deployment(
        self, template: str, *, namespace: str = "default", name: str | None = None, event_id: str | None = None
    ) -> PublishResult:
        return await self._deployment_event(EventKind.DEPLOYMENT_RESUMED, template, namespace, name, event_id)

    async def _deployment_event(
        self, kind: EventKind, template: str, namespace: str, name: str | None, event_id: str | None
    ) -> PublishResult:
        data = (
            {"template": template, "namespace": namespace} if name is None else {"template": template, "namespace": namespace, "name": name}
        )
        return await self.publish(kind, data, event_id=event_id)


def _acknowledgement(subject: str, data: bytes) -> tuple[str, int, bool]:
    """(stream, sequence, duplicate) from JetStream's answer to a publish; its errors become `PublishError`s."""
    try:
        ack = msgspec.json.decode(data)  # a tenth of what `json.loads` costs, which counts on every publish
    except msgspec.DecodeError:
        ack = None
    if not isinstance(ack, dict):
        raise PublishError(f"{subject} was answered, but not by a JetStream stream (no acknowledgement)")
    error = ack.get("error")
    if error is not None:
        try:
            APIError.from_error(error)  # raises nats-py's error for it, as `JetStreamContext.publish` would
        except APIError as exc:
            raise PublishError(f"JetStream refused the event on {subject}: {exc.description or exc}") from None
        except (KeyError, TypeError):
            raise PublishError(f"JetStream refused the event on {subject}: {error}") from None
    stream, sequence = ack.get("stream"), ack.get("seq")
    if not isinstance(stream, str) or not isinstance(sequence, int):
        raise PublishError(f"{subject} was answered, but not by a JetStream stream (no acknowledgement)")
    return stream, sequence, bool(ack.get("duplicate"))


async def publish(
    kind: EventKind,
    data: BaseModel | Mapping[str, Any],
    *,
    options: NatsOptions | None = None,
    event_id: str | None = None,
    **settings: Any,
) -> PublishResult:
    """Connect, publish one event and disconnect. For more than one event, keep a `Publisher`."""
    model = validate_data(kind, data)  # refuse bad data before connecting
    async with await Publisher.connect(options, **settings) as publisher:
        return await publisher.publish(kind, model, event_id=event_id)


__all__ = ["PublishError", "PublishResult", "Publisher", "publish"]
