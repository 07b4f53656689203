"""Publish stokehold events to JetStream: validated first, then sent and acknowledged.

    async with await Publisher.connect(NatsOptions()) as publisher:
        await publisher.publish_version(version)
        await publisher.request_deployment("gemma-3-12b-it", namespace="llm", overrides={"min_replicas": 1})

One connection serves every publish; data that is already a validated model is not
validated again. Invalid data raises `EventDataError` (naming the field) before anything
is sent; a failed publish raises `PublishError`. Each publish is nats-py's
`JetStreamContext.publish` with the expected stream named, so a subject that another
stream captures is refused by the server instead of stored in the wrong place.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.errors import APIError, NoStreamResponseError
from pydantic import BaseModel

from events.codec import NATS_MSG_ID, Mode, encode, subject_for, template_of, validate_data
from events.options import NatsOptions
from events.types import (
    SOURCE_DEFAULT,
    STREAM_NAME,
    SUBJECT_ROOT,
    DeploymentOverrides,
    EventKind,
    stream_for,
)
from templates.schema import ModelTemplateVersion


class PublishError(RuntimeError):
    """JetStream did not store the event (no stream, no ack in time, or an API error)."""


# JetStream's error code for "expected stream does not match" (the Nats-Expected-Stream header)
_WRONG_STREAM = 10060


class PublishResult(NamedTuple):
    event_id: str
    kind: EventKind
    subject: str
    stream: str
    sequence: int
    duplicate: bool  # JetStream already held an event with this id (a retried publish): stored once


class Publisher:
    def __init__(
        self,
        client: NatsClient,
        *,
        source: str = SOURCE_DEFAULT,
        mode: Mode = "binary",
        stream: str = STREAM_NAME,  # the desired-state stream; status events and dead letters go to the streams named after it
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
        self._js = client.jetstream()

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
        stream = stream_for(kind, self.stream)
        try:
            ack = await self._js.publish(subject, payload, timeout=self.ack_timeout, stream=stream, headers=headers)
        except NoStreamResponseError:
            raise PublishError(f"no JetStream stream stores {subject}: run `stokehold stream provision` first") from None
        except APIError as exc:
            if exc.err_code == _WRONG_STREAM:
                raise PublishError(f"{subject} is stored by another stream than {stream}: check the streams' subjects") from None
            raise PublishError(f"JetStream refused the event on {subject}: {exc.description or exc}") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise PublishError(f"JetStream did not acknowledge the event on {subject} in time") from None
        except nats.errors.Error as exc:
            raise PublishError(f"publishing to {subject} failed: {exc}") from None
        except (ValueError, TypeError, KeyError, AttributeError):  # nats-py could not read the answer as an acknowledgement
            raise PublishError(f"{subject} was answered, but not by a JetStream stream (no acknowledgement)") from None
        return PublishResult(headers[NATS_MSG_ID], kind, subject, ack.stream, ack.seq, bool(ack.duplicate))

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
