"""The resource types the emulator serves, their per-type rules, and the discovery documents.

Each type records the API server behaviour that differs between built-in types and
custom resources, e.g. custom resources refuse an update without `resourceVersion`
(`AllowUnconditionalUpdate` is false for CRDs) and strategic-merge patches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kubernetes_validate

from tests.k8s_emulator.crds import CLUSTER_SERVING_RUNTIME_CRD, ISVC_CRD, LOCAL_MODEL_CACHE_CRD, SERVING_RUNTIME_CRD, served_schema

Object = dict[str, Any]
Validator = Callable[[Object], list[tuple[str, str]]]
# A validating admission webhook: (new object, old object or None on create, the stored objects of the type) → why it
# denies the request, or None.
Webhook = Callable[[Object, Object | None, list[Object]], str | None]
# the Kubernetes version whose OpenAPI schemas (kubernetes-validate's copies) built-in types are checked against
KUBERNETES_SCHEMA_VERSION = "1.30.0"

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# metav1.MicroTime is parsed with Go's RFC3339Micro layout: exactly six fractional digits.
MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Column:
    """A printer column: what `kubectl get` shows (the server renders the cells)."""

    name: str
    type: str
    cell: Callable[[Object], Any]
    format: str = ""
    description: str = ""
    priority: int = 0


@dataclass(frozen=True, eq=False)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    custom: bool = False  # CRD semantics: generation, no unconditional update, no strategic merge
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    validate: Validator | None = None  # a built-in type's own rules (422)
    schema: dict[str, Any] | None = None  # a CRD's structural schema: prune, default, validate (openapi.py)
    webhook: tuple[str, Webhook] | None = None  # (name, rule) of a validating webhook on create/update (403 when it denies)
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name the type: `inferenceservices.serving.kserve.io`, `leases.coordination.k8s.io`, `namespaces`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def names(self) -> set[str]:
        return {self.plural, self.singular, self.kind.lower(), *self.short_names}


# ------------------------------------------------------------------ cells


def _get(obj: Object, *path: str) -> Any:
    current: Any = obj
    for key in path:
        if not isinstance(current, dict):
            return None
        current = current.get(key)
    return current


def _ready_status(obj: Object) -> Any:
    for condition in _get(obj, "status", "conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition.get("status")
    return None


def _traffic(obj: Object, match: Callable[[Object], bool], key: str) -> Any:
    for target in _get(obj, "status", "components", "predictor", "traffic") or []:
        if isinstance(target, dict) and match(target):
            return target.get(key)
    return None


def _created(obj: Object) -> Any:
    return _get(obj, "metadata", "creationTimestamp")


def _name(obj: Object) -> Any:
    return _get(obj, "metadata", "name")


NAME_COLUMN = Column(
    "Name",
    "string",
    _name,
    "name",
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically.",
)
AGE_COLUMN = Column(
    "Age", "date", _created, "", "CreationTimestamp is a timestamp representing the server time when this object was created."
)


def _prev(target: Object) -> bool:
    return target.get("tag") == "prev"


def _latest(target: Object) -> bool:
    return target.get("latestRevision") is True


# KServe's additionalPrinterColumns for InferenceService v1beta1.
ISVC_COLUMNS = (
    NAME_COLUMN,
    Column("URL", "string", lambda o: _get(o, "status", "url")),
    Column("Ready", "string", _ready_status),
    Column("Prev", "integer", lambda o: _traffic(o, _prev, "percent")),
    Column("Latest", "integer", lambda o: _traffic(o, _latest, "percent")),
    Column("PrevRolledoutRevision", "string", lambda o: _traffic(o, _prev, "revisionName")),
    Column("LatestReadyRevision", "string", lambda o: _traffic(o, _latest, "revisionName")),
    AGE_COLUMN,
)


def _joined(obj: Object, field: str, key: str) -> Any:
    values = [str(item.get(key)) for item in _get(obj, "spec", field) or [] if isinstance(item, dict) and item.get(key) is not None]
    return ",".join(values) if values else None


# KServe's additionalPrinterColumns for (Cluster)ServingRuntime v1alpha1.
RUNTIME_COLUMNS = (
    NAME_COLUMN,
    Column("Disabled", "boolean", lambda o: _get(o, "spec", "disabled")),
    Column("ModelType", "string", lambda o: _joined(o, "supportedModelFormats", "name")),
    Column("Containers", "string", lambda o: _joined(o, "containers", "name")),
    AGE_COLUMN,
)

LEASE_COLUMNS = (NAME_COLUMN, Column("Holder", "string", lambda o: _get(o, "spec", "holderIdentity")), AGE_COLUMN)
NAMESPACE_COLUMNS = (NAME_COLUMN, Column("Status", "string", lambda o: _get(o, "status", "phase")), AGE_COLUMN)
EVENT_COLUMNS = (
    Column("Last Seen", "date", lambda o: _get(o, "lastTimestamp") or _get(o, "eventTime") or _created(o)),
    Column("Type", "string", lambda o: o.get("type")),
    Column("Reason", "string", lambda o: o.get("reason")),
    Column(
        "Object",
        "string",
        lambda o: f"{str(_get(o, 'involvedObject', 'kind') or '').lower()}/{_get(o, 'involvedObject', 'name') or ''}",
    ),
    Column("Message", "string", lambda o: o.get("message")),
    Column("Name", "string", _name, "name", NAME_COLUMN.description, priority=1),
)


# ------------------------------------------------------------- validation


ISVC_NAME_FORMAT = "[a-z]([-a-z0-9]*[a-z0-9])?"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
ISVC_WEBHOOK = "inferenceservice.kserve-webhook-server.validator"


def _kserve_isvc_webhook(obj: Object, old: Object | None, peers: list[Object]) -> str | None:
    """What KServe's InferenceService webhook (v0.16.0) refuses that a client of stokehold can send.

    - a name that is no DNS-1035 label (`validateInferenceServiceName`);
    - on update, a `serving.kserve.io/deploymentMode` annotation other than the mode KServe recorded in
      `status.deploymentMode` (`validateDeploymentMode`): compared as written, so after KServe
      v0.16.0 recorded `Knative` for an object created as `Serverless`, an update that still says
      `Serverless` is refused.

    The schema itself (types, required fields, patterns) is the CRD's, applied before.
    """
    name = _name(obj)
    if isinstance(name, str) and not re.fullmatch(ISVC_NAME_FORMAT, name):
        return (
            f'the InferenceService "{name}" is invalid: a InferenceService name must consist of lower case alphanumeric characters '
            f'or \'-\', and must start with alphabetical character. (e.g. "my-name" or "abc-123", regex used for validation is '
            f"'{ISVC_NAME_FORMAT}')"
        )
    recorded = _get(old, "status", "deploymentMode") if old is not None else None
    annotations = _get(obj, "metadata", "annotations") or {}
    if recorded and DEPLOYMENT_MODE_ANNOTATION in annotations and annotations[DEPLOYMENT_MODE_ANNOTATION] != recorded:
        return f"update rejected: deploymentMode cannot be changed from '{recorded}' to '{annotations[DEPLOYMENT_MODE_ANNOTATION]}'"
    return None


LOCAL_MODEL_CACHE_WEBHOOK = "localmodelcache.kserve-webhook-server.validator"


def _kserve_local_model_cache_webhook(obj: Object, old: Object | None, peers: list[Object]) -> str | None:
    """KServe's LocalModelCache webhook (v0.16.0, `validateUniqueStorageURI`): one LocalModelCache per source URI."""
    source = _get(obj, "spec", "sourceModelUri")
    for peer in peers:
        if _name(peer) != _name(obj) and _get(peer, "spec", "sourceModelUri") == source:
            return f"LocalModelCache {_name(peer)} has the same StorageURI {source}"
    return None


def validate_openapi(obj: Object) -> list[tuple[str, str]]:
    """A built-in type against Kubernetes' own OpenAPI schema (kubernetes-validate), strictly: an unknown field is refused.

    Stricter than an API server, which drops unknown fields of built-in types with a warning; the first problem only.
    """
    try:
        kubernetes_validate.validate(obj, KUBERNETES_SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path) or "<root>"
        return [(path, f"Invalid value: {exc.message}")]
    return []


def _validate_lease(obj: Object) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    spec = obj.get("spec")
    if spec is None:
        return causes
    if not isinstance(spec, dict):
        return [("spec", "must be an object")]
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        causes.append(("spec.holderIdentity", "must be a string"))
    for key in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            causes.append((f"spec.{key}", "must be a non-negative integer"))
    if isinstance(spec.get("leaseDurationSeconds"), int) and spec["leaseDurationSeconds"] == 0:
        causes.append(("spec.leaseDurationSeconds", "must be greater than 0"))
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, str) or not MICRO_TIME.match(value)):
            causes.append((f"spec.{key}", f"Invalid value: {value!r}: not a metav1.MicroTime (RFC3339 with 6 fractional digits)"))
    return causes


def validate_metadata(obj: Object, rt: ResourceType) -> list[tuple[str, str]]:
    """Rules every object obeys: name format, label keys/values, string annotations."""
    causes: list[tuple[str, str]] = []
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [("metadata", "Required value")]
    name = metadata.get("name")
    pattern = DNS1123_LABEL if rt.plural == "namespaces" else DNS1123_SUBDOMAIN
    if not isinstance(name, str) or not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 253 or not pattern.match(name):
        causes.append(
            (
                "metadata.name",
                f"Invalid value: {name!r}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.'",
            )
        )
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(("metadata.labels", "must be a map of strings"))
    else:
        for key, value in labels.items():
            if not valid_qualified_name(key):
                causes.append((f"metadata.labels[{key}]", "Invalid value: not a valid label key"))
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
                causes.append((f"metadata.labels[{key}]", f"Invalid value: {value!r}: a valid label must be 63 characters or less"))
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        causes.append(("metadata.annotations", "must be a map of strings"))
    else:
        for key, value in annotations.items():
            if not valid_qualified_name(key):
                causes.append((f"metadata.annotations[{key}]", "Invalid value: not a valid annotation key"))
            if not isinstance(value, str):
                causes.append((f"metadata.annotations[{key}]", f"Invalid value: {value!r}: annotation values must be strings"))
        if sum(len(k) + len(v) for k, v in annotations.items() if isinstance(v, str)) > 256 * 1024:
            causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    return causes


def valid_qualified_name(key: object) -> bool:
    if not isinstance(key, str) or not key:
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(LABEL_NAME.match(name))


# ---------------------------------------------------------------- registry

INFERENCE_SERVICES = ResourceType(
    group="serving.kserve.io",
    version="v1beta1",
    plural="inferenceservices",
    singular="inferenceservice",
    kind="InferenceService",
    namespaced=True,
    custom=True,
    status_subresource=True,
    short_names=("isvc",),
    categories=("all",),
    columns=ISVC_COLUMNS,
    schema=served_schema(ISVC_CRD),
    webhook=(ISVC_WEBHOOK, _kserve_isvc_webhook),
    verbs=("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"),
)
# No status subresource: KServe's ServingRuntime CRDs declare none.
SERVING_RUNTIMES = ResourceType(
    group="serving.kserve.io",
    version="v1alpha1",
    plural="servingruntimes",
    singular="servingruntime",
    kind="ServingRuntime",
    namespaced=True,
    custom=True,
    columns=RUNTIME_COLUMNS,
    schema=served_schema(SERVING_RUNTIME_CRD),
    verbs=("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"),
)
CLUSTER_SERVING_RUNTIMES = ResourceType(
    group="serving.kserve.io",
    version="v1alpha1",
    plural="clusterservingruntimes",
    singular="clusterservingruntime",
    kind="ClusterServingRuntime",
    namespaced=False,
    custom=True,
    columns=RUNTIME_COLUMNS,
    schema=served_schema(CLUSTER_SERVING_RUNTIME_CRD),
    verbs=("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"),
)
LOCAL_MODEL_CACHES = ResourceType(
    group="serving.kserve.io",
    version="v1alpha1",
    plural="localmodelcaches",
    singular="localmodelcache",
    kind="LocalModelCache",
    namespaced=False,
    custom=True,
    status_subresource=True,
    columns=(NAME_COLUMN, AGE_COLUMN),
    schema=served_schema(LOCAL_MODEL_CACHE_CRD),
    webhook=(LOCAL_MODEL_CACHE_WEBHOOK, _kserve_local_model_cache_webhook),
    verbs=("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"),
)
JOBS = ResourceType(
    "batch",
    "v1",
    "jobs",
    "job",
    "Job",
    True,
    status_subresource=True,
    categories=("all",),
    columns=(NAME_COLUMN, AGE_COLUMN),
    validate=validate_openapi,
    verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, columns=LEASE_COLUMNS, validate=_validate_lease)
EVENTS = ResourceType("", "v1", "events", "event", "Event", True, short_names=("ev",), columns=EVENT_COLUMNS)
NAMESPACES = ResourceType(
    "", "v1", "namespaces", "namespace", "Namespace", False, short_names=("ns",), columns=NAMESPACE_COLUMNS,
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
)  # fmt: skip

BUILT_IN_TYPES = (NAMESPACES, EVENTS, LEASES, JOBS, INFERENCE_SERVICES, SERVING_RUNTIMES, CLUSTER_SERVING_RUNTIMES, LOCAL_MODEL_CACHES)


@dataclass
class Registry:
    types: list[ResourceType] = field(default_factory=lambda: list(BUILT_IN_TYPES))

    def register(self, rt: ResourceType) -> None:
        self.types.append(rt)

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        for rt in self.types:
            if rt.group == group and rt.version == version and rt.plural == plural:
                return rt
        return None

    def by_name(self, name: str) -> ResourceType:
        """A type by plural, singular, kind or short name (`isvc`, `InferenceService`, `leases`)."""
        wanted = name.lower()
        for rt in self.types:
            if wanted in rt.names():
                return rt
        raise KeyError(f"unknown resource type {name!r}")

    def group_versions(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for rt in self.types:
            versions = found.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        return found

    # -------------------------------------------------------- discovery

    def core_versions(self, server_address: str) -> Object:
        return {
            "kind": "APIVersions",
            "versions": self.group_versions().get("", []),
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }

    def group_list(self) -> Object:
        groups = []
        for group, versions in self.group_versions().items():
            if not group:
                continue
            entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def group(self, group: str) -> Object | None:
        versions = self.group_versions().get(group)
        if not group or not versions:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries, "preferredVersion": entries[0]}

    def resource_list(self, group: str, version: str) -> Object | None:
        types = [rt for rt in self.types if rt.group == group and rt.version == version]
        if not types:
            return None
        resources: list[Object] = []
        for rt in types:
            entry: Object = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(rt.verbs),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            if rt.status_subresource:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
