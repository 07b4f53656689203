"""Event types, their data schemas and the subject layout (pure, no I/O).

Inbound events (users → controller) live on one subject per template, so that
JetStream keeps them in order per template:

    stokehold.templates.<template>.<kind>        e.g. stokehold.templates.gemma-7b-it.version.published

Outbound status events go to `stokehold.status.<template>.<kind>` and rejected
events to `stokehold.deadletter.<template or _>`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from templates.schema import DURATION_RE, DnsLabel, ModelTemplateVersion, Scaling, check_dns_label

TYPE_PREFIX = "dev.stokehold."
SUBJECT_ROOT = "stokehold"
STREAM_NAME = "STOKEHOLD"
SOURCE_DEFAULT = "/stokehold/cli"
HASH_EXTENSION = "stokeholdhash"  # CloudEvents extension names: lower-case alphanumerics only


class EventKind(enum.StrEnum):
    """The part after the type prefix; also the subject suffix."""

    # inbound
    VERSION_PUBLISHED = "template.version.published"
    VERSION_DELETED = "template.version.deleted"
    DEPLOYMENT_REQUESTED = "deployment.requested"
    DEPLOYMENT_DELETED = "deployment.deleted"
    DEPLOYMENT_STOPPED = "deployment.stopped"
    DEPLOYMENT_RESUMED = "deployment.resumed"
    # outbound
    DEPLOYMENT_APPLIED = "deployment.applied"
    DEPLOYMENT_READY = "deployment.ready"
    DEPLOYMENT_FAILED = "deployment.failed"
    LOAD_STATUS = "deployment.load_status"
    EVENT_REJECTED = "event.rejected"

    @property
    def ce_type(self) -> str:
        return TYPE_PREFIX + self.value

    @property
    def inbound(self) -> bool:
        return self in INBOUND_KINDS

    @classmethod
    def from_ce_type(cls, ce_type: str) -> EventKind:
        if not ce_type.startswith(TYPE_PREFIX):
            raise ValueError(f"event type {ce_type!r} does not start with {TYPE_PREFIX!r}")
        return cls(ce_type[len(TYPE_PREFIX) :])


INBOUND_KINDS = frozenset(
    {
        EventKind.VERSION_PUBLISHED,
        EventKind.VERSION_DELETED,
        EventKind.DEPLOYMENT_REQUESTED,
        EventKind.DEPLOYMENT_DELETED,
        EventKind.DEPLOYMENT_STOPPED,
        EventKind.DEPLOYMENT_RESUMED,
    }
)


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# ---------------------------------------------------------------- inbound data


class TemplateVersionPublished(ModelTemplateVersion):
    """Data of `template.version.published`: the full immutable version document."""

    @property
    def template_name(self) -> str:
        return self.template.name


class TemplateVersionDeleted(_Data):
    template: DnsLabel
    version: int = Field(ge=1)

    @field_validator("template")
    @classmethod
    def _t(cls, v: str) -> str:
        return check_dns_label(v, "template")

    @property
    def template_name(self) -> str:
        return self.template


class DeploymentOverrides(_Data):
    """What a deployment may change of the template's scaling; nothing else reaches the pod."""

    min_replicas: int | None = Field(default=None, ge=0, le=100)
    max_replicas: int | None = Field(default=None, ge=1, le=100)
    target_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    keep_hot: Annotated[str, StringConstraints(pattern=DURATION_RE.pattern, min_length=2)] | None = None
    priority: int | None = Field(default=None, ge=0, le=10)

    @property
    def is_empty(self) -> bool:
        """No field has a value (a decoded request carries every field, most of them None)."""
        return all(value is None for value in self.__dict__.values())

    def apply_to(self, scaling: Scaling) -> Scaling:
        """The template's scaling with these overrides; re-validated (min ≤ max etc.)."""
        merged = scaling.model_dump() | self.model_dump(exclude_none=True)
        return Scaling.model_validate(merged)


class _DeploymentRef(_Data):
    template: DnsLabel
    namespace: DnsLabel = "default"
    name: DnsLabel | None = None  # default: the template name

    @field_validator("template", "namespace", "name")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_label(v, "name")

    @property
    def template_name(self) -> str:
        return self.template

    @property
    def deployment_name(self) -> str:
        return self.name or self.template

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.deployment_name)


class DeploymentRequested(_DeploymentRef):
    """One-click deploy: a template at a version (or its latest, following new versions)."""

    version: int | None = Field(default=None, ge=1)
    overrides: DeploymentOverrides = Field(default_factory=DeploymentOverrides)


class DeploymentDeleted(_DeploymentRef):
    pass


class DeploymentStopped(_DeploymentRef):
    pass


class DeploymentResumed(_DeploymentRef):
    pass


# --------------------------------------------------------------- outbound data


class LoadStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    LOADING = "LOADING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class _DeploymentStatus(_Data):
    template: str
    version: int | None = None
    namespace: str
    name: str
    content_hash: str | None = None


class DeploymentApplied(_DeploymentStatus):
    action: Literal["created", "updated", "unchanged", "deleted", "stopped", "resumed"]
    scale_to_zero: bool = True
    note: str | None = None  # e.g. why a multi-node service cannot scale to zero


class DeploymentReady(_DeploymentStatus):
    url: str | None = None


class DeploymentFailed(_DeploymentStatus):
    reason: str


class DeploymentLoadStatus(_DeploymentStatus):
    status: LoadStatus
    reason: str | None = None


class EventRejected(_Data):
    original_id: str | None = None
    original_type: str | None = None
    subject: str
    reason: str
    stream_sequence: int | None = None


DATA_MODELS: dict[EventKind, type[BaseModel]] = {
    EventKind.VERSION_PUBLISHED: TemplateVersionPublished,
    EventKind.VERSION_DELETED: TemplateVersionDeleted,
    EventKind.DEPLOYMENT_REQUESTED: DeploymentRequested,
    EventKind.DEPLOYMENT_DELETED: DeploymentDeleted,
    EventKind.DEPLOYMENT_STOPPED: DeploymentStopped,
    EventKind.DEPLOYMENT_RESUMED: DeploymentResumed,
    EventKind.DEPLOYMENT_APPLIED: DeploymentApplied,
    EventKind.DEPLOYMENT_READY: DeploymentReady,
    EventKind.DEPLOYMENT_FAILED: DeploymentFailed,
    EventKind.LOAD_STATUS: DeploymentLoadStatus,
    EventKind.EVENT_REJECTED: EventRejected,
}

InboundData = (
    TemplateVersionPublished | TemplateVersionDeleted | DeploymentRequested | DeploymentDeleted | DeploymentStopped | DeploymentResumed
)


# ------------------------------------------------------------------- subjects


def template_subject(template: str, kind: EventKind, root: str = SUBJECT_ROOT) -> str:
    return f"{root}.templates.{template}.{kind.value}"


def status_subject(template: str, kind: EventKind, root: str = SUBJECT_ROOT) -> str:
    return f"{root}.status.{template}.{kind.value}"


def deadletter_subject(template: str | None = None, root: str = SUBJECT_ROOT) -> str:
    return f"{root}.deadletter.{template or '_'}"


def inbound_filter(root: str = SUBJECT_ROOT) -> str:
    return f"{root}.templates.>"


def status_filter(root: str = SUBJECT_ROOT) -> str:
    return f"{root}.status.>"


def stream_subjects(root: str = SUBJECT_ROOT) -> list[str]:
    return [f"{root}.templates.>", f"{root}.status.>", f"{root}.deadletter.>"]


def template_of_subject(subject: str, root: str = SUBJECT_ROOT) -> str | None:
    """The template token of an inbound or status subject, if the subject has one."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[0] == root and parts[1] in {"templates", "status"}:
        return parts[2]
    return None


class InboundEnvelope(_Data):
    """What the controller needs of a decoded inbound CloudEvent."""

    id: str
    kind: EventKind
    source: str
    subject: str
    data: Any
    content_hash: str | None = None

    @model_validator(mode="after")
    def _inbound(self) -> InboundEnvelope:
        if not self.kind.inbound:
            raise ValueError(f"{self.kind.ce_type} is not an inbound event type")
        return self
