"""The latest known state of each deployment, folded from its status events, and the recent
rejections, from the dead letters (pure, no I/O).

`stokehold status` (also `kubectl stokehold status`) replays the status stream and the
newest dead letters and shows one row per deployment, then the events the controller
refused with its reason: a deployment it refused never reaches the first table.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from events.codec import DecodedEvent
from events.types import (
    AdapterLoadStatusData,
    DeploymentApplied,
    DeploymentFailed,
    DeploymentLoadStatus,
    DeploymentReady,
    EventRejected,
    LoadStatus,
    VersionLoadStatus,
)


class DeploymentSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    template: str
    version: int | None = None
    phase: str  # Applied, Loading, Loaded, Ready, Failed, Stopped, Deleted, Kept
    url: str | None = None
    reason: str | None = None
    load_status: LoadStatus | None = None
    updated: datetime | None = None
    event_id: str
    content_hash: str | None = None  # of the object the latest status event is about
    adapters: dict[str, str] = {}  # adapter → its load status on the replicas, e.g. "alpha@1": "SUCCEEDED 2/2"
    cache: str | None = None  # the version's weights in the model cache, e.g. "CACHED 16.4 GB in 170s" (template.version.load_status)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# A LOADING not repeated for this many of the replica's report intervals: the replica stopped reporting (it died mid-load)
STALE_INTERVALS = 3


class _Report(NamedTuple):
    status: LoadStatus
    time: datetime | None
    report_every_s: float | None

    def status_at(self, now: datetime | None) -> LoadStatus:
        if self.status is not LoadStatus.LOADING or now is None or self.time is None or self.report_every_s is None:
            return self.status
        stale = now - self.time > timedelta(seconds=STALE_INTERVALS * self.report_every_s)
        return LoadStatus.FAILED if stale else self.status


class Rejection(BaseModel):
    """One dead letter: which event the controller refused, and why."""

    model_config = ConfigDict(frozen=True)

    time: datetime | None = None
    original_id: str | None = None
    original_type: str | None = None
    subject: str
    reason: str
    stream_sequence: int | None = None


def rejections(events: Iterable[DecodedEvent]) -> list[Rejection]:
    """The `event.rejected` among `events`, in their order; other kinds are skipped."""
    return [
        Rejection(time=event.time, **event.data.model_dump(include=set(Rejection.model_fields)))
        for event in events
        if isinstance(event.data, EventRejected)
    ]


_APPLIED_PHASE = {"stopped": "Stopped", "deleted": "Deleted", "kept": "Kept"}


def summarize(events: Iterable[DecodedEvent], now: datetime | None = None) -> list[DeploymentSummary]:
    """One summary per (namespace, name), from events in stream order; other kinds are skipped.
    `now` (aware): a replica's LOADING that it stopped repeating well before it reads as FAILED."""
    latest: dict[tuple[str, str], DeploymentSummary] = {}
    replicas: dict[tuple[str, str], dict[str, dict[str, _Report]]] = {}  # deployment → adapter → replica → report
    caches: dict[tuple[str, int], str] = {}  # (template, version) → its model cache
    for event in events:
        data = event.data
        if isinstance(data, VersionLoadStatus):
            caches[(data.template, data.version)] = _cache_cell(data)
            continue
        if isinstance(data, AdapterLoadStatusData):
            by_adapter = replicas.setdefault((data.namespace, data.name), {})
            if data.replica:  # a replica serves one version of an adapter (the controller's REQUESTED names none)
                for other, statuses in by_adapter.items():
                    if other.partition("@")[0] == data.adapter:
                        statuses.pop(data.replica, None)
            report = _Report(data.status, event.time, data.report_every_s)
            by_adapter.setdefault(f"{data.adapter}@{data.adapter_version}", {})[data.replica] = report
            continue
        if not isinstance(data, DeploymentApplied | DeploymentReady | DeploymentFailed | DeploymentLoadStatus):
            continue
        key = (data.namespace, data.name)
        previous = latest.get(key)
        fields = {
            "namespace": data.namespace,
            "name": data.name,
            "template": data.template,
            "version": data.version if data.version is not None else (previous.version if previous else None),
            "updated": event.time,
            "event_id": event.id,
            "url": previous.url if previous else None,
            "load_status": previous.load_status if previous else None,
            "reason": None,
            "content_hash": data.content_hash or (previous.content_hash if previous else None),
        }
        if isinstance(data, DeploymentApplied) and data.action == "unchanged" and previous is not None:
            # an unchanged object is as it was: Ready stays Ready
            fields |= {"phase": previous.phase, "reason": data.note or previous.reason}
        elif isinstance(data, DeploymentApplied):
            fields["phase"] = _APPLIED_PHASE.get(data.action, "Applied")
            if data.action in _APPLIED_PHASE:
                fields["url"] = None
            fields["reason"] = data.note
        elif isinstance(data, DeploymentReady):
            fields |= {"phase": "Ready", "url": data.url}
        elif isinstance(data, DeploymentFailed):
            fields |= {"phase": "Failed", "reason": data.reason}
        else:
            fields["load_status"] = data.status
            fields["reason"] = data.reason
            fields["phase"] = _load_phase(data.status, previous)
        latest[key] = DeploymentSummary.model_validate(fields)
    for key, by_adapter in replicas.items():
        if key in latest:
            shown = {name: _adapter_cell(statuses, now) for name, statuses in sorted(by_adapter.items()) if statuses}
            latest[key] = latest[key].model_copy(update={"adapters": shown})
    for key, summary in latest.items():
        if summary.version is not None and (summary.template, summary.version) in caches:
            latest[key] = summary.model_copy(update={"cache": caches[(summary.template, summary.version)]})
    return [latest[key] for key in sorted(latest)]


def _cache_cell(data: VersionLoadStatus) -> str:
    """e.g. "DOWNLOADING", "CACHED 16.4 GB in 170s", "FAILED 2.1 GB: <reason>"."""
    cell = data.status.value
    if data.bytes:
        cell += f" {data.bytes / 1e9:.1f} GB"
    if data.seconds is not None and data.status is LoadStatus.CACHED:
        cell += f" in {data.seconds:.0f}s"
    if data.reason and data.status is LoadStatus.FAILED:
        cell += f": {data.reason}"
    return cell


def _adapter_cell(reports: dict[str, _Report], now: datetime | None) -> str:
    """The worst status across replicas, with how many replicas report it; REQUESTED until a replica reports."""
    on_replicas = {replica: report for replica, report in reports.items() if replica}
    if not on_replicas:
        return f"{LoadStatus.REQUESTED.value} 0/0"
    statuses = {replica: report.status_at(now) for replica, report in on_replicas.items()}
    order = [LoadStatus.FAILED, LoadStatus.LOADING, LoadStatus.REQUESTED, LoadStatus.SUCCEEDED]
    worst = min(statuses.values(), key=order.index)
    cell = f"{worst.value} {sum(1 for s in statuses.values() if s is worst)}/{len(statuses)}"
    silent = sorted(r for r, s in statuses.items() if s is LoadStatus.FAILED and on_replicas[r].status is LoadStatus.LOADING)
    return cell + (f" ({', '.join(silent)} stopped reporting mid-load)" if silent else "")


def _load_phase(status: LoadStatus, previous: DeploymentSummary | None) -> str:
    if status is LoadStatus.FAILED:
        return "Failed"
    if status is LoadStatus.SUCCEEDED:  # the weights are in place; readiness comes with deployment.ready
        return "Ready" if previous is not None and previous.phase == "Ready" else "Loaded"
    return "Loading"


__all__ = ["DeploymentSummary", "Rejection", "rejections", "summarize"]
