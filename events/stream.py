"""The JetStream stream that holds every stokehold event, provisioned idempotently.

One stream, `STOKEHOLD`, on file storage with limits-based retention: inbound events on
one subject per template (so JetStream keeps them in order per template), status events
and dead letters on their own subjects. The duplicate window makes a republished event
(same CloudEvent id = same `Nats-Msg-Id`) a no-op.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from events.codec import MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES
from events.types import STREAM_NAME, SUBJECT_ROOT, stream_subjects

DAY = 24 * 3600
# Fields the server refuses to change on an existing stream.
IMMUTABLE_FIELDS = frozenset({"storage", "retention"})


class StreamConfigMismatch(Exception):
    """The existing stream differs from the wanted one in a way that cannot be updated."""

    def __init__(self, stream: str, fields: dict[str, tuple[Any, Any]], detail: str | None = None) -> None:
        self.stream = stream
        self.fields = fields  # field -> (existing, wanted)
        differences = ", ".join(f"{name}: {have!r} (wanted {want!r})" for name, (have, want) in sorted(fields.items()))
        message = f"stream {stream} exists with a different configuration that cannot be updated: {differences or 'see detail'}"
        if detail:
            message += f" ({detail})"
        message += "; delete the stream or change the settings to match"
        super().__init__(message)


class ProvisionOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class ProvisionResult:
    outcome: ProvisionOutcome
    changed: dict[str, tuple[Any, Any]]  # field -> (before, after); empty unless updated


class StreamSettings(BaseModel):
    """What the stream should look like; the defaults suit a platform team's event volume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default=STREAM_NAME, pattern=r"^[A-Za-z0-9_-]+$")
    subject_root: str = Field(default=SUBJECT_ROOT, pattern=r"^[A-Za-z0-9_-]+$")
    storage: StorageType = StorageType.FILE
    # The controller rebuilds its desired state by replaying the stream, so an event older than
    # max_age is forgotten at its next restart: keep a year, more where templates live longer.
    max_age_seconds: float = Field(default=365 * DAY, gt=0)
    max_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)
    max_msg_size: int = Field(default=MAX_PAYLOAD_BYTES + MAX_HEADER_BYTES, ge=4096)
    duplicate_window_seconds: float = Field(default=120.0, gt=0)
    replicas: int = Field(default=1, ge=1, le=5)

    @property
    def subjects(self) -> list[str]:
        return stream_subjects(self.subject_root)

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description="stokehold events: templates, deployments, status, dead letters",
            subjects=self.subjects,
            retention=RetentionPolicy.LIMITS,
            storage=self.storage,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_seconds,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_size,
            max_msgs=-1,
            duplicate_window=self.duplicate_window_seconds,
            num_replicas=self.replicas,
        )


_COMPARED = (
    "subjects",
    "retention",
    "storage",
    "discard",
    "max_age",
    "max_bytes",
    "max_msg_size",
    "max_msgs",
    "duplicate_window",
    "num_replicas",
)


def config_differences(existing: StreamConfig, wanted: StreamConfig) -> dict[str, tuple[Any, Any]]:
    """Fields in which `existing` differs from `wanted` (pure)."""
    differences: dict[str, tuple[Any, Any]] = {}
    for name in _COMPARED:
        have, want = getattr(existing, name), getattr(wanted, name)
        if name == "subjects":
            same = sorted(have or []) == sorted(want or [])
        elif isinstance(want, float) or isinstance(have, float):
            same = have is not None and want is not None and math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-6)
        elif name == "num_replicas":
            same = (have or 1) == (want or 1)
        else:
            same = have == want
        if not same:
            differences[name] = (_plain(have), _plain(want))
    return differences


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


async def provision_stream(js: JetStreamContext, settings: StreamSettings | None = None) -> ProvisionResult:
    """Create the stream, update it to `settings`, or leave it alone when it already matches."""
    settings = settings or StreamSettings()
    wanted = settings.config()
    try:
        info = await js.stream_info(settings.name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
        except APIError as exc:
            raise StreamConfigMismatch(settings.name, {}, f"the server refused to create it: {exc.description}") from None
        return ProvisionResult(ProvisionOutcome.CREATED, {})

    differences = config_differences(info.config, wanted)
    if not differences:
        return ProvisionResult(ProvisionOutcome.UNCHANGED, {})
    immutable = {name: diff for name, diff in differences.items() if name in IMMUTABLE_FIELDS}
    if immutable:
        raise StreamConfigMismatch(settings.name, immutable)
    try:
        await js.update_stream(wanted)
    except APIError as exc:
        raise StreamConfigMismatch(settings.name, differences, f"the server refused the update: {exc.description}") from None
    return ProvisionResult(ProvisionOutcome.UPDATED, differences)


__all__ = [
    "ProvisionOutcome",
    "ProvisionResult",
    "StreamConfigMismatch",
    "StreamSettings",
    "config_differences",
    "provision_stream",
]
