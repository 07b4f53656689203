"""Desired state as a pure reducer over inbound events (no I/O).

The state is rebuilt on start by replaying the stream from its first message and
then kept up to date event by event, so it needs no database of its own:

- a registry of template versions (immutable: a number is never reused with other
  content, and a deleted number is never reused at all);
- deployments keyed by (namespace, name), each pinned to a version or following the
  template's latest, with a stopped flag and the stream sequence that last changed it.

`DesiredState.apply()` says whether an event changed the state, or raises
`Rejected` for an event that can never succeed. Every event is
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
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

from pydantic import BaseModel, ValidationError

from events.adapters import AdapterBook, AdapterError, Target
from events.types import (
    AdapterLoadStatusData,
    AdapterVersionDeleted,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentAdapterDetached,
    DeploymentDeleted,
    DeploymentOverrides,
    DeploymentRequested,
    DeploymentResumed,
    DeploymentStopped,
    EventKind,
    LoadStatus,
    TemplateVersionDeleted,
    TemplateVersionPublished,
    parse_adapter_ref,
)
from templates.registry import AddOutcome, ImmutableVersionError, VersionRegistry, next_version_hint
from templates.schema import ModelTemplateVersion, error_text

# No event ever puts a model in these, even when the controller's configuration lists one: the
# cluster's own namespaces, stokehold's, and those of the serving stack and its neighbours, whose
# Secrets (webhook keys, CA keys, credentials) a model pod must never be able to name.
DEFAULT_RESERVED_NAMESPACES = (
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "stokehold-system",
    "kserve",
    "knative-serving",
    "knative-eventing",
    "knative-operator",
    "kourier-system",
    "istio-system",
    "istio-ingress",
    "cert-manager",
    "nats",
    "monitoring",
    "gpu-operator",
    "ingress-nginx",
    "local-path-storage",
)

DeploymentKey = tuple[str, str]  # (namespace, name)
NO_OVERRIDES = DeploymentOverrides()


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


class InboundEvent(NamedTuple):
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


# The fields of `DesiredState` that configure it; every other field is reduced from events.
CONFIGURATION = ("allowed_namespaces", "reserved_namespaces", "allow_trust_remote_code")


@dataclass
class DesiredState:
    """Template versions and requested deployments. Pure: the same events give the same state."""

    allowed_namespaces: frozenset[str] = frozenset()  # opt-in: only these are served (none by default)
    reserved_namespaces: frozenset[str] = frozenset(DEFAULT_RESERVED_NAMESPACES)
    allow_trust_remote_code: bool = False  # platform policy: may a version run its model repository's code?
    versions: VersionRegistry = field(default_factory=VersionRegistry)
    deployments: dict[DeploymentKey, Deployment] = field(default_factory=dict)
    high_water: dict[str, int] = field(default_factory=dict)  # template (subject) → highest sequence reduced
    stream_position: int = 0  # highest stream sequence read while rebuilding: where the next catch-up starts
    # sequence → reason for rejected events not yet acknowledged: a redelivery of one is rejected again
    rejections: dict[int, str] = field(default_factory=dict)
    _deleted_versions: dict[str, set[int]] = field(default_factory=dict)
    # (namespace, name) → template of an explicit deployment.deleted not followed by a new request:
    # the evidence that lets the reconciler delete a live object (see `removal_allowed`)
    _deleted_deployments: dict[DeploymentKey, str] = field(default_factory=dict)
    adapters: AdapterBook = field(default_factory=AdapterBook)  # adapter versions and each deployment's attachments
    _by_template: dict[str, list[DeploymentKey]] = field(default_factory=dict)  # sorted: the order renders run in

    def cleared(self) -> DesiredState:
        """The same configuration with nothing reduced: what a rebuild from the stream starts from."""
        return DesiredState(**{name: getattr(self, name) for name in CONFIGURATION})

    def take(self, other: DesiredState) -> None:
        """Become `other`, in place (the reconciler and the consumer keep their reference to this one)."""
        for item in fields(self):
            setattr(self, item.name, getattr(other, item.name))

    # ------------------------------------------------------------------ queries

    def deployments_of(self, template: str) -> list[Deployment]:
        return [self.deployments[key] for key in self._by_template.get(template, ())]

    def templates(self) -> list[str]:
        return sorted(set(self.versions.names()) | {t for t, keys in self._by_template.items() if keys})

    def version_for(self, deployment: Deployment) -> ModelTemplateVersion | None:
        """The version a deployment serves now: its pin, or the latest; None when there is none."""
        return self.versions.get(deployment.template, deployment.version)

    def removal_allowed(self, key: DeploymentKey, template: str) -> bool:
        """Whether events said explicitly that an object of `template` at `key` must go.

        True after a `deployment.deleted` of it (not followed by a new request), or when the
        deployment is known but every version it could serve was deleted by
        `template.version.deleted`. A desired state that merely lacks the object (events
        missing from the stream, a stream recreated) is no such evidence: the object stays.
        """
        if self._deleted_deployments.get(key) == template:
            return True
        deployment = self.deployments.get(key)
        if deployment is None or deployment.template != template or self.version_for(deployment) is not None:
            return False
        deleted = self._deleted_versions.get(template, set())
        if deployment.version is not None:
            return deployment.version in deleted
        return bool(deleted) and self.versions.latest(template) is None

    # ---------------------------------------------------------------- reducer

    def apply(self, event: InboundEvent) -> Change:
        """Reduce one event. Raises `Rejected` (state unchanged) for an event that can never succeed."""
        template = _template_of(event.data)
        subject = event.subject_template or template
        if event.sequence and event.sequence <= self.high_water.get(subject, 0):
            if event.sequence in self.rejections:
                raise Rejected(self.rejections[event.sequence])
            return Change.ALREADY_APPLIED
        try:
            if event.subject_template is not None and event.subject_template != template:
                raise Rejected(f"the subject names template {event.subject_template!r} but the data names {template!r}")
            return self._reduce(event)
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

    def _reduce(self, event: InboundEvent) -> Change:
        data = event.data
        if isinstance(data, TemplateVersionPublished):
            return self._publish(data)
        if isinstance(data, TemplateVersionDeleted):
            return self._delete_version(data)
        if isinstance(data, DeploymentRequested):
            return self._request(data, event)
        if isinstance(data, DeploymentDeleted):
            return self._delete_deployment(data)
        if isinstance(data, DeploymentStopped | DeploymentResumed):
            return self._set_stopped(data, event, stopped=isinstance(data, DeploymentStopped))
        if isinstance(data, AdapterVersionPublished | AdapterVersionDeleted | DeploymentAdapterAttached | DeploymentAdapterDetached):
            deployment = self.deployments.get(data.key) if isinstance(data, DeploymentAdapterAttached | DeploymentAdapterDetached) else None
            target = self.adapter_target(deployment)
            try:
                return Change.CHANGED if self.adapters.apply(data, target) else Change.UNCHANGED
            except AdapterError as exc:
                raise Rejected(str(exc)) from None
        raise Rejected(f"{event.kind.ce_type} is not an inbound event type")  # pragma: no cover - decode forbids it

    def _publish(self, version: TemplateVersionPublished) -> Change:
        if version.version in self._deleted_versions.get(version.name, ()):
            raise Rejected(
                f"{version.ref} was deleted and versions are immutable: {next_version_hint(version.name, self._next_number(version.name))}"
            )
        if version.spec.engine.trust_remote_code and not self.allow_trust_remote_code:
            raise Rejected(
                f"{version.ref} sets engine.trust_remote_code, which would run the model repository's own code: "
                "this platform's policy does not allow it (the controller's allow_trust_remote_code is off)"
            )
        try:
            outcome = self.versions.add(version)
        except ImmutableVersionError as exc:
            raise Rejected(str(exc)) from None
        return Change.UNCHANGED if outcome is AddOutcome.IDENTICAL else Change.CHANGED

    def _next_number(self, template: str) -> int:
        deleted = self._deleted_versions.get(template, set())
        return max([self.versions.next_number(template) - 1, *deleted]) + 1

    def _delete_version(self, data: TemplateVersionDeleted) -> Change:
        if data.version in self._deleted_versions.get(data.template, ()):
            return Change.UNCHANGED
        if self.versions.get(data.template, data.version) is None:
            # refused, or the number would be blocked forever without ever having been used
            known = ", ".join(map(str, self.versions.numbers(data.template))) or "none"
            raise Rejected(f"{data.template}@{data.version} was never published (published versions: {known}): nothing to delete")
        removed = self.versions.remove(data.template, data.version)
        self._deleted_versions.setdefault(data.template, set()).add(data.version)
        return Change.CHANGED if removed is not None else Change.UNCHANGED

    def adapter_target(self, deployment: Deployment | None) -> Target | None:
        """What adapters of a deployment must fit: its template, the version it serves, that version's LoRA limits."""
        version = None if deployment is None else self.version_for(deployment)
        if deployment is None or version is None:
            return None
        return Target(deployment.template, version.version, version.spec.engine.lora, version.served_model_name)

    def _request(self, data: DeploymentRequested, event: InboundEvent) -> Change:
        key = data.key
        if data.namespace in self.reserved_namespaces:
            raise Rejected(
                f"namespace {data.namespace!r} is reserved (the cluster's, the serving stack's or stokehold's own): models never run there"
            )
        if data.namespace not in self.allowed_namespaces:
            served = ", ".join(sorted(self.allowed_namespaces)) or "none"
            raise Rejected(
                f"namespace {data.namespace!r} is not one the controller serves: namespaces are opt-in, "
                f"listed in the controller's configuration (namespaces; now: {served})"
            )
        if self.versions.latest(data.template) is None:
            raise Rejected(f"unknown template {data.template!r}: publish a version of it first")
        target = self.versions.get(data.template, data.version)
        if target is None:
            known = ", ".join(map(str, self.versions.numbers(data.template)))
            raise Rejected(f"template {data.template!r} has no version {data.version} (known: {known})")
        try:
            data.overrides.apply_to(target.spec.scaling)
        except ValidationError as exc:
            raise Rejected(f"overrides do not fit the template: {error_text(exc)}") from None
        existing = self.deployments.get(key)
        if existing is not None and existing.template != data.template:
            raise Rejected(f"{key[0]}/{key[1]} already deploys template {existing.template!r}; delete it first or choose another name")
        deployment = Deployment(
            template=data.template,
            namespace=data.namespace,
            name=data.deployment_name,
            version=data.version,
            overrides=data.overrides,
            stopped=existing.stopped if existing is not None else False,  # stop/resume are explicit
            sequence=event.sequence,
            event_id=event.event_id,
        )
        adapters_changed = False
        if data.adapters is not None:
            probe = replace(deployment, stopped=False)
            try:
                adapters_changed = self.adapters.apply(data, self.adapter_target(probe))
            except AdapterError as exc:
                raise Rejected(str(exc)) from None
        if existing is not None and _same_request(existing, deployment):
            return Change.CHANGED if adapters_changed else Change.UNCHANGED
        self._put(deployment)
        return Change.CHANGED

    def _delete_deployment(self, data: DeploymentDeleted) -> Change:
        key = data.key
        existing = self.deployments.get(key)
        if existing is not None and existing.template != data.template:
            raise Rejected(f"{key[0]}/{key[1]} deploys template {existing.template!r}, not {data.template!r}")
        self._deleted_deployments[key] = data.template
        if existing is None:
            return Change.UNCHANGED
        self.deployments.pop(key)
        self.adapters.forget(key)
        self._by_template[existing.template].remove(key)
        return Change.CHANGED

    def _set_stopped(self, data: DeploymentStopped | DeploymentResumed, event: InboundEvent, *, stopped: bool) -> Change:
        key = data.key
        existing = self.deployments.get(key)
        if existing is None or existing.template != data.template:
            raise Rejected(f"no deployment {key[0]}/{key[1]} of template {data.template!r} to {'stop' if stopped else 'resume'}")
        if existing.stopped == stopped:
            return Change.UNCHANGED
        self._put(replace(existing, stopped=stopped, sequence=event.sequence, event_id=event.event_id))
        return Change.CHANGED

    def _put(self, deployment: Deployment) -> None:
        key = deployment.key
        if key not in self.deployments:  # a key keeps its template: only a new one joins the sorted list
            bisect.insort(self._by_template.setdefault(deployment.template, []), key)
            self._deleted_deployments.pop(key, None)
        self.deployments[key] = deployment


def adapters_requested(state: DesiredState, data: BaseModel) -> list[AdapterLoadStatusData]:
    """REQUESTED for each adapter an accepted event asks a deployment to serve (the replicas report LOADING and on).
    `replica` is empty: the controller speaks for the deployment, not for a replica."""
    if isinstance(data, DeploymentAdapterAttached):
        names = {data.adapter}
    elif isinstance(data, DeploymentRequested) and data.adapters:
        names = {parse_adapter_ref(ref)[0] for ref in data.adapters}
    else:
        return []
    target = state.adapter_target(state.deployments.get(data.key))
    if target is None:
        return []
    return [
        AdapterLoadStatusData(
            template=target.template,
            version=target.version,
            namespace=data.namespace,
            name=data.deployment_name,
            adapter=name,
            adapter_version=doc.version,
            replica="",
            status=LoadStatus.REQUESTED,
        )
        for name, doc in state.adapters.desired(data.key, target).items()
        if name in names
    ]


def _same_request(a: Deployment, b: Deployment) -> bool:
    return (a.template, a.version, a.overrides, a.stopped) == (b.template, b.version, b.overrides, b.stopped)


def _template_of(data: BaseModel) -> str:
    name = getattr(data, "template_name", None)
    if not isinstance(name, str):  # pragma: no cover - every inbound data model has one
        raise Rejected(f"{type(data).__name__} names no template")
    return name


def rebuild(events: Iterable[InboundEvent], allowed_namespaces: frozenset[str] = frozenset()) -> DesiredState:
    """The state after replaying events in stream order; rejected events are skipped as they were live."""
    state = DesiredState(allowed_namespaces=allowed_namespaces)
    for event in events:
        with contextlib.suppress(Rejected):
            state.apply(event)
    return state
