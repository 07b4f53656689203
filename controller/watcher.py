"""Watches managed InferenceServices and reports their load status (see `controller.status`).

One thread per scope (all namespaces, or each configured namespace) lists the managed
services (a page at a time), then watches from the list's `resourceVersion` with the `kubernetes` client's
`Watch`, resuming from the last `resourceVersion` it saw (bookmarks included). A 410 Gone
means that version is too old: list again. Other errors back off exponentially (with
jitter) and resume. The threads only hand raw changes to the event loop; one task there
keeps the last observation per service and calls `report` in order, so only transitions
are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from controller.labels import Object, is_managed
from controller.sinks.kube import GROUP, LIST_PAGE_SIZE, MANAGED_SELECTOR, PLURAL, VERSION
from controller.status import Observation, transition
from events.types import EventKind

log = logging.getLogger(__name__)

Report = Callable[[EventKind, BaseModel, str], Awaitable[None]]
Key = tuple[str, str]


@dataclass(frozen=True)
class Relisted:
    """A full list of one scope: services not in it are gone."""

    scope: str | None  # a namespace, or None for all namespaces
    objects: list[Object]


@dataclass(frozen=True)
class Changed:
    type: str  # ADDED, MODIFIED, DELETED
    obj: Object


def _key(obj: Object) -> Key:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


def _rv(obj: Object) -> str | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return str(value) if value else None


class _ScopeWatch:
    """The blocking list-then-watch loop of one scope, run in its own thread."""

    def __init__(self, owner: StatusWatcher, scope: str | None) -> None:
        self.owner = owner
        self.scope = scope
        self.resource_version: str | None = None
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"isvc-watch-{scope or 'all'}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def interrupt(self) -> None:
        current = self._watch
        if current is not None:
            current.stop()  # type: ignore[no-untyped-call]  # shuts the socket down: a blocked read returns at once

    def join(self, timeout: float) -> bool:
        """Wait for the thread, interrupting again meanwhile (a watch may have opened after the first stop)."""
        waited = 0.0
        while self._thread.is_alive() and waited < timeout:
            self.interrupt()
            self._thread.join(0.05)
            waited += 0.05
        return not self._thread.is_alive()

    def _list(self) -> tuple[list[Object], str | None]:
        """Every managed service of the scope, a page at a time, and the resourceVersion to watch from."""
        api, timeout = self.owner.api, self.owner.request_timeout
        items: list[Object] = []
        token: str | None = None
        while True:
            options: dict[str, Any] = {
                "label_selector": MANAGED_SELECTOR,
                "limit": LIST_PAGE_SIZE,
                "_continue": token,
                "_request_timeout": timeout,
            }
            if self.scope is None:
                page: Any = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, **options)
            else:
                page = api.list_namespaced_custom_object(GROUP, VERSION, self.scope, PLURAL, **options)
            items += page.get("items") or []
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if not token:
                return items, metadata.get("resourceVersion")

    def _stream(self) -> None:
        owner = self.owner
        current = self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        if owner.stopping.is_set():
            return
        if self.scope is None:
            fn: Callable[..., Any] = owner.api.list_cluster_custom_object
            args: tuple[str, ...] = (GROUP, VERSION, PLURAL)
        else:
            fn = owner.api.list_namespaced_custom_object
            args = (GROUP, VERSION, self.scope, PLURAL)
        for event in current.stream(  # type: ignore[no-untyped-call]
            fn,
            *args,
            label_selector=MANAGED_SELECTOR,
            resource_version=self.resource_version,
            timeout_seconds=owner.watch_timeout_s,
            allow_watch_bookmarks=True,
            _request_timeout=(owner.connect_timeout_s, owner.watch_timeout_s + 30),
        ):
            if owner.stopping.is_set():
                return
            kind, obj = event.get("type"), event.get("raw_object") or {}
            self.resource_version = _rv(obj) or self.resource_version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                owner.hand_over(Changed(str(kind), obj))

    def _run(self) -> None:
        owner = self.owner
        failures = 0
        while not owner.stopping.is_set():
            try:
                if self.resource_version is None:
                    objects, self.resource_version = self._list()
                    owner.relists += 1
                    owner.hand_over(Relisted(self.scope, objects))
                self._stream()
                failures = 0  # the server ended the watch (timeout): resume from where it stopped
            except ApiException as exc:
                if owner.stopping.is_set():
                    return
                if exc.status == 410:
                    log.info("watch resourceVersion %s expired: listing again", self.resource_version)
                    self.resource_version = None
                    continue
                failures += 1
                log.warning("InferenceService watch failed (HTTP %s %s); retrying", exc.status, exc.reason)
            except Exception as exc:
                if owner.stopping.is_set():
                    return
                failures += 1
                log.warning("InferenceService watch failed (%s: %s); retrying", type(exc).__name__, exc)
            if failures:
                owner.errors += 1
                owner.stopping.wait(owner.backoff(failures))


class StatusWatcher:
    def __init__(
        self,
        api_client: ApiClient,
        report: Report,
        *,
        namespaces: Iterable[str] | None = None,
        watch_timeout_s: int = 300,
        connect_timeout_s: float = 5.0,
        request_timeout: float | tuple[float, float] = (5.0, 30.0),
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.api = CustomObjectsApi(api_client)
        self.report = report
        self.scopes: list[str | None] = [*sorted(set(namespaces))] if namespaces else [None]
        self.watch_timeout_s = watch_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout = request_timeout
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stopping = threading.Event()
        self.relists = 0
        self.errors = 0
        self.observations: dict[Key, Observation | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Relisted | Changed | None] | None = None
        self._watches: list[_ScopeWatch] = []

    def backoff(self, failures: int) -> float:
        delay = min(self.backoff_max_s, self.backoff_s * 2.0 ** (failures - 1))
        return delay * random.uniform(0.5, 1.0)  # jitter: replicas do not retry in lockstep

    def hand_over(self, item: Relisted | Changed) -> None:
        """From a watch thread to the event loop."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or self.stopping.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            loop.call_soon_threadsafe(queue.put_nowait, item)

    async def run(self) -> None:
        """Watch and report until `stop()` is called or the task is cancelled."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self.stopping.clear()
        self._watches = [_ScopeWatch(self, scope) for scope in self.scopes]
        for scope_watch in self._watches:
            scope_watch.start()
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                await self._process(item)
        finally:
            self.stopping.set()
            for scope_watch in self._watches:
                scope_watch.interrupt()
            for scope_watch in self._watches:
                if not await asyncio.to_thread(scope_watch.join, 5.0):
                    log.warning("an InferenceService watch thread did not stop in time")

    async def stop(self) -> None:
        self.stopping.set()
        for scope_watch in self._watches:
            scope_watch.interrupt()
        if self._loop is not None and self._queue is not None:
            self._queue.put_nowait(None)

    async def _process(self, item: Relisted | Changed) -> None:
        if isinstance(item, Relisted):
            present = {_key(obj) for obj in item.objects}
            for key in [k for k in self.observations if (item.scope is None or k[0] == item.scope) and k not in present]:
                del self.observations[key]
            for obj in item.objects:
                await self._observe(obj)
        elif item.type == "DELETED":
            self.observations.pop(_key(item.obj), None)
        else:
            await self._observe(item.obj)

    async def _observe(self, obj: Object) -> None:
        if not is_managed(obj):
            return
        key = _key(obj)
        observation, events = transition(self.observations.get(key), obj)
        self.observations[key] = observation
        for event in events:
            try:
                await self.report(event.kind, event.data, event.template)
            except Exception:
                log.exception("could not report %s for %s/%s", event.kind.value, *key)


async def watch_status(api_client: ApiClient, report: Report, *, namespaces: Iterable[str] | None = None, **options: Any) -> None:
    """Run a `StatusWatcher` until cancelled (what the controller starts while it leads)."""
    watcher = StatusWatcher(api_client, report, namespaces=namespaces, **options)
    try:
        await watcher.run()
    finally:
        await watcher.stop()
