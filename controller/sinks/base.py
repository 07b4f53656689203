"""The contract every sink fulfils, and the errors that tell the consumer what to do next."""

from __future__ import annotations

import enum
from typing import Any, Protocol

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "stokehold"
TEMPLATE_LABEL = "stokehold.dev/template"
VERSION_LABEL = "stokehold.dev/version"
HASH_ANNOTATION = "stokehold.dev/content-hash"
SOURCE_EVENT_ANNOTATION = "stokehold.dev/source-event-id"
STOP_ANNOTATION = "serving.kserve.io/stop"

Object = dict[str, Any]


class ApplyAction(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class SinkError(Exception):
    """A write failed. `transient` errors are retried (nak with backoff); others dead-letter."""

    transient: bool = False


class TransientSinkError(SinkError):
    """API 5xx, 429, timeouts, connection errors, 409 conflicts: retry later."""

    transient = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """The object can never be written as is (e.g. 422 invalid, 403 forbidden)."""


class NotManagedError(PermanentSinkError):
    """An object of that name exists but is not labelled as managed by stokehold: never touch it."""


class Sink(Protocol):
    async def apply(self, isvc: Object) -> ApplyAction:
        """Create or update so the live object matches `isvc`; UNCHANGED when the content hash already matches."""
        ...

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete a managed object; False when it did not exist."""
        ...

    async def get(self, namespace: str, name: str) -> Object | None: ...

    async def list_managed(self) -> list[Object]:
        """Every object labelled managed-by=stokehold (all namespaces the sink covers)."""
        ...

    async def close(self) -> None: ...


def is_managed(obj: Object) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE)


def content_hash_of(obj: Object) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(HASH_ANNOTATION)
    return str(value) if value is not None else None
