"""Level-based reconciliation: make the sink match the desired InferenceServices of a template.

After every event the controller renders every deployment of the affected template
from the desired state and compares each object's content hash with a cache of the
live hashes (filled by `list_managed()` at start and kept current after each write),
so an unchanged object costs no API call. Objects that are not labelled as managed by
stokehold are never touched (the sinks refuse them).

A live object that is no longer desired is deleted only on explicit evidence: a
`deployment.deleted` of it, or the deletion of every version it could serve
(`DesiredState.removal_allowed`). An object the desired state merely knows nothing about
(events deleted from the stream, a stream recreated, a rebuild from an incomplete history)
is kept and reported once: a warning, the `stokehold_controller_kept_objects` gauge and a
`deployment.applied` with action `kept`. It stays until a `deployment.deleted` names it.

Before the InferenceServices, the model cache of the template's cached versions (its latest and those
deployed) is warmed: a pre-download Job in each namespace the template is deployed to (and the configured
`cache_namespaces`), or a LocalModelCache (controller/render_cache.py). These are only created, never
changed, and only when missing; a failure is reported (`template.version.load_status` FAILED) and retried
by later reconciliations, and never holds up the InferenceServices: a replica fills the cache itself.

Templates whose last reconciliation hit a transient sink error are remembered
(`unsettled`, `troubled`), so that the controller retries them with backoff until the sink
recovers, without waiting for new events or the periodic resync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel

from controller.labels import STOP_ANNOTATION, TEMPLATE_LABEL, VERSION_LABEL, Object, content_hash_of
from controller.metrics import ControllerMetrics
from controller.render import RenderError, render_inference_service, scale_plan
from controller.render_cache import CachePlan, cache_location, cache_plan, render_cache_job, render_local_model_cache
from controller.render_config import RenderConfig
from controller.sinks.base import ApplyAction, PermanentSinkError, Sink, SinkError, TransientSinkError
from controller.sinks.cache import CacheSink
from controller.state import Deployment, DeploymentKey, DesiredState
from events.types import DeploymentApplied, DeploymentFailed, DeploymentLoadStatus, EventKind, LoadStatus, VersionLoadStatus
from templates.schema import ModelTemplateVersion

log = logging.getLogger(__name__)


def parse_timestamp(value: object) -> datetime | None:
    """An API object's RFC 3339 timestamp (`2026-12-02T10:00:00Z`), None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class Reporter(Protocol):
    """Publishes an outbound status event for a template (the same callback the status watcher uses)."""

    async def report(self, kind: EventKind, data: BaseModel, template: str) -> None: ...


@dataclass(frozen=True)
class LiveObject:
    """What the controller knows of an object in the sink without asking it."""

    template: str
    content_hash: str | None
    version: int | None
    stopped: bool

    @classmethod
    def of(cls, obj: Object) -> LiveObject:
        metadata = obj.get("metadata") or {}
        labels = metadata.get("labels") or {}
        annotations = metadata.get("annotations") or {}
        version = labels.get(VERSION_LABEL)
        return cls(
            template=str(labels.get(TEMPLATE_LABEL, "")),
            content_hash=content_hash_of(obj),
            version=int(version) if isinstance(version, str) and version.isdigit() else None,
            stopped=str(annotations.get(STOP_ANNOTATION, "")).lower() == "true",
        )


@dataclass
class ReconcileResult:
    """What one reconciliation did. `transient` is set when something must be retried."""

    actions: dict[DeploymentKey, str] = field(default_factory=dict)
    failures: dict[DeploymentKey, str] = field(default_factory=dict)  # permanent: retrying cannot help
    transient: TransientSinkError | None = None
    kept: set[DeploymentKey] = field(default_factory=set)  # live objects without desired state, left alone

    @property
    def writes(self) -> int:
        return sum(1 for action in self.actions.values() if action != ApplyAction.UNCHANGED.value)


def _key(obj: Object) -> DeploymentKey:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


class Reconciler:
    def __init__(
        self,
        state: DesiredState,
        sink: Sink,
        render_config: RenderConfig,
        reporter: Reporter,
        metrics: ControllerMetrics | None = None,
        sink_name: str = "sink",
        cache_sink: CacheSink | None = None,
    ) -> None:
        self.state = state
        self.sink = sink
        self.cache_sink = cache_sink  # None: nothing warms the model cache ahead (replicas fill it themselves)
        self._warmed: set[tuple[str, str, str]] = set()  # (kind, namespace, name) of cache objects known to exist
        self._cache_reported: dict[tuple[str, str, str], str] = {}  # cache problems reported, by object: each reason once
        self._awaiting_copies: set[tuple[str, str, str]] = set()  # LocalModelCaches not yet seen on all their nodes
        self.render_config = render_config
        self.reporter = reporter
        self.metrics = metrics or ControllerMetrics()
        self.sink_name = sink_name
        self.live: dict[DeploymentKey, LiveObject] = {}
        self._live_of: dict[str, set[DeploymentKey]] = {}  # template → keys of its live objects (a resync asks for each)
        self.unsettled: set[str] = set()  # templates whose last reconciliation must be retried (sink unavailable)
        self.troubled = asyncio.Event()  # set while `unsettled` is not empty
        self._kept: set[DeploymentKey] = set()  # kept objects already reported
        self._locks: dict[DeploymentKey, asyncio.Lock] = {}
        self._template_locks: dict[str, asyncio.Lock] = {}

    async def prime(self) -> int:
        """Fill the live-hash cache from the sink; returns the number of managed objects."""
        objects = await self.sink.list_managed()
        self.live, self._live_of = {}, {}
        for obj in objects:
            self._set_live(_key(obj), LiveObject.of(obj))
        return len(self.live)

    async def reconcile_all(self, stop: asyncio.Event | None = None) -> ReconcileResult:
        """Reconcile every template known to the state or to the sink (start-up and periodic resync).

        Stops between templates once `stop` is set (e.g. leadership was lost).
        """
        templates = set(self.state.templates()) | {live.template for live in self.live.values()}
        total = ReconcileResult()
        for template in sorted(templates):
            if stop is not None and stop.is_set():
                break
            result = await self.reconcile(template)
            total.actions.update(result.actions)
            total.failures.update(result.failures)
            total.transient = total.transient or result.transient
            total.kept |= result.kept
        return total

    async def retry_unsettled(self, stop: asyncio.Event | None = None) -> ReconcileResult:
        """Reconcile again the templates whose last reconciliation hit a transient sink error."""
        total = ReconcileResult()
        for template in sorted(self.unsettled):
            if stop is not None and stop.is_set():
                break
            result = await self.reconcile(template)
            total.actions.update(result.actions)
            total.failures.update(result.failures)
            total.transient = total.transient or result.transient
        return total

    async def reconcile(self, template: str, addressed: Iterable[DeploymentKey] = ()) -> ReconcileResult:
        """Make the sink match the desired objects of one template.

        `addressed` are deployments an event named: they get a `deployment.applied`
        status even when nothing changed, so whoever asked hears back.
        """
        # One reconciliation of a template at a time (the consumer, the resync and the sink retry may
        # overlap): each renders from the state when it starts, so an older one finishing last would write
        # an older version over a newer one.
        async with self._template_lock(template):
            result = await self._reconcile(template, set(addressed))
        if result.transient is not None:
            self.unsettled.add(template)
            self.troubled.set()
        else:
            self.unsettled.discard(template)
            if not self.unsettled:
                self.troubled.clear()
        return result

    async def _reconcile(self, template: str, addressed: set[DeploymentKey]) -> ReconcileResult:
        result = ReconcileResult()
        await self._warm(template)
        desired: dict[DeploymentKey, tuple[Deployment, ModelTemplateVersion, Object]] = {}
        for deployment in self.state.deployments_of(template):
            version = self.state.version_for(deployment)
            if version is None:
                continue  # nothing to serve: deleted when its versions were deleted, kept when they are only missing
            try:
                target = self.state.adapter_target(deployment)
                adapters = [doc.ref for doc in self.state.adapters.desired(deployment.key, target).values()] if target else []
                rendered = render_inference_service(version, deployment, self.render_config, adapters)
                desired[deployment.key] = (deployment, version, rendered)
            except RenderError as exc:
                result.failures[deployment.key] = str(exc)
                await self._report_failed(deployment, version.version, str(exc))

        for key, (deployment, version, obj) in desired.items():
            try:
                await self._apply(deployment, version, obj, result, announce=key in addressed)
            except TransientSinkError as exc:
                result.transient = exc
            except PermanentSinkError as exc:
                result.failures[key] = str(exc)
                await self._report_failed(deployment, version.version, str(exc))

        stale = sorted(self._live_of.get(template, set()) - desired.keys() - result.failures.keys())
        for key in stale:
            if not self.state.removal_allowed(key, template):
                await self._keep(template, key, result)
                continue
            try:
                await self._delete(template, key, result)
            except TransientSinkError as exc:
                result.transient = exc
            except PermanentSinkError as exc:
                result.failures[key] = str(exc)
        for key in addressed - desired.keys() - result.actions.keys() - result.failures.keys():
            unserved = self.state.deployments.get(key)
            if unserved is not None and unserved.template == template:  # requested, but nothing to serve
                await self._announce(unserved, None, ApplyAction.UNCHANGED.value, None, note="no version of the template to serve")
        return result

    async def _warm(self, template: str) -> None:
        """Make sure the model cache of the template's cached versions is being filled (never raises)."""
        config = self.render_config
        if self.cache_sink is None or config.model_cache_mode == "off":
            return
        versions: dict[int, ModelTemplateVersion] = {}
        latest = self.state.versions.latest(template)
        if latest is not None:
            versions[latest.version] = latest  # warm on publish, before anything is deployed
        namespaces: set[str] = set()
        for deployment in self.state.deployments_of(template):
            version = self.state.version_for(deployment)
            if version is not None:
                versions[version.version] = version  # at the latest when first deployed
                namespaces.add(deployment.namespace)
        served = self.state.allowed_namespaces - self.state.reserved_namespaces
        namespaces |= {namespace for namespace in config.cache_namespaces if namespace in served}
        for number in sorted(versions):
            version = versions[number]
            try:
                plan = cache_plan(version, config)
                if plan.note is not None:
                    await self._cache_problem(version, plan, ("note", template, str(number)), plan.note)
                if plan.mode == "job" and plan.pvc is not None:
                    objects = [render_cache_job(version, namespace, config, plan.pvc) for namespace in sorted(namespaces)]
                elif plan.mode == "localmodelcache":
                    objects = [render_local_model_cache(version, config)]
                else:
                    continue
            except Exception as exc:  # a version the renderer cannot cache must not stop its deployments
                log.exception("cannot render the model cache of %s", version.ref, extra={"template": template})
                await self._cache_problem(version, CachePlan(None, None), ("render", template, str(number)), f"{type(exc).__name__}: {exc}")
                continue
            for obj in objects:
                await self._ensure_cached(version, plan, obj)

    async def _ensure_cached(self, version: ModelTemplateVersion, plan: CachePlan, obj: Object) -> None:
        metadata = obj["metadata"]
        key = (str(obj["kind"]), str(metadata.get("namespace", "")), str(metadata["name"]))
        if self.cache_sink is None:
            return
        if key in self._warmed:
            if key in self._awaiting_copies:
                await self._check_copies(version, plan, obj, key)
            return
        where = f"{key[0]} {key[1]}/{key[2]}" if key[1] else f"{key[0]} {key[2]}"
        try:
            created = await self.cache_sink.ensure(obj)
        except Exception as exc:  # SinkError, or anything else: warming is best effort, the deployment goes on
            detail = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
            reason = f"could not create {where} to warm the model cache: {detail}; replicas fill it themselves"
            await self._cache_problem(version, plan, key, reason)
            return
        self._warmed.add(key)
        self._cache_reported.pop(key, None)
        if created:
            log.info("created %s for %s", where, version.ref, extra={"template": version.name, "version": version.version})
        if plan.mode != "localmodelcache":  # a Job's filler reports its own progress
            return
        self._awaiting_copies.add(key)
        if created:
            await self._version_load_status(version, plan, LoadStatus.DOWNLOADING, None)
        await self._check_copies(version, plan, obj, key)

    async def _check_copies(self, version: ModelTemplateVersion, plan: CachePlan, obj: Object, key: tuple[str, str, str]) -> None:
        """KServe copies a LocalModelCache's source onto its nodes: CACHED once every copy is there (read again on each
        reconciliation of the template, the periodic resync included, until then); FAILED, once per reason, when one failed."""
        assert self.cache_sink is not None
        try:
            live = await self.cache_sink.read(obj)
        except Exception as exc:  # progress is information: read again on the next reconciliation
            log.warning("could not read %s/%s: %s", key[0], key[2], exc, extra={"template": version.name})
            return
        status = (live or {}).get("status") or {}
        copies = status.get("copies") or {}
        total, available, failed = (int(copies.get(field) or 0) for field in ("total", "available", "failed"))
        if total and available >= total:
            self._awaiting_copies.discard(key)
            created = parse_timestamp(((live or {}).get("metadata") or {}).get("creationTimestamp"))
            seconds = None if created is None else max(0.0, (datetime.now(UTC) - created).total_seconds())
            size = version.spec.model_size_gb
            await self._version_load_status(
                version, plan, LoadStatus.CACHED, None, size_bytes=None if size is None else int(size * 1e9), seconds=seconds
            )
        elif failed:
            nodes = sorted(node for node, state in (status.get("nodeStatus") or {}).items() if state == "NodeDownloadError")
            where = f" ({', '.join(nodes)})" if nodes else ""
            reason = f"KServe could not copy {version.spec.source} to {failed} of {total} nodes{where}"
            await self._cache_problem(version, plan, key, reason)

    async def _cache_problem(self, version: ModelTemplateVersion, plan: CachePlan, key: tuple[str, str, str], reason: str) -> None:
        if self._cache_reported.get(key) == reason:
            return
        self._cache_reported[key] = reason
        log.warning("model cache of %s: %s", version.ref, reason, extra={"template": version.name, "version": version.version})
        await self._version_load_status(version, plan, LoadStatus.FAILED, reason)

    async def _version_load_status(
        self,
        version: ModelTemplateVersion,
        plan: CachePlan,
        status: LoadStatus,
        reason: str | None,
        *,
        size_bytes: int | None = None,
        seconds: float | None = None,
    ) -> None:
        await self.reporter.report(
            EventKind.VERSION_LOAD_STATUS,
            VersionLoadStatus(
                template=version.name,
                version=version.version,
                content_hash=version.content_hash,
                status=status,
                reason=reason,
                cache=cache_location(version, self.render_config, plan),
                bytes=size_bytes,
                seconds=seconds,
            ),
            version.name,
        )

    async def _keep(self, template: str, key: DeploymentKey, result: ReconcileResult) -> None:
        """Leave a live object whose desired state is missing alone, and report it once."""
        owner = self.state.deployments.get(key)
        live = self.live.get(key)
        if live is None or (owner is not None and owner.template != template):
            return  # now another template's deployment: that template's reconciliation replaces the object
        result.kept.add(key)
        if key in self._kept:
            return
        self._kept.add(key)
        self.metrics.kept_objects.set(len(self._kept))
        note = "no desired state for this object (events missing from the stream?): kept until a deployment.deleted names it"
        log.warning("kept %s/%s: %s", key[0], key[1], note, extra={"template": template, "version": live.version})
        await self.reporter.report(
            EventKind.DEPLOYMENT_APPLIED,
            DeploymentApplied(
                template=template,
                version=live.version,
                namespace=key[0],
                name=key[1],
                content_hash=live.content_hash,
                action="kept",
                scale_to_zero=True,
                note=note,
            ),
            template,
        )

    def _forget_kept(self, key: DeploymentKey) -> None:
        if key in self._kept:
            self._kept.discard(key)
            self.metrics.kept_objects.set(len(self._kept))

    def _template_lock(self, template: str) -> asyncio.Lock:
        lock = self._template_locks.get(template)
        if lock is None:
            lock = self._template_locks[template] = asyncio.Lock()
        return lock

    def _set_live(self, key: DeploymentKey, live: LiveObject) -> None:
        self._forget_live(key)
        self.live[key] = live
        self._live_of.setdefault(live.template, set()).add(key)

    def _forget_live(self, key: DeploymentKey) -> None:
        gone = self.live.pop(key, None)
        if gone is not None:
            self._live_of[gone.template].discard(key)

    def _lock(self, key: DeploymentKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _apply(
        self, deployment: Deployment, version: ModelTemplateVersion, obj: Object, result: ReconcileResult, *, announce: bool
    ) -> None:
        key = deployment.key
        wanted = content_hash_of(obj)
        async with self._lock(key):
            before = self.live.get(key)
            if before is not None and before.content_hash == wanted:
                self._forget_kept(key)
                result.actions[key] = ApplyAction.UNCHANGED.value
                if announce:
                    await self._announce(deployment, version, ApplyAction.UNCHANGED.value, wanted)
                return
            if not deployment.stopped:
                await self._load_status(deployment, version.version, wanted, LoadStatus.REQUESTED)
            started = time.perf_counter()
            try:
                action = await self.sink.apply(obj)
            except TransientSinkError:
                # The write may have happened (e.g. the API committed it, then the answer timed out):
                # remember an object of unknown content, so that it is written again while wanted and
                # deleted if the deployment goes away before that.
                self._set_live(key, LiveObject(template=deployment.template, content_hash=None, version=None, stopped=False))
                self.metrics.sink_errors.labels("transient").inc()
                raise
            except PermanentSinkError:
                self.metrics.sink_errors.labels("permanent").inc()
                raise
            self.metrics.apply_latency.labels(self.sink_name, action.value).observe(time.perf_counter() - started)
            self._set_live(key, LiveObject.of(obj))
            self._forget_kept(key)
        reported = action.value
        if action is not ApplyAction.UNCHANGED and before is not None and before.stopped != deployment.stopped:
            reported = "stopped" if deployment.stopped else "resumed"
        result.actions[key] = reported
        extra = {"template": deployment.template, "version": version.version, "content_hash": wanted}
        log.info("%s %s/%s", reported, key[0], key[1], extra=extra)
        if action is not ApplyAction.UNCHANGED or announce:
            await self._announce(deployment, version, reported, wanted)
        if action is not ApplyAction.UNCHANGED and not deployment.stopped:
            await self._load_status(deployment, version.version, wanted, LoadStatus.LOADING)

    async def _delete(self, template: str, key: DeploymentKey, result: ReconcileResult) -> None:
        async with self._lock(key):
            live = self.live.get(key)
            owner = self.state.deployments.get(key)
            if live is None or live.template != template:
                return  # gone, or written by another template's reconciliation meanwhile
            if owner is not None and owner.template != template:
                return  # the key now belongs to another template, whose reconciliation replaces the object
            started = time.perf_counter()
            try:
                existed = await self.sink.delete(*key)
            except TransientSinkError:
                self.metrics.sink_errors.labels("transient").inc()
                raise
            except PermanentSinkError:
                self.metrics.sink_errors.labels("permanent").inc()
                raise
            self.metrics.apply_latency.labels(self.sink_name, "deleted").observe(time.perf_counter() - started)
            self._forget_live(key)
            self._forget_kept(key)
        if not existed and live.content_hash is None:
            return  # an earlier write that failed had not happened after all: nothing to report
        result.actions[key] = "deleted"
        log.info("deleted %s/%s", key[0], key[1], extra={"template": template, "version": live.version})
        await self.reporter.report(
            EventKind.DEPLOYMENT_APPLIED,
            DeploymentApplied(
                template=template, version=live.version, namespace=key[0], name=key[1], content_hash=live.content_hash, action="deleted"
            ),
            template,
        )

    async def _announce(
        self, deployment: Deployment, version: ModelTemplateVersion | None, action: str, content_hash: str | None, note: str | None = None
    ) -> None:
        scale_to_zero = True
        if version is not None:
            plan = scale_plan(version, deployment)
            scale_to_zero, note = plan.scale_to_zero, note or plan.note
            cache_note = cache_plan(version, self.render_config).note  # storage.cache asked for, nowhere to cache
            if cache_note is not None:
                note = f"{note}; {cache_note}" if note else cache_note
        await self.reporter.report(
            EventKind.DEPLOYMENT_APPLIED,
            DeploymentApplied(
                template=deployment.template,
                version=version.version if version is not None else deployment.version,
                namespace=deployment.namespace,
                name=deployment.name,
                content_hash=content_hash,
                action=action,
                scale_to_zero=scale_to_zero,
                note=note,
            ),
            deployment.template,
        )

    async def _load_status(self, deployment: Deployment, version: int, content_hash: str | None, status: LoadStatus) -> None:
        await self.reporter.report(
            EventKind.LOAD_STATUS,
            DeploymentLoadStatus(
                template=deployment.template,
                version=version,
                namespace=deployment.namespace,
                name=deployment.name,
                content_hash=content_hash,
                status=status,
            ),
            deployment.template,
        )

    async def _report_failed(self, deployment: Deployment, version: int | None, reason: str) -> None:
        log.warning("cannot apply %s/%s: %s", deployment.namespace, deployment.name, reason, extra={"template": deployment.template})
        await self.reporter.report(
            EventKind.DEPLOYMENT_FAILED,
            DeploymentFailed(
                template=deployment.template, version=version, namespace=deployment.namespace, name=deployment.name, reason=reason
            ),
            deployment.template,
        )
