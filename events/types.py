"""Event types, their data schemas and the subject layout (pure, no I/O).

Inbound events (users → controller) live on one subject per template, so that
JetStream keeps them in order per template:

    stokehold.templates.<template>.<kind>        e.g. stokehold.templates.gemma-3-12b-it.version.published

Outbound status events go to `stokehold.status.<template>.<kind>` and rejected
events to `stokehold.deadletter.<template or _>`. The controller answers every inbound
event it consumes: `event.accepted` once it is applied (a status event), or `event.rejected`
with the reason (a dead letter); both name the event they answer (`original_id`) and its
stream sequence, so a publisher can follow the outcome of its own event (`--wait`).

Three JetStream streams hold them, so that status traffic and junk can never push the
desired state out: `STOKEHOLD` (inbound only: the desired state, never aged out),
`STOKEHOLD_STATUS` and `STOKEHOLD_DEADLETTER` (each with its own size and age limits).
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema, field_validator, model_validator

from templates.schema import (
    DURATION_RE,
    VERSION_MAX,
    DnsLabel,
    ModelTemplateVersion,
    Scaling,
    check_dns_label,
    check_service_name,
    errors_from,
)

TYPE_PREFIX = "dev.stokehold."
SUBJECT_ROOT = "stokehold"
STREAM_NAME = "STOKEHOLD"  # the desired-state stream; the other two are named after it
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
    ADAPTER_PUBLISHED = "adapter.version.published"
    ADAPTER_DELETED = "adapter.version.deleted"
    ADAPTER_ATTACHED = "deployment.adapter.attached"
    ADAPTER_DETACHED = "deployment.adapter.detached"
    # outbound
    DEPLOYMENT_APPLIED = "deployment.applied"
    DEPLOYMENT_READY = "deployment.ready"
    DEPLOYMENT_FAILED = "deployment.failed"
    LOAD_STATUS = "deployment.load_status"
    VERSION_LOAD_STATUS = "template.version.load_status"
    ADAPTER_LOAD_STATUS = "deployment.adapter.load_status"
    EVENT_ACCEPTED = "event.accepted"
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
        EventKind.ADAPTER_PUBLISHED,
        EventKind.ADAPTER_DELETED,
        EventKind.ADAPTER_ATTACHED,
        EventKind.ADAPTER_DETACHED,
    }
)
ADAPTER_KINDS = frozenset({EventKind.ADAPTER_PUBLISHED, EventKind.ADAPTER_DELETED, EventKind.ADAPTER_ATTACHED, EventKind.ADAPTER_DETACHED})


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
    version: int = Field(strict=True, ge=1, le=VERSION_MAX)  # strict: `true`, "1" and 1.0 are not version 1

    @field_validator("template")
    @classmethod
    def _t(cls, v: str) -> str:
        return check_dns_label(v, "template")

    @property
    def template_name(self) -> str:
        return self.template


_KEEP_HOT_SCHEMA = {"type": "string", "minLength": 2, "maxLength": 32, "pattern": DURATION_RE.pattern}


class DeploymentOverrides(_Data):
    """What a deployment may change of the template's scaling; nothing else reaches the pod."""

    min_replicas: int | None = Field(default=None, ge=0, le=100)
    max_replicas: int | None = Field(default=None, ge=1, le=100)
    target_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    # checked by `_keep_hot` (a sentence, not the pattern, when it is wrong); the pattern documents it in the schema
    keep_hot: Annotated[str, StringConstraints(min_length=2, max_length=32), WithJsonSchema(_KEEP_HOT_SCHEMA)] | None = None
    priority: int | None = Field(default=None, ge=0, le=10)

    @field_validator("keep_hot")
    @classmethod
    def _keep_hot(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Scaling(keep_hot=value)  # the template's own rule: a duration such as 30m, at most 1h
            except ValidationError as exc:
                raise ValueError(errors_from(exc)[0][1]) from None
        return value

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentOverrides:
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self

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

    version: int | None = Field(default=None, strict=True, ge=1, le=VERSION_MAX)
    overrides: DeploymentOverrides = Field(default_factory=DeploymentOverrides)
    # None: keep the adapters attached now; a list (even empty) is the whole set, each `name` (latest) or `name@version`
    adapters: list[Annotated[str, StringConstraints(max_length=80)]] | None = Field(default=None, max_length=64)

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            names = [parse_adapter_ref(ref)[0] for ref in value]
            if len(set(names)) != len(names):
                raise ValueError("adapters names an adapter twice")
        return value

    @model_validator(mode="after")
    def _service_name(self) -> DeploymentRequested:
        # it names the InferenceService; deleting, stopping or resuming one still takes any name it was given before
        check_service_name(self.deployment_name, "name" if self.name else "name (the template's: no name given)")
        return self


class DeploymentDeleted(_DeploymentRef):
    pass


# ---------------------------------------------------------------- adapters

ADAPTER_SCHEMES = ("hf", "s3", "pvc")  # or a relative path inside the model cache
ADAPTER_RANK_MAX = 512


def parse_adapter_ref(ref: str) -> tuple[str, int | None]:
    """`name` (its latest version) or `name@version`."""
    name, at, number = ref.strip().partition("@")
    check_dns_label(name, "adapter")
    if not at:
        return name, None
    if not number.isdigit() or not 1 <= int(number) <= VERSION_MAX:
        raise ValueError(f"adapter {ref!r}: the version after @ must be a number from 1 to {VERSION_MAX}")
    return name, int(number)


def check_adapter_source(source: str) -> str:
    """An allow-listed scheme, or a relative path that stays inside the model cache."""
    scheme, sep, rest = source.partition("://")
    if sep:
        if scheme not in ADAPTER_SCHEMES:
            allowed = ", ".join(f"{s}://" for s in ADAPTER_SCHEMES)
            raise ValueError(
                f"source scheme {scheme + '://'!r} is not allowed for adapters (allowed: {allowed}, or a path in the model cache)"
            )
        path = rest
    else:
        if source.startswith("/"):
            raise ValueError(f"source {source!r} must be relative to the model cache (no leading /)")
        path = source
    if not path or any(part in {"..", "."} for part in path.split("/")) or "\\" in path:
        raise ValueError(f"source {source!r} must not contain '..' or '.' segments: an adapter stays inside its location")
    return source


class AdapterVersionPublished(_Data):
    """Data of `adapter.version.published`: an immutable adapter version for one base template."""

    template: DnsLabel  # the base template (and the subject it travels on)
    name: DnsLabel
    version: int = Field(strict=True, ge=1, le=VERSION_MAX)
    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    base_versions: list[Annotated[int, Field(strict=True, ge=1, le=VERSION_MAX)]] | None = Field(default=None, min_length=1)  # None: all
    rank: int = Field(strict=True, ge=1, le=ADAPTER_RANK_MAX)

    @field_validator("template", "name")
    @classmethod
    def _names(cls, v: str) -> str:
        return check_dns_label(v, "name")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return check_adapter_source(v)

    @property
    def template_name(self) -> str:
        return self.template

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def fits(self, template: str, version: int) -> bool:
        return template == self.template and (self.base_versions is None or version in self.base_versions)


class AdapterVersionDeleted(_Data):
    template: DnsLabel
    name: DnsLabel
    version: int = Field(strict=True, ge=1, le=VERSION_MAX)

    @field_validator("template", "name")
    @classmethod
    def _names(cls, v: str) -> str:
        return check_dns_label(v, "name")

    @property
    def template_name(self) -> str:
        return self.template


class DeploymentAdapterAttached(_DeploymentRef):
    adapter: DnsLabel
    version: int | None = Field(default=None, strict=True, ge=1, le=VERSION_MAX)  # None: the adapter's latest

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str) -> str:
        return check_dns_label(v, "adapter")


class DeploymentAdapterDetached(_DeploymentRef):
    adapter: DnsLabel

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str) -> str:
        return check_dns_label(v, "adapter")


class DeploymentStopped(_DeploymentRef):
    pass


class DeploymentResumed(_DeploymentRef):
    pass


# --------------------------------------------------------------- outbound data


class LoadStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    DOWNLOADING = "DOWNLOADING"  # a version's weights are being copied into the model cache
    CACHED = "CACHED"  # they are there: a replica starting from zero downloads nothing
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
    # kept: a live object without desired state, left alone until a deployment.deleted names it
    action: Literal["created", "updated", "unchanged", "deleted", "stopped", "resumed", "kept"]
    scale_to_zero: bool = True
    note: str | None = None  # e.g. why a multi-node service cannot scale to zero


class DeploymentReady(_DeploymentStatus):
    url: str | None = None


class DeploymentFailed(_DeploymentStatus):
    reason: str


class DeploymentLoadStatus(_DeploymentStatus):
    status: LoadStatus
    reason: str | None = None
    replica: str | None = None  # set when a replica reports its own start (with `phases`)
    # seconds from process start to the end of each start phase, e.g. {"imports": 9.1, "weights_loaded": 12.0, ...}
    phases: dict[str, float] | None = None


class VersionLoadStatus(_Data):
    """A version's weights in the model cache: DOWNLOADING → CACHED | FAILED (with the reason), with bytes and seconds."""

    template: str
    version: int
    content_hash: str | None = None
    status: LoadStatus
    reason: str | None = None
    cache: str | None = None  # where the cached copy lives, e.g. "pvc://model-cache/models/…" or "LocalModelCache/<name>"
    bytes: int | None = Field(default=None, ge=0)
    seconds: float | None = Field(default=None, ge=0)


class AdapterLoadStatusData(_DeploymentStatus):
    """One replica's load status of one adapter (`replica`: its pod or host name; "" for the controller's REQUESTED).

    A replica repeats LOADING every `report_every_s` while a load runs, so a LOADING that is not
    repeated (a replica killed mid-load) reads as FAILED once it is older than a few intervals."""

    adapter: str
    adapter_version: int
    replica: str
    status: LoadStatus
    reason: str | None = None
    report_every_s: float | None = Field(default=None, gt=0)


class EventAccepted(_Data):
    """The controller applied an inbound event (acknowledged it): the answer `--wait` follows."""

    original_id: str
    original_type: str
    subject: str
    stream_sequence: int
    note: str | None = None  # e.g. "unchanged": the state already said so


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
    EventKind.VERSION_LOAD_STATUS: VersionLoadStatus,
    EventKind.EVENT_ACCEPTED: EventAccepted,
    EventKind.ADAPTER_PUBLISHED: AdapterVersionPublished,
    EventKind.ADAPTER_DELETED: AdapterVersionDeleted,
    EventKind.ADAPTER_ATTACHED: DeploymentAdapterAttached,
    EventKind.ADAPTER_DETACHED: DeploymentAdapterDetached,
    EventKind.ADAPTER_LOAD_STATUS: AdapterLoadStatusData,
    EventKind.EVENT_REJECTED: EventRejected,
}

InboundData = (
    TemplateVersionPublished
    | TemplateVersionDeleted
    | DeploymentRequested
    | DeploymentDeleted
    | DeploymentStopped
    | DeploymentResumed
    | AdapterVersionPublished
    | AdapterVersionDeleted
    | DeploymentAdapterAttached
    | DeploymentAdapterDetached
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


def deadletter_filter(root: str = SUBJECT_ROOT) -> str:
    return f"{root}.deadletter.>"


# ------------------------------------------------------------------- streams


class StreamRole(enum.StrEnum):
    """What a stream holds; each role is one stream with its own limits."""

    DESIRED = "desired"  # inbound events: the desired state, kept until deleted on purpose
    STATUS = "status"  # outbound status events
    DEADLETTER = "deadletter"  # event.rejected

    @property
    def suffix(self) -> str:
        return "" if self is StreamRole.DESIRED else f"_{self.name}"


def stream_name(role: StreamRole, base: str = STREAM_NAME) -> str:
    """`STOKEHOLD`, `STOKEHOLD_STATUS`, `STOKEHOLD_DEADLETTER` (or the same suffixes on another base name)."""
    return base + role.suffix


def role_of(kind: EventKind) -> StreamRole:
    if kind.inbound:
        return StreamRole.DESIRED
    return StreamRole.DEADLETTER if kind is EventKind.EVENT_REJECTED else StreamRole.STATUS


def stream_for(kind: EventKind, base: str = STREAM_NAME) -> str:
    """The stream that must store an event of this kind (a publisher checks its acknowledgement against it)."""
    return stream_name(role_of(kind), base)


def stream_subjects(role: StreamRole, root: str = SUBJECT_ROOT) -> list[str]:
    """The subjects one stream binds."""
    if role is StreamRole.DESIRED:
        return [inbound_filter(root)]
    return [status_filter(root) if role is StreamRole.STATUS else deadletter_filter(root)]


def role_of_subject(subject: str, root: str = SUBJECT_ROOT) -> StreamRole | None:
    """The stream role whose subjects cover `subject` (a subject or a filter such as `root.status.>`); None if none does."""
    parts = subject.split(".")
    if len(parts) < 2 or parts[0] != root:
        return None
    return {"templates": StreamRole.DESIRED, "status": StreamRole.STATUS, "deadletter": StreamRole.DEADLETTER}.get(parts[1])


def template_of_subject(subject: str, root: str = SUBJECT_ROOT) -> str | None:
    """The template token of an inbound or status subject, if the subject has one."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[0] == root and parts[1] in {"templates", "status"}:
        return parts[2]
    return None
