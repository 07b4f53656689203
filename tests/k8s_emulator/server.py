"""The emulator over real HTTP: aiohttp on 127.0.0.1, in a background thread (or `python -m tests.k8s_emulator`).

`KubernetesEmulator` is what tests use: start it, point a kubeconfig or the `kubernetes`
client at `.url`, inject faults through `.faults`, play KServe with `.set_isvc_status()`
and inspect what was written with `.objects()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import shutil
import ssl
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml
from aiohttp import web

from tests.k8s_emulator.errors import ApiError, success_status
from tests.k8s_emulator.faults import FaultInjector, FaultRule
from tests.k8s_emulator.kserve import ModelState, isvc_status, recorded_deployment_mode
from tests.k8s_emulator.resources import INFERENCE_SERVICES, Object, Registry, ResourceType
from tests.k8s_emulator.selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from tests.k8s_emulator.store import DEFAULT_NAMESPACES, FIELD_VALIDATIONS, FieldValidation, ObjectStore, PatchType, WatchEvent
from tests.k8s_emulator.tables import IncludeObject, to_table, wants_table
from tests.k8s_emulator.tls import ServerCertificate, self_signed

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

ADMIN_PREFIX = "/_emulator"
REQUEST_LOG_SIZE = 100_000
DEFAULT_WATCH_TIMEOUT_S = 1800
PATCH_TYPES: dict[str, PatchType] = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-stokehold-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None, content_type: str = "application/json") -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status, headers=headers, content_type=content_type)


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code, headers=exc.headers)


def _field_validation(request: web.Request) -> FieldValidation:
    """The `fieldValidation` directive; Warn when the client sends none, as the API server defaults it."""
    value = request.query.get("fieldValidation") or "Warn"
    if value not in FIELD_VALIDATIONS:
        raise ApiError(400, f'fieldValidation: Unsupported value: "{value}": supported values: "Ignore", "Strict", "Warn"')
    return value


def _written(body: Any, warnings: list[str], status: int = 200) -> web.Response:
    """A write's answer, with a `Warning` header (code 299, as the API server sends them) per unknown field dropped."""
    response = _json(body, status)
    for text in warnings:
        response.headers.add("Warning", f"299 - {json.dumps(text)}")
    return response


@dataclass(frozen=True)
class Target:
    """What a resource URL addresses."""

    rt: ResourceType
    namespace: str | None  # None: all namespaces (or a cluster-scoped type)
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class ApiRequest:
    """One resource request, in the terms RBAC authorizes it (a request log for least-privilege tests)."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str  # "" for the core group
    resource: str  # the plural, with "/<subresource>" for a subresource
    namespace: str | None
    name: str | None

    @classmethod
    def of(cls, method: str, watch: bool, target: Target) -> ApiRequest:
        if method == "GET":
            verb = "get" if target.name is not None else ("watch" if watch else "list")
        elif method == "DELETE" and target.name is None:
            verb = "deletecollection"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())
        resource = target.rt.plural + (f"/{target.subresource}" if target.subresource else "")
        return cls(verb, target.rt.group, resource, target.namespace, target.name)


@dataclass(frozen=True)
class WatchOptions:
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    since: int | None
    timeout_s: float
    bookmarks: bool
    table: bool
    include: IncludeObject


class EmulatorApp:
    """The aiohttp application: discovery, resources, watches, faults, auth and admin routes."""

    def __init__(
        self, store: ObjectStore, faults: FaultInjector, token: str | None, bookmark_interval_s: float, *, anonymous: bool
    ) -> None:
        self.store = store
        self.faults = faults
        self.token = token
        self.anonymous = anonymous
        self.bookmark_interval_s = bookmark_interval_s
        # every resource request that passed authentication, in order (bounded: benchmarks send millions)
        self.requests: deque[ApiRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self.app = web.Application(middlewares=[self._guard], client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    # --------------------------------------------------------- middleware

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return cast(web.StreamResponse, await handler(request))
        try:
            self._authenticate(request)
            rule = self.faults.decide(request.method, request.path, request.headers.get("User-Agent", ""))
            if rule is not None:
                await self._inject(request, rule)
            response = cast(web.StreamResponse, await handler(request))
        except ApiError as exc:
            response = _error(exc)
        self.faults.answered(response.status)
        return response

    def _authenticate(self, request: web.Request) -> None:
        """A wrong token is always refused; no token at all only where anonymous requests are allowed."""
        if self.token is None:
            return
        credentials = request.headers.get("Authorization")
        if credentials is None and self.anonymous:
            return
        if credentials != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")

    async def _inject(self, request: web.Request, rule: FaultRule) -> None:
        """Raise the injected error; return (after sleeping) for a delay."""
        if rule.kind == "delay":
            await asyncio.sleep(rule.delay_s)
            return
        if rule.kind == "disconnect":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing can be answered on an aborted connection
        if rule.kind == "throttle":
            retry = str(rule.retry_after)
            raise ApiError(
                429,
                "Too many requests, please try again later.",
                details={"retryAfterSeconds": rule.retry_after},
                headers={"Retry-After": retry},
            )
        if rule.kind == "conflict":
            raise ApiError(
                409,
                "Operation cannot be fulfilled: the object has been modified; "
                "please apply your changes to the latest version and try again (injected)",
            )
        raise ApiError(rule.status, f"injected fault: HTTP {rule.status}", reason="InternalError" if rule.status >= 500 else None)

    # ----------------------------------------------------------- routing

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith(ADMIN_PREFIX):
            return await self._admin(request, path[len(ADMIN_PREFIX) :])
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(VERSION_INFO)
        registry = self.store.registry
        if path == "/api":
            return _json(registry.core_versions(request.host))
        if path == "/apis":
            return _json(registry.group_list())
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2:
            return _json(_or_404(registry.group(parts[1])))
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            return _json(_or_404(registry.resource_list(group, version)))
        target = self._resolve(parts)
        self.requests.append(ApiRequest.of(request.method, request.query.get("watch") in ("true", "1"), target))
        return await self._resource(request, target)

    def _resolve(self, parts: list[str]) -> Target:
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        registry = self.store.registry
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            scoped = registry.find(group, version, rest[2])
            if scoped is not None and scoped.namespaced:
                namespace, rest = rest[1], rest[2:]
        rt = registry.find(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if rt.namespaced and name is not None and namespace is None:
            raise ApiError(404, "the server could not find the requested resource")
        return Target(rt, namespace, name, subresource)

    # --------------------------------------------------------- resources

    async def _resource(self, request: web.Request, target: Target) -> web.StreamResponse:
        rt, name, method = target.rt, target.name, request.method
        namespace = target.namespace if rt.namespaced else ""
        if target.subresource is not None:
            if target.subresource != "status" or not rt.status_subresource:
                raise ApiError(404, "the server could not find the requested resource")
            if method not in ("GET", "PUT", "PATCH"):
                raise ApiError(405, "the server does not allow this method on the requested resource")
        if name is None:
            if method == "GET":
                query = request.query
                if query.get("watch") in ("true", "1"):
                    return await self._watch(request, rt, self._watch_options(request, target))
                return self._list(request, target)
            if method == "POST":
                if rt.namespaced and target.namespace is None:
                    raise ApiError(405, "the server does not allow this method on the requested resource")
                warnings: list[str] = []
                created = self.store.create(
                    rt, namespace or "", await _body(request), field_validation=_field_validation(request), warnings=warnings
                )
                return _written(created, warnings, 201)
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if method == "GET":
            obj = self.store.get(rt, namespace or "", name)
            if wants_table(request.headers.get("Accept", "")):
                return _json(to_table(rt, [obj], include=_include(request)))
            return _json(obj)
        if method == "PUT":
            warnings = []
            replaced = self.store.replace(
                rt,
                namespace or "",
                name,
                await _body(request),
                target.subresource,
                field_validation=_field_validation(request),
                warnings=warnings,
            )
            return _written(replaced, warnings)
        if method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(
                    415, f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}"
                )
            warnings = []
            patched = self.store.patch(
                rt,
                namespace or "",
                name,
                patch_type,
                await _body(request),
                target.subresource,
                field_validation=_field_validation(request),
                warnings=warnings,
            )
            return _written(patched, warnings)
        if method == "DELETE":
            options = await _body(request, optional=True) or {}
            gone = self.store.delete(rt, namespace or "", name, options.get("preconditions") if isinstance(options, dict) else None)
            if rt.custom:  # custom resources answer with the deleted object, built-in types with a Status
                return _json(gone)
            return _json(success_status(name, rt.group, rt.plural, gone["metadata"]["uid"]))
        raise ApiError(405, "the server does not allow this method on the requested resource")

    def _list(self, request: web.Request, target: Target) -> web.Response:
        query = request.query
        rt = target.rt
        limit = _int(query.get("limit"), "limit") or 0
        items, list_rv, token = self.store.list_objects(
            rt,
            target.namespace if rt.namespaced else None,
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
            limit,
            query.get("continue") or None,
        )
        list_meta: Object = {"resourceVersion": str(list_rv)}
        if token:
            list_meta["continue"] = token
        if wants_table(request.headers.get("Accept", "")):
            return _json(to_table(rt, items, include=_include(request), list_meta=list_meta))
        return _json({"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": list_meta, "items": items})

    def _watch_options(self, request: web.Request, target: Target) -> WatchOptions:
        query = request.query
        raw_rv = query.get("resourceVersion", "")
        since = None if raw_rv in ("", "0") else _int(raw_rv, "resourceVersion")
        timeout = _int(query.get("timeoutSeconds"), "timeoutSeconds")
        return WatchOptions(
            namespace=target.namespace if target.rt.namespaced else None,
            labels=parse_label_selector(query.get("labelSelector")),
            fields=parse_field_selector(query.get("fieldSelector")),
            since=since,
            timeout_s=float(timeout) if timeout else DEFAULT_WATCH_TIMEOUT_S,
            bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
            table=wants_table(request.headers.get("Accept", "")),
            include=_include(request),
        )

    async def _watch(self, request: web.Request, rt: ResourceType, options: WatchOptions) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

        def deliver(event: WatchEvent | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server is stopping
                loop.call_soon_threadsafe(queue.put_nowait, event)

        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        response.enable_chunked_encoding()
        try:
            backlog, subscription, reached = self.store.subscribe(rt, options.since, deliver, options.namespace)
        except ApiError as exc:  # a watch answers 200, then reports 410 Expired as an ERROR event
            await response.prepare(request)
            await response.write(_line({"type": "ERROR", "object": exc.status()}))
            await response.write_eof()
            return response
        await response.prepare(request)
        first_table = True
        try:
            deadline = loop.time() + options.timeout_s
            pending: list[WatchEvent | None] = list(backlog)
            while True:
                for event in pending:
                    if event is None:
                        return response
                    reached = max(reached, event.rv)
                    kind = _visible(event, options)
                    if kind is not None:
                        await response.write(_line({"type": kind, "object": self._watch_object(rt, event.obj, options, first_table)}))
                        first_table = False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if options.bookmarks:
                        await response.write(_line(_bookmark(rt, reached)))
                    break
                try:
                    pending = [await asyncio.wait_for(queue.get(), min(remaining, self.bookmark_interval_s))]
                except TimeoutError:
                    pending = []
                    if options.bookmarks and loop.time() < deadline:
                        await response.write(_line(_bookmark(rt, reached)))
                while not queue.empty():
                    pending.append(queue.get_nowait())
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            self.store.unsubscribe(subscription)
        return response

    def _watch_object(self, rt: ResourceType, obj: Object, options: WatchOptions, first: bool) -> Object:
        if not options.table:
            return obj
        return to_table(rt, [obj], include=options.include, with_columns=first)

    # --------------------------------------------------------------- admin

    async def _admin(self, request: web.Request, path: str) -> web.Response:
        try:
            if path == "/stats" and request.method == "GET":
                return _json({**self.faults.stats(), "resourceVersion": self.store.resource_version})
            if path == "/faults" and request.method == "POST":
                rule = self.faults.add_rule(FaultRule.from_json(await _body(request)))
                return _json({"added": rule.kind}, 201)
            if path == "/faults" and request.method == "DELETE":
                self.faults.clear()
                return _json({"cleared": True})
            if path == "/reset" and request.method == "POST":
                self.store.reset()
                self.faults.clear()
                return _json({"reset": True})
            if path == "/close-watches" and request.method == "POST":
                return _json({"closed": self.store.close_watches()})
            if path == "/compact" and request.method == "POST":
                return _json({"compacted": self.store.compact()})
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "isvc-status" and request.method == "PUT":
                options = await _body(request)
                live = self.store.get(INFERENCE_SERVICES, parts[1], parts[2])
                options.setdefault("deployment_mode", recorded_deployment_mode(live))
                status = isvc_status(parts[2], parts[1], **options)
                return _json(self.store.set_status(INFERENCE_SERVICES, parts[1], parts[2], status))
            raise ApiError(404, f"no admin route {request.method} {path}")
        except ApiError as exc:
            return _error(exc)
        except (TypeError, ValueError) as exc:
            return _error(ApiError(400, str(exc)))


def _or_404(document: Object | None) -> Object:
    if document is None:
        raise ApiError(404, "the server could not find the requested resource")
    return document


def _int(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"{what} must be an integer, not {value!r}") from None


def _include(request: web.Request) -> IncludeObject:
    value = request.query.get("includeObject", "Metadata")
    if value not in ("None", "Metadata", "Object"):
        raise ApiError(400, f"includeObject must be None, Metadata or Object, not {value!r}")
    return cast(IncludeObject, value)


async def _body(request: web.Request, *, optional: bool = False) -> Any:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return None
        raise ApiError(400, "the request has no body")
    try:
        return json.loads(raw)
    except ValueError:
        try:  # kubectl may send YAML for apply patches; plain JSON everywhere else
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _line(event: Object) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _bookmark(rt: ResourceType, rv: int) -> Object:
    return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(rv)}}}


def _visible(event: WatchEvent, options: WatchOptions) -> str | None:
    """The event type this watch sees, or None: an object leaving the selector reads as DELETED, entering as ADDED."""
    if options.namespace is not None and event.obj["metadata"].get("namespace") != options.namespace:
        return None

    def matches(obj: Object | None) -> bool:
        return obj is not None and options.labels.matches(obj) and options.fields.matches(obj)

    if event.type == "ADDED":
        return "ADDED" if matches(event.obj) else None
    if event.type == "DELETED":
        return "DELETED" if matches(event.old) else None
    now, before = matches(event.obj), matches(event.old)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return None


class KubernetesEmulator:
    """A Kubernetes API server emulator on 127.0.0.1, served from a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = "stokehold-emulator-token",
        tls: bool = True,
        seed: int = 0,
        history_limit: int = 10_000,
        namespaces: tuple[str, ...] = DEFAULT_NAMESPACES,
        auto_create_namespaces: bool = True,
        bookmark_interval_s: float = 30.0,
        registry: Registry | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.tls = tls
        self.certificate: ServerCertificate | None = None
        self.store = ObjectStore(
            registry, history_limit=history_limit, namespaces=namespaces, auto_create_namespaces=auto_create_namespaces
        )
        self.faults = FaultInjector(seed)
        # client-go sends no credentials over plain HTTP, so without TLS requests without a token are let in.
        self._app = EmulatorApp(self.store, self.faults, token, bookmark_interval_s, anonymous=not tls)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._workdir: Path | None = None
        self.kubeconfig: Path | None = None
        self._clients: list[ApiClient] = []

    # ----------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> KubernetesEmulator:
        self._workdir = Path(tempfile.mkdtemp(prefix="k8s-emulator-"))
        if self.tls:
            self.certificate = self_signed(self._workdir, self.host)
        self._thread = threading.Thread(target=self._serve, name="k8s-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._failure}") from self._failure
        self.kubeconfig = self.write_kubeconfig(self._workdir / "kubeconfig")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self._app.app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0)
        try:
            loop.run_until_complete(runner.setup())
            ssl_context = None
            if self.certificate is not None:
                ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ssl_context.load_cert_chain(self.certificate.cert_file, self.certificate.key_file)
            site = web.TCPSite(runner, self.host, self.port, backlog=1024, ssl_context=ssl_context)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()
        self.store.close_watches()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> KubernetesEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- clients

    def write_kubeconfig(self, path: Path, *, namespace: str = "default", insecure: bool = False) -> Path:
        """A kubeconfig with the server URL, the bearer token and the certificate (or `insecure-skip-tls-verify`)."""
        user: Object = {"token": self.token} if self.token else {}
        cluster: Object = {"server": self.url}
        if self.certificate is not None:
            if insecure:
                cluster["insecure-skip-tls-verify"] = True
            else:
                cluster["certificate-authority-data"] = base64.b64encode(self.certificate.pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": cluster}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
            "current-context": "emulator",
            "preferences": {},
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
        return path

    def configuration(self) -> Configuration:
        from kubernetes.client import Configuration

        configuration = Configuration(host=self.url)
        if self.certificate is not None:
            configuration.ssl_ca_cert = str(self.certificate.cert_file)
        if self.token:
            configuration.api_key = {"BearerToken": self.token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration

    def api_client(self, *, user_agent: str | None = None) -> ApiClient:
        """A `kubernetes` ApiClient for this emulator; closed when the emulator stops."""
        from kubernetes.client import ApiClient

        client = ApiClient(self.configuration())
        if user_agent is not None:
            client.user_agent = user_agent
        self._clients.append(client)
        return client

    # ------------------------------------------------------------- helpers

    def objects(self, kind: str, namespace: str | None = None) -> list[Object]:
        """Copies of every stored object of a type (`isvc`, `inferenceservices`, `Lease`, ...), by namespace and name."""
        return copy.deepcopy(self.store.objects(self.store.registry.by_name(kind), namespace))

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        try:
            return copy.deepcopy(self.store.get(self.store.registry.by_name(kind), namespace, name))
        except ApiError:
            return None

    def set_isvc_status(
        self,
        namespace: str,
        name: str,
        *,
        ready: bool | None,
        reason: str | None = None,
        message: str | None = None,
        url: str | None = None,
        model_state: ModelState | None = None,
        observed_generation: int | None = -1,
        deployment_mode: str | None = None,
    ) -> Object:
        """Act as KServe: give an InferenceService a status (see `kserve.isvc_status`).

        `observed_generation=-1` (the default) means "the object's current generation"; `deployment_mode`
        (default: what KServe v0.16.0 records, `kserve.recorded_deployment_mode`) becomes `status.deploymentMode`,
        e.g. "Serverless" for an object an older KServe created.
        """
        live = self.store.get(INFERENCE_SERVICES, namespace, name)
        if observed_generation == -1:
            observed_generation = int(live["metadata"].get("generation", 1))
        status = isvc_status(
            name,
            namespace,
            ready=ready,
            reason=reason,
            message=message,
            url=url,
            model_state=model_state,
            observed_generation=observed_generation,
            deployment_mode=deployment_mode or recorded_deployment_mode(live),
        )
        return copy.deepcopy(self.store.set_status(INFERENCE_SERVICES, namespace, name, status))

    def add_namespace(self, name: str) -> Object:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        return copy.deepcopy(self.store.create(self.store.registry.by_name("namespaces"), "", namespace))

    def requests(self) -> list[ApiRequest]:
        """The resource requests served since the last `reset()` (the latest 100,000), oldest first."""
        return list(self._app.requests)

    def close_watches(self) -> int:
        return self.store.close_watches()

    def compact(self) -> int:
        return self.store.compact()

    def reset(self) -> None:
        """Back to a fresh server: objects, faults, counters and the request log cleared; open watches are closed."""
        self.store.reset()
        self.faults.clear()
        self._app.requests.clear()


@contextlib.contextmanager
def running_emulator(**options: Any) -> Iterator[KubernetesEmulator]:
    emulator = KubernetesEmulator(**options)
    with emulator:
        yield emulator
