"""The contract every sink fulfils, and the errors that tell the consumer what to do next."""

from __future__ import annotations

import enum
from typing import Protocol

from controller.labels import Object


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
