"""The emulator's state: objects, the global resourceVersion, the event history and watchers.

All API semantics live here (no HTTP): creation defaults, optimistic concurrency, the
status subresource, generation, no-op updates, deletion preconditions, watch replay and
410 Expired. Thread-safe: the HTTP server and the test's Python calls share one lock.

Objects are never changed in place once stored: every write stores a new dict (sharing
untouched subtrees with the old one). So reads, watch events and the history hand out the
stored objects themselves, read-only, without copying; and the store takes ownership of the
bodies given to it (the HTTP layer passes freshly parsed JSON).
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import string
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tests.k8s_emulator import errors, openapi
from tests.k8s_emulator.errors import ApiError
from tests.k8s_emulator.patches import json_patch, merge_patch
from tests.k8s_emulator.resources import NAMESPACES, Object, Registry, ResourceType, validate_metadata
from tests.k8s_emulator.selectors import FieldSelector, LabelSelector

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
PatchType = Literal["merge", "json", "strategic", "apply"]
FieldValidation = Literal["Ignore", "Warn", "Strict"]
FIELD_VALIDATIONS: tuple[FieldValidation, ...] = ("Ignore", "Warn", "Strict")
SERVER_OWNED = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "selfLink")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "stokehold-system")


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    rt: ResourceType
    obj: Object  # the object after the change (the last state for DELETED)
    old: Object | None  # before the change, so watchers with selectors can tell enter/leave
    rv: int


Deliver = Callable[[WatchEvent | None], None]  # None: the watch is being closed


@dataclass
class Subscription:
    rt: ResourceType
    deliver: Deliver


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_continue(rv: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"rv": rv, "after": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ApiError(400, f"continue key is not valid: {exc}") from None


class ObjectStore:
    def __init__(
        self,
        registry: Registry | None = None,
        *,
        history_limit: int = 10_000,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        auto_create_namespaces: bool = True,
    ) -> None:
        self.registry = registry or Registry()
        self.history_limit = history_limit
        self.auto_create_namespaces = auto_create_namespaces
        self._initial_namespaces = tuple(namespaces)
        self._lock = threading.RLock()
        self._subscriptions: list[Subscription] = []
        self._rv = 0  # never goes back, not even on reset: clients may hold old resourceVersions
        self._reset_state()

    def _reset_state(self) -> None:
        self._objects: dict[ResourceType, dict[tuple[str, str], Object]] = {}
        self._history: deque[WatchEvent] = deque()
        self._compacted_rv = 0  # events at or below this resourceVersion are no longer replayable
        for name in self._initial_namespaces:
            self._create_namespace(name)

    # ------------------------------------------------------------ helpers

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], Object]:
        return self._objects.setdefault(rt, {})

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def _emit(self, kind: EventType, rt: ResourceType, obj: Object, old: Object | None) -> None:
        # No copies: a stored object is never changed in place, every write stores a new one.
        event = WatchEvent(kind, rt, obj, old, int(obj["metadata"]["resourceVersion"]))
        self._history.append(event)
        while len(self._history) > self.history_limit:
            self._compacted_rv = self._history.popleft().rv
        for subscription in list(self._subscriptions):
            subscription.deliver(event)

    def _create_namespace(self, name: str) -> Object:
        obj: Object = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        return self._insert(NAMESPACES, "", obj)

    def _insert(self, rt: ResourceType, namespace: str, obj: Object) -> Object:
        metadata = obj["metadata"]
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_rfc3339()
        metadata["resourceVersion"] = str(self._next_rv())
        if rt.namespaced:
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        if rt.custom:
            metadata["generation"] = 1
        self._bucket(rt)[(namespace, metadata["name"])] = obj
        self._emit("ADDED", rt, obj, None)
        return obj

    def _ensure_namespace(self, namespace: str) -> None:
        if ("", namespace) in self._bucket(NAMESPACES):
            return
        if not self.auto_create_namespaces:
            raise errors.not_found("namespaces", namespace, "", "namespaces")
        self._create_namespace(namespace)

    def _live(self, rt: ResourceType, namespace: str, name: str) -> Object:
        obj = self._bucket(rt).get((namespace, name))
        if obj is None:
            raise errors.not_found(rt.qualified, name, rt.group, rt.plural)
        return obj

    def _check_type(self, rt: ResourceType, body: Any) -> Object:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be a JSON object")
        if not body.get("kind"):
            raise ApiError(400, "Object 'Kind' is missing in the request body")
        if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
            raise ApiError(
                400,
                f"the API version in the data ({body.get('apiVersion')}) and kind ({body.get('kind')}) "
                f"do not match the expected {rt.api_version} {rt.kind}",
            )
        if not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "metadata must be an object")
        body["metadata"] = dict(body.get("metadata") or {})
        return body

    def _admit(self, rt: ResourceType, obj: Object, field_validation: FieldValidation, warnings: list[str] | None) -> Object:
        """Prune and default a custom resource by its schema, as the API server decodes it (openapi.py)."""
        if rt.schema is None:
            return obj
        obj, unknown = openapi.prune(obj, rt.schema)
        if unknown and field_validation == "Strict":
            raise errors.strict_decoding(rt.kind, rt.version, unknown)
        if unknown and field_validation == "Warn" and warnings is not None:
            warnings += [f'unknown field "{path}"' for path in unknown]
        defaulted: Object = openapi.default(obj, rt.schema)
        return defaulted

    def _validate(self, rt: ResourceType, obj: Object, old: Object | None = None, *, admission: bool = True) -> None:
        """The type's rules and schema (422), then its validating webhook (403), which sees only what passed them.

        `admission=False` for the status subresource: webhooks are registered for the main resource.
        """
        causes: list[tuple[str, str, str]] = [(field, message, "FieldValueInvalid") for field, message in validate_metadata(obj, rt)]
        if rt.schema is not None:
            causes += [(cause.field, cause.message, cause.reason) for cause in openapi.validate(obj, rt.schema)]
        if rt.validate is not None:
            causes += [(field, message, "FieldValueInvalid") for field, message in rt.validate(obj)]
        if causes:
            raise errors.invalid(rt.kind, str((obj.get("metadata") or {}).get("name", "")), rt.group, causes)
        if rt.webhook is not None and admission:
            name, rule = rt.webhook
            denial = rule(obj, old, list(self._bucket(rt).values()))
            if denial is not None:
                raise ApiError(403, f'admission webhook "{name}" denied the request: {denial}', reason="Forbidden")

    # -------------------------------------------------------------- reads

    def get(self, rt: ResourceType, namespace: str, name: str) -> Object:
        """The stored object: read-only."""
        with self._lock:
            return self._live(rt, namespace, name)

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> tuple[list[Object], int, str | None]:
        """Matching objects sorted by (namespace, name), the list's resourceVersion and a continue token."""
        labels, fields = labels or LabelSelector(), fields or FieldSelector()
        with self._lock:
            list_rv = self._rv
            after: tuple[str, str] | None = None
            if continue_token:
                token_rv, after = _decode_continue(continue_token)
                if token_rv <= self._compacted_rv:
                    raise ApiError(410, "The provided continue parameter is too old to display a consistent list result.")
                list_rv = token_rv
            keys = sorted(self._bucket(rt))
            items: list[Object] = []
            next_token = None
            for key in keys:
                if namespace is not None and key[0] != namespace:
                    continue
                if after is not None and key <= after:
                    continue
                obj = self._bucket(rt)[key]
                if not (labels.matches(obj) and fields.matches(obj)):
                    continue
                if limit and len(items) == limit:
                    next_token = _encode_continue(list_rv, _key_of(items[-1], rt))
                    break
                items.append(obj)
            return items, list_rv, next_token

    def objects(self, rt: ResourceType, namespace: str | None = None) -> list[Object]:
        return self.list_objects(rt, namespace)[0]

    # ------------------------------------------------------------- writes

    def create(
        self, rt: ResourceType, namespace: str, body: Any, *, field_validation: FieldValidation = "Warn", warnings: list[str] | None = None
    ) -> Object:
        """Store a new object. Unknown fields of a custom resource: see `_admit` (`warnings` collects the Warn ones)."""
        obj = self._check_type(rt, body)
        metadata = obj.setdefault("metadata", {})
        if rt.namespaced and metadata.get("namespace") not in (None, "", namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        if metadata.get("resourceVersion"):
            raise ApiError(400, "resourceVersion should not be set on objects to be created")
        if not metadata.get("name") and metadata.get("generateName"):
            suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            metadata["name"] = f"{metadata['generateName']}{suffix}"
        for key in SERVER_OWNED:
            metadata.pop(key, None)
        if rt.status_subresource:
            obj.pop("status", None)  # the status subresource owns status: ignored on create
        obj = self._admit(rt, obj, field_validation, warnings)
        self._validate(rt, obj)
        with self._lock:
            if rt.namespaced:
                self._ensure_namespace(namespace)
            slot = (namespace if rt.namespaced else "", metadata["name"])
            if slot in self._bucket(rt):
                raise errors.already_exists(rt.qualified, metadata["name"], rt.group, rt.plural)
            return self._insert(rt, slot[0], obj)

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        subresource: str | None = None,
        *,
        field_validation: FieldValidation = "Warn",
        warnings: list[str] | None = None,
    ) -> Object:
        obj = self._check_type(rt, body)
        metadata = obj.setdefault("metadata", {})
        if metadata.get("name") not in (None, name):
            raise ApiError(400, f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})")
        if rt.namespaced and metadata.get("namespace") not in (None, "", namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        metadata["name"] = name
        with self._lock:
            options: dict[str, Any] = {"field_validation": field_validation, "warnings": warnings}
            return self._update(rt, namespace, name, obj, subresource, unconditional_allowed=not rt.custom, **options)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch_type: PatchType,
        patch: Any,
        subresource: str | None = None,
        *,
        field_validation: FieldValidation = "Warn",
        warnings: list[str] | None = None,
    ) -> Object:
        if patch_type == "apply":
            raise ApiError(415, "server-side apply (application/apply-patch+yaml) is not supported by the emulator")
        if patch_type == "strategic" and rt.custom:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        with self._lock:
            live = self._live(rt, namespace, name)
            # Strategic merge on built-in types is treated as a merge patch (no list merge keys here).
            # json_patch works on a deep copy; merge_patch builds new dicts along the patched paths only.
            patched = json_patch(live, patch) if patch_type == "json" else merge_patch(live, patch)
            if not isinstance(patched, dict):
                raise ApiError(422, "the patched object is not a JSON object")
            patched_meta = patched["metadata"] = dict(patched.get("metadata") or {})  # written below: never the stored one
            if patched_meta.get("name") != name:
                raise ApiError(422, "metadata.name cannot be changed by a patch")
            if not patched_meta.get("resourceVersion"):
                patched_meta["resourceVersion"] = live["metadata"]["resourceVersion"]  # a patch is unconditional
            return self._update(
                rt, namespace, name, patched, subresource, unconditional_allowed=True, field_validation=field_validation, warnings=warnings
            )

    def _update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        obj: Object,
        subresource: str | None,
        *,
        unconditional_allowed: bool,
        field_validation: FieldValidation = "Warn",
        warnings: list[str] | None = None,
    ) -> Object:
        if subresource not in (None, "status") or (subresource == "status" and not rt.status_subresource):
            raise errors.not_found(rt.qualified, name, rt.group, rt.plural)
        namespace = namespace if rt.namespaced else ""
        live = self._live(rt, namespace, name)
        live_meta = live["metadata"]
        metadata = obj["metadata"]
        wanted_rv = metadata.get("resourceVersion")
        if not wanted_rv:
            if not unconditional_allowed:
                raise errors.invalid(
                    rt.kind, name, rt.group, [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")]
                )
        elif str(wanted_rv) != live_meta["resourceVersion"]:
            raise errors.conflict(
                rt.qualified,
                name,
                rt.group,
                rt.plural,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if metadata.get("uid") not in (None, "", live_meta["uid"]):
            raise errors.conflict(
                rt.qualified,
                name,
                rt.group,
                rt.plural,
                f"Precondition failed: UID in precondition: {metadata['uid']}, UID in object meta: {live_meta['uid']}",
            )
        if subresource == "status":
            updated = {**live, "metadata": dict(live_meta)}
            if "status" in obj:
                updated["status"] = obj["status"]
            else:
                updated.pop("status", None)
        else:
            updated = obj
            for key in SERVER_OWNED:
                if key in live_meta:
                    metadata[key] = live_meta[key]
                else:
                    metadata.pop(key, None)
            if rt.namespaced:
                metadata["namespace"] = namespace
            if rt.status_subresource:  # the main resource cannot change status
                if "status" in live:
                    updated["status"] = live["status"]
                else:
                    updated.pop("status", None)
        updated = self._admit(rt, updated, field_validation, warnings)
        if subresource != "status":
            metadata = updated["metadata"]
            if rt.custom and _content(updated) != _content(live):
                metadata["generation"] = int(live_meta.get("generation", 1)) + 1
        updated["metadata"]["resourceVersion"] = live_meta["resourceVersion"]
        self._validate(rt, updated, live, admission=subresource != "status")
        if updated == live:
            return live  # a no-op update neither bumps resourceVersion nor notifies watchers
        updated["metadata"]["resourceVersion"] = str(self._next_rv())
        self._bucket(rt)[(namespace, name)] = updated
        self._emit("MODIFIED", rt, updated, live)
        return updated

    def set_status(self, rt: ResourceType, namespace: str, name: str, status: Object | None) -> Object:
        """Write the status subresource as the type's own controller (e.g. KServe) would."""
        with self._lock:
            live = self._live(rt, namespace if rt.namespaced else "", name)
            body: Object = {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"]}}
            if status is not None:
                body["status"] = copy.deepcopy(status)
            return self._update(rt, namespace, name, body, "status" if rt.status_subresource else None, unconditional_allowed=True)

    def delete(self, rt: ResourceType, namespace: str, name: str, preconditions: dict[str, Any] | None = None) -> Object:
        namespace = namespace if rt.namespaced else ""
        with self._lock:
            live = self._live(rt, namespace, name)
            meta = live["metadata"]
            preconditions = preconditions or {}
            if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
                raise errors.conflict(
                    rt.qualified,
                    name,
                    rt.group,
                    rt.plural,
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}",
                )
            if preconditions.get("resourceVersion") and str(preconditions["resourceVersion"]) != meta["resourceVersion"]:
                raise errors.conflict(
                    rt.qualified,
                    name,
                    rt.group,
                    rt.plural,
                    f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            del self._bucket(rt)[(namespace, name)]
            gone = {**live, "metadata": dict(meta)}
            gone["metadata"]["resourceVersion"] = str(self._next_rv())
            self._emit("DELETED", rt, gone, live)
            return gone

    # ------------------------------------------------------------- watches

    def subscribe(
        self, rt: ResourceType, since: int | None, deliver: Deliver, namespace: str | None = None
    ) -> tuple[list[WatchEvent], Subscription, int]:
        """Start a watch: the backlog to send first, the live subscription and the resourceVersion the backlog reaches.

        `since=None` means "from now", with a synthetic ADDED for every existing object (as for
        resourceVersion "" or "0"); otherwise every recorded change after `since`.
        """
        with self._lock:
            if since is None:
                backlog = [
                    WatchEvent("ADDED", rt, obj, None, int(obj["metadata"]["resourceVersion"]))
                    for key, obj in sorted(self._bucket(rt).items())
                    if namespace is None or key[0] == namespace
                ]
            else:
                if since < self._compacted_rv:
                    raise ApiError(410, f"too old resource version: {since} ({self._compacted_rv})")
                backlog = [event for event in self._history if event.rv > since and event.rt is rt]
            subscription = Subscription(rt, deliver)
            self._subscriptions.append(subscription)
            return backlog, subscription, self._rv

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def close_watches(self) -> int:
        """End every open watch (as an API server restart or a load balancer would); returns how many."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.deliver(None)
        return len(subscriptions)

    def compact(self) -> int:
        """Forget the event history (as etcd compaction does): older resourceVersions now get 410 Expired."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv
            return self._rv

    def reset(self) -> None:
        self.close_watches()
        with self._lock:
            self._reset_state()
            self._history.clear()
            self._compacted_rv = self._rv  # a watch from before the reset must re-list: 410 Expired


def _key_of(obj: Object, rt: ResourceType) -> tuple[str, str]:
    metadata = obj["metadata"]
    return (metadata.get("namespace", "") if rt.namespaced else "", metadata["name"])


def _content(obj: Object) -> Object:
    """What a generation counts: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}
