"""Wires the controller together: NATS, stream, sink, state, reconciler, consumer, leader election, ops.

Life of a controller:
1. serve /healthz, /readyz, /metrics; connect to NATS; make sure the streams exist;
2. rebuild the desired state from the stream (every instance, so a standby is warm);
3. when leading (always, without leader election): catch up with the stream, list the
   managed objects, reconcile everything once, then consume events durably, re-list
   the sink every `resync_interval_s`, retry templates the sink refused with backoff
   until it recovers, and (kube sink) watch the services' status;
4. on SIGTERM/SIGINT or lost leadership: stop fetching, finish the batch in hand,
   wait for status events to be confirmed, drain NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from kubernetes import config as k8s_config
from kubernetes.client import ApiClient, Configuration
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from controller.config import ControllerConfig
from controller.consumer import EventConsumer
from controller.leader import LeaderElector
from controller.metrics import ControllerMetrics
from controller.ops import OpsServer, Readiness
from controller.publisher import NatsPublisher
from controller.reconciler import Reconciler
from controller.sinks.base import Sink, TransientSinkError
from controller.sinks.cache import CacheSink, KubeCacheSink
from controller.sinks.dir import DirSink
from controller.sinks.kube import KubeSink
from controller.state import DesiredState
from controller.watcher import watch_status
from events.stream import StreamConfigMismatch, StreamSettings, config_differences
from events.types import StreamRole

log = logging.getLogger(__name__)
LEADER_STOP_GRACE_S = 30.0  # time to finish the batch in hand and release the Lease on shutdown


def build_api_client(config: ControllerConfig) -> ApiClient:
    """A `kubernetes` ApiClient: the kubeconfig given, else in-cluster, else ~/.kube/config."""
    configuration = Configuration()
    if config.kubeconfig is not None:
        k8s_config.load_kube_config(config_file=str(config.kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return ApiClient(configuration)


def build_sink(config: ControllerConfig, api_client: ApiClient | None, metrics: ControllerMetrics | None = None) -> Sink:
    if config.sink == "dir":
        assert config.dir is not None  # checked by ControllerConfig
        return DirSink(config.dir, config.namespaces, metrics=metrics)
    if api_client is None:
        raise ValueError("the kube sink needs a Kubernetes API client")
    return KubeSink(api_client, namespaces=config.namespaces)


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        *,
        sink: Sink | None = None,
        api_client: ApiClient | None = None,
    ) -> None:
        self.config = config
        self.metrics = ControllerMetrics()
        self.state = DesiredState(
            allowed_namespaces=config.allowed_namespaces,
            reserved_namespaces=config.reserved,
            allow_trust_remote_code=config.allow_trust_remote_code,
        )
        self.ops = OpsServer(self.metrics, self.readiness, config.metrics_host, config.metrics_port)
        self.role = "unknown" if config.leader_election else "leader"
        self.rebuilt = False
        self.nc: NatsClient | None = None
        self.reconciler: Reconciler | None = None
        self.consumer: EventConsumer | None = None
        self.publisher: NatsPublisher | None = None
        self._sink = sink
        self._api_client = api_client
        self._cache_sink: CacheSink | None = None
        self._stop = asyncio.Event()
        self._term: asyncio.Event | None = None  # set when the current leadership term ends
        self._started = asyncio.Event()
        self._elector: LeaderElector | None = None

    # ------------------------------------------------------------- interface

    def readiness(self) -> Readiness:
        connected = bool(self.nc is not None and self.nc.is_connected)
        role = self.role
        if role == "standby" and self._elector is not None and self._elector.observed_holder is None:
            role = "unknown"  # the Lease has not been read yet: leader or standby is not known
        return Readiness(nats_connected=connected, state_rebuilt=self.rebuilt, role=role)

    def stop(self) -> None:
        """Ask the controller to shut down gracefully (safe from a signal handler)."""
        self._stop.set()
        if self._term is not None:
            self._term.set()

    async def wait_started(self) -> None:
        """Returns once the controller leads (or stands by) with a rebuilt state and consumes."""
        await self._started.wait()

    async def run(self) -> None:
        await self.ops.start()
        log.info("ops endpoints listening", extra={"port": self.ops.port})
        sink: Sink | None = None
        try:
            self.nc = await self._connect()
            js = self.nc.jetstream()
            await self._ensure_streams(js)
            needs_kube = self.config.sink == "kube" or self.config.leader_election
            if needs_kube and self._api_client is None:
                self._api_client = build_api_client(self.config)
            sink = self._sink or build_sink(self.config, self._api_client, self.metrics)
            self.publisher = NatsPublisher(js, self.config.source, self.config.subject_root, self.metrics)
            if self.config.sink == "kube" and self._api_client is not None and self.config.render.model_cache_mode != "off":
                # pre-download Jobs and LocalModelCaches need a cluster: with the dir sink, replicas fill the cache themselves
                self._cache_sink = KubeCacheSink(self._api_client, namespaces=self.config.namespaces)
            self.reconciler = Reconciler(
                self.state, sink, self.config.render, self.publisher, self.metrics, sink_name=self.config.sink, cache_sink=self._cache_sink
            )
            self.consumer = EventConsumer(js, self.config, self.state, self.reconciler, self.publisher, self.metrics, client=self.nc)
            await self.consumer.rebuild_fully()
            self.rebuilt = True
            if self.config.leader_election:
                await self._elect()
            else:
                await self._lead()
        finally:
            await self._shutdown(sink)

    # -------------------------------------------------------------- internals

    async def _connect(self) -> NatsClient:
        async def reconnected() -> None:
            self.metrics.reconnects.inc()
            log.info("reconnected to NATS")

        async def disconnected() -> None:
            if not self._stop.is_set():
                log.warning("disconnected from NATS")

        # a stop (SIGTERM) ends the first connection attempts too, however many are left
        return await self.config.nats.connect(give_up=self._stop.is_set, reconnected_cb=reconnected, disconnected_cb=disconnected)

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        """Create the streams that are missing; existing ones are the operator's and are left as they are.

        Only the desired-state stream is required. A status or dead-letter stream that cannot be
        created (e.g. a stream of the one-stream layout still binds its subjects) is reported:
        `stokehold stream provision` splits them.
        """
        settings = StreamSettings(name=self.config.stream, subject_root=self.config.subject_root)
        for role in StreamRole:
            wanted = settings.config(role)
            name = str(wanted.name)
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                try:
                    await js.add_stream(wanted)
                except APIError as exc:
                    if role is StreamRole.DESIRED:
                        raise StreamConfigMismatch(name, {}, f"the server refused to create it: {exc.description}") from None
                    log.warning("cannot create the stream %s (%s): run `stokehold stream provision`", name, exc.description)
                    continue
                log.info("created the stream", extra={"stream": name})
                continue
            differences = config_differences(info.config, wanted)
            if "subjects" in differences:
                log.warning(
                    "the stream's subjects differ from what the controller expects", extra={"stream": name, "differences": str(differences)}
                )
            if role is StreamRole.DESIRED and ({"discard", "max_age"} & differences.keys()):
                log.warning(
                    "the desired-state stream may drop events (an age limit, or discard old): run `stokehold stream provision`",
                    extra={"stream": name, "differences": str(differences)},
                )

    async def _lead(self) -> None:
        """One leadership term: catch up, resync, then consume until stopped or leadership is lost."""
        assert self.consumer is not None and self.reconciler is not None
        term = self._term = asyncio.Event()
        if self._stop.is_set():
            return
        self.role = "leader"
        self.metrics.leader.set(1)
        try:
            await self.consumer.rebuild_fully()  # events that arrived while standing by
            clean = await self._resync(term, "initial reconciliation")
            subscription = await self.consumer.subscribe()
            self._started.set()
            background = [asyncio.create_task(self._resync_loop(term, clean)), asyncio.create_task(self._repair_loop(term))]
            watcher = self._start_watcher()
            if watcher is not None:
                background.append(watcher)
            try:
                await self.consumer.run(term, subscription)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        finally:
            self.metrics.leader.set(0)
            self._term = None

    async def _elect(self) -> None:
        """Stand by; lead whenever the Lease is ours. The consumer runs only while leading."""
        assert self._api_client is not None  # built in run() whenever leader election is on
        elector = LeaderElector(self._api_client, self.config.lease_namespace, self.config.lease_name, self.config.identity)
        self._elector = elector
        term_task: asyncio.Task[None] | None = None

        async def started_leading() -> None:
            nonlocal term_task
            term_task = asyncio.create_task(self._lead())

        async def stopped_leading() -> None:
            self.role = "standby"
            if self._term is not None:
                self._term.set()  # stop fetching; the batch in hand is finished before the Lease is released
            if term_task is not None:
                await asyncio.gather(term_task, return_exceptions=True)

        self.role = "standby"
        self._started.set()
        election = asyncio.create_task(elector.run(started_leading, stopped_leading))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({election, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        await elector.stop()  # stops leading (our work first), then releases the Lease
        try:
            await asyncio.wait_for(asyncio.shield(election), LEADER_STOP_GRACE_S)
        except TimeoutError:
            await _cancel(election)
        if term_task is not None:
            await asyncio.gather(term_task, return_exceptions=True)

    async def _resync(self, term: asyncio.Event, what: str) -> bool:
        """List the managed objects and reconcile every template; False when something must be retried.

        A sink that cannot be listed right now (API down) is not fatal: the cache stays empty,
        which only costs reads, and the resync loop tries again soon.
        """
        assert self.reconciler is not None
        try:
            await self.reconciler.prime()
        except TransientSinkError as exc:
            log.warning("%s: cannot list the managed objects yet: %s", what, exc)
            return False
        result = await self.reconciler.reconcile_all(term)
        log.info(what, extra={"writes": result.writes, "failures": len(result.failures), "retry": result.transient is not None})
        return result.transient is None

    async def _resync_loop(self, term: asyncio.Event, clean: bool) -> None:
        """Resync every `resync_interval_s` (changes made behind the controller's back are undone), sooner after a failure."""
        failures = 0 if clean else 1
        while True:
            interval = self.config.retry_delay(failures) if failures else self.config.resync_interval_s
            if interval <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.wait(), interval)
                return
            try:
                clean = await self._resync(term, "resync")
            except Exception:
                log.exception("resync failed")
                clean = False
            failures = 0 if clean else failures + 1

    async def _repair_loop(self, term: asyncio.Event) -> None:
        """Retry the templates the sink refused with a transient error, with backoff, until it recovers.

        Their events are nak'ed and retried as well, but an event gives up after its last
        delivery, and a resync may be far off (or off): this loop needs neither.
        """
        assert self.reconciler is not None
        reconciler = self.reconciler
        failures = 0
        while not term.is_set():
            if not reconciler.unsettled:
                failures = 0
                await _first(term.wait(), reconciler.troubled.wait())
                continue
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.wait(), self.config.retry_delay(failures))
                return
            try:
                result = await reconciler.retry_unsettled(term)
            except Exception:
                log.exception("retrying the sink failed")
                continue
            self.metrics.unsettled_templates.set(len(reconciler.unsettled))
            if result.transient is None and not reconciler.unsettled:
                log.info("the sink recovered", extra={"writes": result.writes, "attempts": failures})

    def _start_watcher(self) -> asyncio.Task[None] | None:
        """The status watcher (kube sink only) reports ready/failed/load status from the live objects."""
        if self.config.sink != "kube" or self._api_client is None or self.publisher is None:
            return None
        return asyncio.create_task(watch_status(self._api_client, self.publisher.report, namespaces=self.config.namespaces))

    async def _shutdown(self, sink: Sink | None) -> None:
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.flush()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception as exc:
                log.warning("NATS drain failed: %s", exc)
        if sink is not None:
            with contextlib.suppress(Exception):
                await sink.close()
        if self._cache_sink is not None:
            with contextlib.suppress(Exception):
                await self._cache_sink.close()
        await self.ops.stop()
        log.info("controller stopped")


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of `waits` completes; cancel the others."""
    tasks = [asyncio.create_task(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
