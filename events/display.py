"""How the CLI shows events: one line per event for people, one JSON object per event for tools."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from events.codec import DecodedEvent
from events.reader import ReceivedEvent
from events.status_view import DeploymentSummary, Rejection
from events.types import (
    DeploymentApplied,
    DeploymentFailed,
    DeploymentLoadStatus,
    DeploymentReady,
    EventAccepted,
    EventRejected,
    TemplateVersionDeleted,
    TemplateVersionPublished,
)
from templates.tables import Cell

_STYLES = {"ready": "green", "failed": "red", "rejected": "red", "accepted": "cyan", "applied": "cyan", "load_status": "yellow"}
_PHASE_STYLES = {"Ready": "green", "Failed": "red", "Loading": "yellow", "Loaded": "yellow", "Stopped": "dim", "Deleted": "dim"}
STATUS_COLUMNS = ["NAMESPACE", "NAME", "TEMPLATE", "VERSION", "PHASE", "URL / REASON", "UPDATED"]
REJECTION_COLUMNS = ["TIME", "EVENT", "SUBJECT", "REASON"]


def describe(event: DecodedEvent) -> str:
    """What happened, in a few words (without the type)."""
    data = event.data
    if isinstance(data, TemplateVersionPublished):
        return f"{data.ref} {data.spec.source} ({event.content_hash})"
    if isinstance(data, TemplateVersionDeleted):
        return f"{data.template}@{data.version}"
    if isinstance(data, EventRejected):
        return f"{data.original_type or '?'} {data.original_id or '?'} on {data.subject}: {data.reason}"
    if isinstance(data, EventAccepted):
        answered = f"{data.original_type} {data.original_id} on {data.subject} #{data.stream_sequence}"
        return answered + (f" ({data.note})" if data.note else "")
    if isinstance(data, DeploymentApplied):
        return f"{_deployment(data)} {data.action}" + (f" ({data.note})" if data.note else "")
    if isinstance(data, DeploymentReady):
        return f"{_deployment(data)} ready at {data.url or '(no URL yet)'}"
    if isinstance(data, DeploymentFailed):
        return f"{_deployment(data)} failed: {data.reason}"
    if isinstance(data, DeploymentLoadStatus):
        return f"{_deployment(data)} load {data.status.value}" + (f": {data.reason}" if data.reason else "")
    # the inbound deployment events (and any kind added later): their fields, never an AttributeError
    fields = data.model_dump(exclude_none=True, exclude_defaults=True)
    key = getattr(data, "key", None)
    if isinstance(key, tuple) and len(key) == 2:
        rest = {name: value for name, value in fields.items() if name not in {"template", "namespace", "name", "version"}}
        return " ".join([_deployment(data, key[1]), *(f"{name}={value}" for name, value in rest.items())])
    return " ".join(f"{key}={value}" for key, value in fields.items())


def _deployment(data: Any, name: str | None = None) -> str:
    version = f"@{data.version}" if getattr(data, "version", None) is not None else ""
    return f"{data.namespace}/{name or data.name} ({data.template}{version})"


def event_line(item: ReceivedEvent) -> Text:
    prefix = f"{item.sequence:>6} " if item.sequence is not None else ""
    if item.event is None:
        reason = item.error.reason if item.error else "undecodable"
        return Text.assemble(prefix, ("undecodable ", "bold red"), f"on {item.subject}: {reason}")
    event = item.event
    moment = event.time or item.stored
    when = moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
    style = next((style for key, style in _STYLES.items() if key in event.kind.value), "white")
    return Text.assemble(prefix, (when, "dim"), " ", (event.kind.value, f"bold {style}"), " ", describe(event))


def event_record(item: ReceivedEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"subject": item.subject, "sequence": item.sequence}
    if item.event is None:
        error = item.error
        return record | {"error": error.reason if error else "undecodable", "id": error.event_id if error else None}
    event = item.event
    return record | {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time.isoformat() if event.time else None,
        "content_hash": event.content_hash,
        "mode": event.mode,
        "data": event.data.model_dump(mode="json", by_alias=True),
    }


def _moment(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def status_rows(summaries: list[DeploymentSummary]) -> list[list[Cell]]:
    return [
        [
            row.namespace,
            row.name,
            row.template,
            str(row.version) if row.version is not None else "latest",
            Text(row.phase, style=_PHASE_STYLES.get(row.phase, "cyan")),
            " ".join(filter(None, [row.url or row.reason, _adapters(row.adapters), f"cache: {row.cache}" if row.cache else ""])),
            _moment(row.updated),
        ]
        for row in summaries
    ]


def _adapters(adapters: dict[str, str]) -> str:
    return ("adapters: " + ", ".join(f"{name} {state}" for name, state in adapters.items())) if adapters else ""


def rejection_rows(rejections: list[Rejection]) -> list[list[Cell]]:
    return [
        [_moment(row.time), (row.original_type or "?").removeprefix("dev.stokehold."), row.subject, Text(row.reason, style="red")]
        for row in rejections
    ]


__all__ = ["REJECTION_COLUMNS", "STATUS_COLUMNS", "describe", "event_line", "event_record", "rejection_rows", "status_rows"]
