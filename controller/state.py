"""Desired state as a pure reducer over inbound events (no I/O).

The state is rebuilt on start by replaying the stream from its first message and
then kept up to date event by event, so it needs no database of its own:

- a registry of template versions (immutable: a number is never reused with other
  content, and a deleted number is never reused at all);
- deployments keyed by (namespace, name), each pinned to a version or following the
  template's latest, with a stopped flag and the stream sequence that last changed it.

`DesiredState.apply()` returns the template whose InferenceServices must be
reconciled, or raises `Rejected` for an event that can never succeed. Every event is
reduced exactly once: events of one template (one subject) are first delivered in
stream order, so a message whose stream sequence is at or below its template's
high-water mark is a redelivery and changes nothing. Redelivery, duplicates and
reordering after a nak therefore cannot regress state, while different templates
may be handled concurrently.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pydantic import BaseModel, ValidationError

from events.types import (
    DeploymentDeleted,
    DeploymentOverrides,
    DeploymentRequested,
    DeploymentResumed,
    DeploymentStopped,
    EventKind,
    TemplateVersionDeleted,
    TemplateVersionPublished,
)
from templates.registry import AddOutcome, ImmutableVersionError, VersionRegistry
from templates.schema import ModelTemplateVersion, errors_from

# The cluster's own namespaces and the controller's: no event ever puts a model there.
DEFAULT_RESERVED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "stokehold-system")

DeploymentKey = tuple[str, str]  # (namespace, name)
NO_OVERRIDES = DeploymentOverrides()  # what every deployment without overrides shares: renders check for it first


class Rejected(Exception):
    """An event that can never succeed; `reason` goes into the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Deployment:
    """A requested deployment of a template: what the user asked for, not what is rendered."""

    template: str
    namespace: str
    name: str
    version: int | None  # None: follow the template's latest version
    overrides: DeploymentOverrides = NO_OVERRIDES
    stopped: bool = False
    sequence: int = 0  # stream sequence of the event that last changed it
    event_id: str = ""

    @property
    def key(self) -> DeploymentKey:
        return (self.namespace, self.name)

    @property
    def follows_latest(self) -> bool:
        return self.version is None


class InboundEvent(NamedTuple):  # records made per event are tuples: a frozen dataclass costs several times more to build
    """What the reducer needs of a decoded, validated inbound event."""

    kind: EventKind
    data: BaseModel
    event_id: str
    sequence: int
    subject_template: str | None = None  # the template token of the subject it arrived on


class Change(enum.Enum):
    """What reducing one event did to the state."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"  # identical content, or a no-op such as deleting what is already gone
    ALREADY_APPLIED = "already_applied"  # a redelivery: its sequence is at or below the high-water mark


class Reduction(NamedTuple):
    template: str
    change: Change
    deployment: DeploymentKey | None = None  # the deployment a deployment.* event addressed


@dataclass
class DesiredState:
    """Template versions and requested deployments. Pure: the same events give the same state."""

    allowed_namespaces: frozenset[str] | None = None  # None: every namespace but the reserved ones
    reserved_namespaces: frozenset[str] = frozenset(DEFAULT_RESERVED_NAMESPACES)
    versions: VersionRegistry = field(default_factory=VersionRegistry)
    deployments: dict[DeploymentKey, Deployment] = field(default_factory=dict)
    high_water: dict[str, int] = field(default_factory=dict)  # template (subject) → highest sequence reduced
    stream_position: int = 0  # highest stream sequence read while rebuilding: where the next catch-up starts
    # sequence → reason for rejected events not yet acknowledged: a redelivery of one is rejected again
    rejections: dict[int, str] = field(default_factory=dict)
    _deleted_versions: dict[str, set[int]] = field(default_factory=dict)
    _by_template: dict[str, list[DeploymentKey]] = field(default_factory=dict)  # sorted: the order renders run in

    # ------------------------------------------------------------------ queries

    def deployments_of(self, template: str) -> list[Deployment]:
        return [self.deployments[key] for key in self._by_template.get(template, ())]

    def templates(self) -> list[str]:
        return sorted(set(self.versions.names()) | {t for t, keys in self._by_template.items() if keys})

    def version_for(self, deployment: Deployment) -> ModelTemplateVersion | None:
        """The version a deployment serves now: its pin, or the latest; None when there is none."""
        return self.versions.get(deployment.template, deployment.version)

    # ---------------------------------------------------------------- reducer

    def apply(self, event: InboundEvent) -> Reduction:
        """Reduce one event. Raises `Rejected` (state unchanged) for an event that can never succeed."""
        template = _template_of(event.data)
        subject = event.subject_template or template
        if event.sequence and event.sequence <= self.high_water.get(subject, 0):
            if event.sequence in self.rejections:
                raise Rejected(self.rejections[event.sequence])
            return Reduction(template, Change.ALREADY_APPLIED, _key_of(event.data))
        try:
            if event.subject_template is not None and event.subject_template != template:
                raise Rejected(f"the subject names template {event.subject_template!r} but the data names {template!r}")
            return self._reduce(event, template)
        except Rejected as exc:
            if event.sequence:
                self.rejections[event.sequence] = exc.reason
            raise
        finally:
            if event.sequence > self.high_water.get(subject, 0):
                self.high_water[subject] = event.sequence

    def settled(self, sequence: int) -> None:
        """The event at `sequence` was acknowledged or terminated: forget its rejection."""
        self.rejections.pop(sequence, None)

    def settled_through(self, sequence: int) -> None:
        """Every event up to `sequence` is acknowledged (the durable consumer's ack floor)."""
        self.rejections = {seq: reason for seq, reason in self.rejections.items() if seq > sequence}

    def _reduce(self, event: InboundEvent, template: str) -> Reduction:
        data = event.data
        if isinstance(data, TemplateVersionPublished):
            return self._publish(data)
        if isinstance(data, TemplateVersionDeleted):
            return self._delete_version(data)
        if isinstance(data, DeploymentRequested):
            return self._request(data, event)
        if isinstance(data, DeploymentDeleted):
            return self._delete_deployment(data, event)
        if isinstance(data, DeploymentStopped | DeploymentResumed):
            return self._set_stopped(data, event, stopped=isinstance(data, DeploymentStopped))
        raise Rejected(f"{event.kind.ce_type} is not an inbound event type")  # pragma: no cover - decode forbids it

    def _publish(self, version: TemplateVersionPublished) -> Reduction:
        if version.version in self._deleted_versions.get(version.name, ()):
            raise Rejected(
                f"{version.ref} was deleted and versions are immutable: publish version {self._next_number(version.name)} instead"
            )
        try:
            outcome = self.versions.add(version)
        except ImmutableVersionError as exc:
            raise Rejected(str(exc)) from None
        if outcome is AddOutcome.IDENTICAL:
            return Reduction(version.name, Change.UNCHANGED)
        return Reduction(version.name, Change.CHANGED)

    def _next_number(self, template: str) -> int:
        deleted = self._deleted_versions.get(template, set())
        return max([self.versions.next_number(template) - 1, *deleted]) + 1

    def _delete_version(self, data: TemplateVersionDeleted) -> Reduction:
        removed = self.versions.remove(data.template, data.version)
        self._deleted_versions.setdefault(data.template, set()).add(data.version)
        return Reduction(data.template, Change.CHANGED if removed is not None else Change.UNCHANGED)

    def _request(self, data: DeploymentRequested, event: InboundEvent) -> Reduction:
        key = data.key
        if data.namespace in self.reserved_namespaces:
            raise Rejected(f"namespace {data.namespace!r} is reserved (the cluster's or stokehold's own): models never run there")
        if self.allowed_namespaces is not None and data.namespace not in self.allowed_namespaces:
            raise Rejected(f"namespace {data.namespace!r} is not one the controller manages ({', '.join(sorted(self.allowed_namespaces))})")
        if self.versions.latest(data.template) is None:
            raise Rejected(f"unknown template {data.template!r}: publish a version of it first")
        target = self.versions.get(data.template, data.version)
        if target is None:
            known = ", ".join(str(v.version) for v in self.versions.versions(data.template))
            raise Rejected(f"template {data.template!r} has no version {data.version} (known: {known})")
        try:
            data.overrides.apply_to(target.spec.scaling)
        except ValidationError as exc:
            raise Rejected("overrides do not fit the template: " + "; ".join(f"{loc}: {msg}" for loc, msg in errors_from(exc))) from None
        existing = self.deployments.get(key)
        if existing is not None and existing.template != data.template:
            raise Rejected(f"{key[0]}/{key[1]} already deploys template {existing.template!r}; delete it first or choose another name")
        deployment = Deployment(
            template=data.template,
            namespace=data.namespace,
            name=data.deployment_name,
            version=data.version,
            overrides=NO_OVERRIDES if data.overrides.is_empty else data.overrides,
            stopped=existing.stopped if existing is not None else False,  # stop/resume are explicit
            sequence=event.sequence,
            event_id=event.event_id,
        )
        if existing is not None and _same_request(existing, deployment):
            return Reduction(data.template, Change.UNCHANGED, key)
        self._put(deployment)
        return Reduction(data.template, Change.CHANGED, key)

    def _delete_deployment(self, data: DeploymentDeleted, event: InboundEvent) -> Reduction:
        key = data.key
        existing = self.deployments.get(key)
        if existing is not None and existing.template != data.template:
            raise Rejected(f"{key[0]}/{key[1]} deploys template {existing.template!r}, not {data.template!r}")
        if existing is None:
            return Reduction(data.template, Change.UNCHANGED, key)
        self.deployments.pop(key)
        self._by_template[existing.template].remove(key)
        return Reduction(data.template, Change.CHANGED, key)

    def _set_stopped(self, data: DeploymentStopped | DeploymentResumed, event: InboundEvent, *, stopped: bool) -> Reduction:
        key = data.key
        existing = self.deployments.get(key)
        if existing is None or existing.template != data.template:
            raise Rejected(f"no deployment {key[0]}/{key[1]} of template {data.template!r} to {'stop' if stopped else 'resume'}")
        if existing.stopped == stopped:
            return Reduction(data.template, Change.UNCHANGED, key)
        self._put(replace(existing, stopped=stopped, sequence=event.sequence, event_id=event.event_id))
        return Reduction(data.template, Change.CHANGED, key)

    def _put(self, deployment: Deployment) -> None:
        key = deployment.key
        if key not in self.deployments:  # a key keeps its template: only a new one joins the sorted list
            bisect.insort(self._by_template.setdefault(deployment.template, []), key)
        self.deployments[key] = deployment


def _same_request(a: Deployment, b: Deployment) -> bool:
    return (a.template, a.version, a.overrides, a.stopped) == (b.template, b.version, b.overrides, b.stopped)


def _template_of(data: BaseModel) -> str:
    name = getattr(data, "template_name", None)
    if not isinstance(name, str):  # pragma: no cover - every inbound data model has one
        raise Rejected(f"{type(data).__name__} names no template")
    return name


def _key_of(data: BaseModel) -> DeploymentKey | None:
    key = getattr(data, "key", None)
    return key if isinstance(key, tuple) else None


def rebuild(events: Iterable[InboundEvent], allowed_namespaces: frozenset[str] | None = None) -> DesiredState:
    """The state after replaying events in stream order; rejected events are skipped as they were live."""
    state = DesiredState(allowed_namespaces=allowed_namespaces)
    for event in events:
        with contextlib.suppress(Rejected):
            state.apply(event)
    return state
