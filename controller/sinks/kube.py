"""The Kubernetes sink: InferenceServices written through the API server with the `kubernetes` client.

Why read-then-replace with the live `resourceVersion`, not server-side apply:

- we own the whole `spec` of a managed InferenceService, so a full replace is the honest
  operation: a field we stop rendering disappears, instead of lingering because some
  field manager still claims it;
- optimistic concurrency makes a concurrent writer visible: a stale `resourceVersion`
  answers 409 Conflict and the event is retried against the new live object, nothing is
  silently merged (a second controller replica that lost its lease cannot clobber the
  leader's write);
- the read we need anyway (refuse foreign objects, skip writes whose content hash already
  matches) hands us the `resourceVersion` for free;
- it works on every API server, including ones without server-side apply (our emulator).

The sink remembers the metadata and status of what it last wrote, read or listed (compact
JSON, per object), so updating an object it wrote itself is a single PUT conditional on the
remembered `resourceVersion`, not a GET and a PUT. If anyone changed the object since, that
PUT answers 409 Conflict (404 if it was deleted): the sink forgets, reads the object and goes
the usual way below, so nothing of theirs is overwritten and nothing foreign is touched. A
write whose content hash matches what it remembers is still checked against a fresh read.

Metadata that others add (labels, annotations, finalizers, owner references) and the
status survive a replace: only the label/annotation keys stokehold wrote last time
(recorded in the `stokehold.dev/applied-keys` annotation) are ours to change or drop.

An object the sink has not seen yet is created straight away (one request); creation never
overwrites, so if it existed after all (409 AlreadyExists) the sink reads it and carries on
as above. The client is synchronous: calls run on a private thread pool with a connection
pool of the same size, so `workers` writes can be in flight at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import urllib3
from kubernetes.client import ApiClient, CustomObjectsApi, V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException

from controller.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE, Object, content_hash_of, is_managed
from controller.sinks.base import ApplyAction, NotManagedError, PermanentSinkError, SinkError, TransientSinkError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
APPLIED_KEYS_ANNOTATION = "stokehold.dev/applied-keys"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
LIST_PAGE_SIZE = 500
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODE_OF_NAME = {"Knative": "Knative", "Serverless": "Knative", "Standard": "Standard", "RawDeployment": "Standard"}
# Retrying these cannot help: the request itself is wrong or not allowed.
PERMANENT_STATUSES = frozenset({400, 403, 405, 406, 413, 415, 422})


# ----------------------------------------------------------------- pure helpers


def applied_keys(obj: Object) -> tuple[set[str], set[str]]:
    """The label and annotation keys stokehold wrote to this object last time."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(APPLIED_KEYS_ANNOTATION)
    if not raw:
        return set(), set()
    try:
        recorded = json.loads(raw)
        return set(recorded.get("labels", [])), set(recorded.get("annotations", []))
    except (ValueError, AttributeError, TypeError):
        return set(), set()


def with_applied_keys(desired: Object) -> Object:
    """`desired` plus the annotation recording which label/annotation keys it sets."""
    obj = copy.deepcopy(desired)
    metadata = obj.setdefault("metadata", {})
    labels = metadata.get("labels") or {}
    annotations = metadata.setdefault("annotations", {})
    own = sorted(k for k in annotations if k != APPLIED_KEYS_ANNOTATION)
    annotations[APPLIED_KEYS_ANNOTATION] = json.dumps({"labels": sorted(labels), "annotations": own}, separators=(",", ":"))
    return obj


def merge_for_replace(live: Object, desired: Object) -> Object:
    """The object to PUT: our spec and metadata keys over the live object's foreign metadata and status.

    Keys we set last time but no longer render (e.g. `serving.kserve.io/stop` on resume) are
    removed; keys someone else added stay. The live `resourceVersion` makes the write conditional.
    """
    ours = with_applied_keys(desired)
    live_meta = live.get("metadata") or {}
    our_meta = ours["metadata"]
    old_labels, old_annotations = applied_keys(live)

    def merged(field: str, previously_ours: set[str]) -> dict[str, str]:
        foreign = {k: v for k, v in (live_meta.get(field) or {}).items() if k not in previously_ours}
        return foreign | (our_meta.get(field) or {})

    metadata = {key: value for key, value in live_meta.items() if key not in ("labels", "annotations", "managedFields")}
    metadata["labels"] = merged("labels", old_labels)
    metadata["annotations"] = merged("annotations", old_annotations | {APPLIED_KEYS_ANNOTATION})
    # KServe 0.16.0 refuses an update whose deploymentMode annotation is not the name it recorded in status, even
    # the other name of the same mode (Serverless/Knative, RawDeployment/Standard, e.g. after an upgrade): keep its name
    recorded = str((live.get("status") or {}).get("deploymentMode") or "")
    rendered = metadata["annotations"].get(DEPLOYMENT_MODE_ANNOTATION)
    if rendered and recorded != rendered and MODE_OF_NAME.get(recorded) == MODE_OF_NAME.get(rendered):
        metadata["annotations"][DEPLOYMENT_MODE_ANNOTATION] = recorded
    result: Object = {key: value for key, value in ours.items() if key not in ("metadata", "status")}
    result["metadata"] = metadata
    if "status" in live:
        result["status"] = live["status"]
    return result


def retry_after_of(exc: ApiException) -> float | None:
    """Seconds from a `Retry-After` header, or from the Status body's `details.retryAfterSeconds`."""
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass  # an HTTP date: fall back to the body, then to the consumer's own backoff
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
        seconds = details.get("retryAfterSeconds")
        return float(seconds) if seconds is not None else None
    except (ValueError, AttributeError, TypeError):
        return None


def _status_body(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(exc: ApiException) -> str:
    return str(_status_body(exc).get("reason") or "")


def _message(exc: ApiException) -> str:
    return str(_status_body(exc).get("message") or exc.reason or "no reason given")


def sink_error(exc: BaseException, what: str) -> SinkError:
    """How a failed API call maps to the consumer's next step (retry later, or dead-letter)."""
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        text = f"{what}: HTTP {status} {_message(exc)}"
        if status == 429:
            return TransientSinkError(text, retry_after=retry_after_of(exc))
        if status in PERMANENT_STATUSES:
            return PermanentSinkError(text)
        if status == 0 or status >= 500 or status in (401, 404, 408, 409, 410):
            # 0: the client could not read an answer; 401: credentials may be rotating;
            # 404/409/410: the object changed under us, the next attempt reads it again.
            return TransientSinkError(text, retry_after=retry_after_of(exc) if status >= 500 else None)
        return PermanentSinkError(text)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError | socket.timeout):
        return TransientSinkError(f"{what}: {type(exc).__name__}: {exc}")
    return PermanentSinkError(f"{what}: {type(exc).__name__}: {exc}")


def _client_with_pool(api_client: ApiClient, size: int) -> ApiClient:
    """A client with the same configuration (auth and TLS included) and a connection pool of `size`.

    urllib3 would otherwise sleep out a `Retry-After` and repeat GET/PUT/DELETE on its own,
    holding a worker thread; the consumer's nak-with-delay is the place to wait. Connecting
    is still retried (nothing was sent yet); a failed read is not (a write may have landed).
    """
    configuration = copy.deepcopy(api_client.configuration)
    configuration.connection_pool_maxsize = size
    configuration.retries = urllib3.Retry(total=3, connect=3, read=0, redirect=0, status=0, respect_retry_after_header=False)
    client = ApiClient(configuration)
    client.user_agent = api_client.user_agent
    return client


# ------------------------------------------------------------------------ sink


class PooledApi:
    """What the Kubernetes sinks share: their own client and connection pool, worker threads for the blocking
    client, the namespaces served, and one way to turn a failed call into a `SinkError`."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespaces: Iterable[str] | None,
        workers: int,
        request_timeout: float | tuple[float, float],
        thread_name: str,
    ) -> None:
        self.namespaces = frozenset(namespaces) if namespaces else None
        self.request_timeout = request_timeout
        self._client = _client_with_pool(api_client, workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)

    async def _call(self, what: str, fn: Callable[..., object], *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """Run one client call on the pool; None for 404 when `missing_ok`, else errors become `SinkError`s."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, _request_timeout=self.request_timeout, **kwargs))
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise sink_error(exc, what) from exc
        except Exception as exc:
            raise sink_error(exc, what) from exc

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._client.close)


class KubeSink(PooledApi):
    """`Sink` on the Kubernetes API (`serving.kserve.io/v1beta1` InferenceServices)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespaces: Iterable[str] | None = None,
        workers: int = 16,
        request_timeout: float | tuple[float, float] = (5.0, 30.0),
    ) -> None:
        super().__init__(api_client, namespaces=namespaces, workers=workers, request_timeout=request_timeout, thread_name="kube-sink")
        self._api = CustomObjectsApi(self._client)
        self._known: set[tuple[str, str]] = set()  # objects seen to exist (a hint only: every write is still checked)
        # (namespace, name) → metadata and status of the object as last written, read or listed, as JSON:
        # bytes hold nothing for the garbage collector to trace, however many objects the sink manages
        self._remembered: dict[tuple[str, str], bytes] = {}

    def _check_namespace(self, namespace: str) -> None:
        if not namespace:
            raise PermanentSinkError("the InferenceService has no metadata.namespace")
        if self.namespaces is not None and namespace not in self.namespaces:
            raise PermanentSinkError(f"namespace {namespace!r} is not one this controller manages ({', '.join(sorted(self.namespaces))})")

    async def _read(self, namespace: str, name: str) -> Object | None:
        obj: Object | None = await self._call(
            f"read {namespace}/{name}", self._api.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, missing_ok=True
        )
        if obj is None:
            self._forget(namespace, name)
        else:
            self._remember(obj)
        return obj

    def _remember(self, obj: Object) -> None:
        """Note a live object; only a managed one that is not being deleted may be replaced without a fresh read."""
        metadata = obj.get("metadata") or {}
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        self._known.add(key)
        if not is_managed(obj) or metadata.get("deletionTimestamp"):
            self._remembered.pop(key, None)
            return
        kept = {k: v for k, v in metadata.items() if k != "managedFields"}
        self._remembered[key] = msgspec.json.encode({"metadata": kept, "status": obj["status"]} if "status" in obj else {"metadata": kept})

    def _recall(self, namespace: str, name: str) -> Object | None:
        remembered = self._remembered.get((namespace, name))
        return None if remembered is None else msgspec.json.decode(remembered)

    def _forget(self, namespace: str, name: str) -> None:
        self._known.discard((namespace, name))
        self._remembered.pop((namespace, name), None)

    async def _create(self, namespace: str, name: str, body: Object, *, exists_ok: bool = False) -> bool:
        """Create; False if it already exists and `exists_ok` (any other 409 stays a transient conflict)."""
        try:
            created = await self._call(
                f"create {namespace}/{name}", self._api.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body
            )
        except TransientSinkError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status == 404:  # on create, only the namespace can be missing
                raise PermanentSinkError(
                    f"cannot create InferenceService {namespace}/{name}: namespace {namespace!r} does not exist"
                ) from cause
            if exists_ok and isinstance(cause, ApiException) and cause.status == 409 and _reason(cause) == "AlreadyExists":
                return False
            raise
        self._known.add((namespace, name))
        if isinstance(created, dict):
            self._remember(created)
        return True

    async def _replace(self, namespace: str, name: str, body: Object) -> None:
        try:
            replaced = await self._call(
                f"replace {namespace}/{name}", self._api.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body
            )
        except SinkError:
            self._remembered.pop((namespace, name), None)  # whatever happened, the next write reads the object first
            raise
        if isinstance(replaced, dict):
            self._remember(replaced)
        else:
            self._remembered.pop((namespace, name), None)

    async def _replace_remembered(self, namespace: str, name: str, isvc: Object) -> bool:
        """Replace on top of what the sink remembers writing; False when that is not the live object any more."""
        remembered = self._recall(namespace, name)
        wanted = content_hash_of(isvc)
        if remembered is None or wanted is None or content_hash_of(remembered) == wanted:
            return False  # nothing remembered, or (by what we remember) nothing to write: let a fresh read decide
        try:
            await self._replace(namespace, name, merge_for_replace(remembered, isvc))
        except TransientSinkError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status in (404, 409):
                return False  # changed or deleted behind our back: read it and start over
            raise
        return True

    async def apply(self, isvc: Object) -> ApplyAction:
        if not is_managed(isvc):
            raise PermanentSinkError("refusing to write an object that is not labelled as managed by stokehold")
        metadata = isvc.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
        self._check_namespace(namespace)
        if not name:
            raise PermanentSinkError("the InferenceService has no metadata.name")
        where = f"{namespace}/{name}"
        body = with_applied_keys(isvc)
        # An object this sink has not seen is most likely new: create straight away (one request, not
        # two). Creating never overwrites: if it exists after all, read it and go the usual way.
        if (namespace, name) not in self._known and await self._create(namespace, name, body, exists_ok=True):
            return ApplyAction.CREATED
        if await self._replace_remembered(namespace, name, isvc):
            return ApplyAction.UPDATED
        live = await self._read(namespace, name)
        if live is None:
            await self._create(namespace, name, body)
            return ApplyAction.CREATED
        if not is_managed(live):
            raise NotManagedError(f"InferenceService {where} exists and is not labelled {MANAGED_SELECTOR}: not touching it")
        if (live.get("metadata") or {}).get("deletionTimestamp"):
            raise TransientSinkError(f"InferenceService {where} is being deleted; it will be created again once it is gone")
        wanted = content_hash_of(isvc)
        if wanted is not None and content_hash_of(live) == wanted:
            return ApplyAction.UNCHANGED
        await self._replace(namespace, name, merge_for_replace(live, isvc))
        return ApplyAction.UPDATED

    async def delete(self, namespace: str, name: str) -> bool:
        self._check_namespace(namespace)
        live = await self._read(namespace, name)
        if live is None:
            return False
        if not is_managed(live):
            raise NotManagedError(f"InferenceService {namespace}/{name} is not managed by stokehold: not deleting it")
        # The uid precondition makes sure we delete the object we just checked, not a successor of the same name.
        options = V1DeleteOptions(preconditions=V1Preconditions(uid=live["metadata"].get("uid")), propagation_policy="Background")
        deleted = await self._call(
            f"delete {namespace}/{name}",
            self._api.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body=options,
            missing_ok=True,
        )
        self._forget(namespace, name)
        return deleted is not None

    async def get(self, namespace: str, name: str) -> Object | None:
        self._check_namespace(namespace)
        return await self._read(namespace, name)

    async def list_managed(self) -> list[Object]:
        if self.namespaces is None:
            return await self._list_pages(None)
        found: list[Object] = []
        for namespace in sorted(self.namespaces):
            found += await self._list_pages(namespace)
        return found

    async def _list_pages(self, namespace: str | None) -> list[Object]:
        found: list[Object] = []
        token: str | None = None
        while True:
            page: Object | None
            if namespace is None:
                page = await self._call(
                    "list InferenceServices",
                    self._api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    label_selector=MANAGED_SELECTOR,
                    limit=LIST_PAGE_SIZE,
                    _continue=token,
                )
            else:
                page = await self._call(
                    f"list InferenceServices in {namespace}",
                    self._api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    label_selector=MANAGED_SELECTOR,
                    limit=LIST_PAGE_SIZE,
                    _continue=token,
                )
            page = page or {}
            items = page.get("items") or []
            self._known.update((str(i["metadata"].get("namespace", "")), str(i["metadata"].get("name", ""))) for i in items)
            managed = [item for item in items if is_managed(item)]
            for item in managed:
                self._remember(item)
            found += managed
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return found
