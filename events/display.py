"""How the CLI shows events: one line per event for people, one JSON object per event for tools."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from events.codec import DecodedEvent
from events.reader import ReceivedEvent
from events.status_view import DeploymentSummary
from events.types import (
    DeploymentApplied,
    DeploymentFailed,
    DeploymentLoadStatus,
    DeploymentReady,
    EventRejected,
    TemplateVersionPublished,
)

_STYLES = {"ready": "green", "failed": "red", "rejected": "red", "applied": "cyan", "load_status": "yellow"}
_PHASE_STYLES = {"Ready": "green", "Failed": "red", "Loading": "yellow", "Loaded": "yellow", "Stopped": "dim", "Deleted": "dim"}


def describe(event: DecodedEvent) -> str:
    """What happened, in a few words (without the type)."""
    data = event.data
    if isinstance(data, TemplateVersionPublished):
        return f"{data.ref} {data.spec.source} ({event.content_hash})"
    if isinstance(data, EventRejected):
        return f"{data.original_type or '?'} {data.original_id or '?'} on {data.subject}: {data.reason}"
    where = _deployment(data)
    if isinstance(data, DeploymentApplied):
        return f"{where} {data.action}" + (f" ({data.note})" if data.note else "")
    if isinstance(data, DeploymentReady):
        return f"{where} ready at {data.url or '(no URL yet)'}"
    if isinstance(data, DeploymentFailed):
        return f"{where} failed: {data.reason}"
    if isinstance(data, DeploymentLoadStatus):
        return f"{where} load {data.status.value}" + (f": {data.reason}" if data.reason else "")
    fields = data.model_dump(exclude_none=True, exclude_defaults=True)
    return " ".join(f"{key}={value}" for key, value in fields.items())


def _deployment(data: Any) -> str:
    version = f"@{data.version}" if getattr(data, "version", None) is not None else ""
    return f"{data.namespace}/{data.name} ({data.template}{version})"


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


def status_table(summaries: list[DeploymentSummary]) -> Table:
    table = Table(title="stokehold deployments", title_justify="left")
    for column in ("NAMESPACE", "NAME", "TEMPLATE", "VERSION", "PHASE", "URL / REASON", "UPDATED"):
        table.add_column(column, overflow="fold")
    for row in summaries:
        table.add_row(
            row.namespace,
            row.name,
            row.template,
            str(row.version) if row.version is not None else "latest",
            Text(row.phase, style=_PHASE_STYLES.get(row.phase, "cyan")),
            row.url or row.reason or "",
            row.updated.strftime("%Y-%m-%d %H:%M:%S") if row.updated else "",
        )
    return table


__all__ = ["describe", "event_line", "event_record", "status_table"]
