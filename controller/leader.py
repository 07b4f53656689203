"""Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

- A candidate reads the Lease; it takes it when nobody holds it, or when the holder's record
  has not changed for `leaseDurationSeconds` *as measured on the candidate's own clock* since
  it first saw that record (so clock skew between nodes does not matter).
- Every write is a replace carrying the `resourceVersion` just read: if two candidates race,
  the API server accepts one and answers 409 Conflict to the other. Two replicas never both
  hold the Lease.
- The leader renews every `retry_period`. If no renewal succeeds within `renew_deadline` of the
  start of the last successful one, it stops leading. Since `renew_deadline < lease_duration`,
  it has stopped before any other candidate may take over; `is_leader` applies the same
  deadline, so it turns False in time even if the event loop is slow to notice.
- On shutdown the leader first stops its work (`on_stopped_leading`), then releases the Lease
  (holder cleared), so a standby takes over within one `retry_period` instead of waiting for
  the lease to expire; releasing before the work has stopped could let two leaders write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]
JITTER = 0.2
LEASE_API_VERSION = "coordination.k8s.io/v1"


def micro_time(moment: datetime) -> datetime:
    """A timestamp the API server accepts as metav1.MicroTime once the client has serialized it.

    The client writes datetimes with `isoformat()`, which leaves the fraction out at exactly
    .000000; the server parses MicroTime with a six-digit fraction and would reject the Lease.
    One microsecond later is as good a time and always has a fraction.
    """
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=1) if moment.microsecond == 0 else moment


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_s: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int

    @classmethod
    def of(cls, spec: V1LeaseSpec | None) -> LeaseRecord:
        if spec is None:
            return cls("", 0, None, None, 0)
        return cls(
            holder=spec.holder_identity or "",
            duration_s=spec.lease_duration_seconds or 0,
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=spec.lease_transitions or 0,
        )


class LeaderElector:
    def __init__(
        self,
        api_client: ApiClient,
        namespace: str,
        lease_name: str,
        identity: str,
        lease_duration: float = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not lease_duration > renew_deadline > retry_period * (1 + JITTER) > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period * 1.2 > 0")
        self.api = CoordinationV1Api(api_client)
        self.namespace = namespace
        self.lease_name = lease_name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.request_timeout = max(0.5, renew_deadline / 2)
        self._leading = False
        self._renewed_at = 0.0  # monotonic start of the last successful acquire/renew
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time the observed record was first seen
        self._stop = asyncio.Event()
        self._inflight: asyncio.Future[bool] | None = None  # the acquire/renew call running in a thread

    # ---------------------------------------------------------------- API

    @property
    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._renewed_at + self.renew_deadline

    @property
    def observed_holder(self) -> str | None:
        return self._observed.holder if self._observed is not None else None

    async def run(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        """Campaign, lead, and campaign again after losing the Lease, until `stop()` or cancellation."""
        try:
            while not self._stop.is_set():
                if not await self._acquire():
                    return
                await self._lead(on_started_leading, on_stopped_leading)
        finally:
            if self._inflight is not None and not self._inflight.done():
                # Cancelled mid-write: let that write finish, so we know whether we hold the lease to release it.
                await asyncio.wait([self._inflight], timeout=2 * self.request_timeout)
                if self._inflight.done():
                    self._inflight.exception()  # retrieved: a failed write simply means we hold nothing new
            if self._holds_lease():
                await self._release()

    async def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------- internals

    async def _lead(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        log.info("became leader", extra={"identity": self.identity, "lease": f"{self.namespace}/{self.lease_name}"})
        self._leading = True
        started: asyncio.Future[None] = asyncio.ensure_future(on_started_leading())
        try:
            await self._renew_until_lost()
        finally:
            self._leading = False
            if not started.done():
                started.cancel()
            await asyncio.gather(started, return_exceptions=True)
            try:
                await on_stopped_leading()
            except Exception:
                log.exception("on_stopped_leading failed")

    async def _sleep(self, seconds: float) -> bool:
        """Wait; True if `stop()` was called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _acquire(self) -> bool:
        while not self._stop.is_set():
            if await self._attempt():
                return True
            if await self._sleep(self.retry_period * random.uniform(1.0, 1.0 + JITTER)):
                break
        return False

    async def _renew_until_lost(self) -> None:
        while not await self._sleep(self.retry_period):
            while not await self._attempt():
                if time.monotonic() >= self._renewed_at + self.renew_deadline:
                    log.warning("lost leadership: no renewal within %.1f s", self.renew_deadline, extra={"identity": self.identity})
                    return
                if await self._sleep(min(self.retry_period, max(0.0, self._renewed_at + self.renew_deadline - time.monotonic()))):
                    return

    async def _attempt(self) -> bool:
        started = time.monotonic()
        try:
            self._inflight = asyncio.get_running_loop().run_in_executor(None, self._try_acquire_or_renew)
            acquired = await asyncio.shield(self._inflight)
        except Exception as exc:  # an unreachable API server must not end the election
            log.warning("lease %s/%s: %s: %s", self.namespace, self.lease_name, type(exc).__name__, exc)
            return False
        if acquired:
            self._renewed_at = started  # measured from before the write: the safe side
        return acquired

    def _holds_lease(self) -> bool:
        return self._observed is not None and self._observed.holder == self.identity

    def _read(self) -> V1Lease | None:
        try:
            return self.api.read_namespaced_lease(self.lease_name, self.namespace, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _observe(self, record: LeaseRecord) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    def _spec(self, now: datetime, record: LeaseRecord | None) -> V1LeaseSpec:
        renewing = record is not None and record.holder == self.identity
        acquired = record.acquire_time if renewing and record is not None and record.acquire_time else now
        return V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=max(1, math.ceil(self.lease_duration)),
            acquire_time=micro_time(acquired),
            renew_time=now,
            lease_transitions=0 if record is None else record.transitions if renewing else record.transitions + 1,
        )

    def _try_acquire_or_renew(self) -> bool:
        now = micro_time(datetime.now(UTC))
        lease = self._read()
        if lease is None:
            spec = self._spec(now, None)
            body = V1Lease(api_version=LEASE_API_VERSION, kind="Lease", metadata=V1ObjectMeta(name=self.lease_name), spec=spec)
            return self._write(lambda: self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.request_timeout), spec)
        record = LeaseRecord.of(lease.spec)
        self._observe(record)
        if record.holder and record.holder != self.identity and time.monotonic() < self._observed_at + record.duration_s:
            return False  # someone else holds a lease that has not expired on our clock
        spec = self._spec(now, record)
        # The metadata read carries the resourceVersion: the replace is conditional on it.
        body = V1Lease(api_version=LEASE_API_VERSION, kind="Lease", metadata=lease.metadata, spec=spec)
        return self._write(
            lambda: self.api.replace_namespaced_lease(self.lease_name, self.namespace, body, _request_timeout=self.request_timeout), spec
        )

    def _write(self, call: Callable[[], object], spec: V1LeaseSpec) -> bool:
        try:
            call()
        except ApiException as exc:
            if exc.status == 409:
                return False  # another candidate wrote first: it won this round
            raise
        self._observe(LeaseRecord.of(spec))
        return True

    async def _release(self) -> None:
        def release() -> bool:
            lease = self._read()
            if lease is None or LeaseRecord.of(lease.spec).holder != self.identity:
                return True  # not ours (any more): nothing to give back
            now = micro_time(datetime.now(UTC))
            transitions = LeaseRecord.of(lease.spec).transitions
            spec = V1LeaseSpec(lease_duration_seconds=1, acquire_time=now, renew_time=now, lease_transitions=transitions)
            body = V1Lease(api_version=LEASE_API_VERSION, kind="Lease", metadata=lease.metadata, spec=spec)
            try:
                self.api.replace_namespaced_lease(self.lease_name, self.namespace, body, _request_timeout=self.request_timeout)
            except ApiException as exc:
                if exc.status == 409:
                    return False  # written meanwhile: read again, it may still be ours
                raise
            self._observed = LeaseRecord.of(spec)
            return True

        for _ in range(3):
            try:
                if await asyncio.to_thread(release):
                    log.info("released the lease", extra={"identity": self.identity})
                    return
            except Exception as exc:
                log.warning("could not release the lease: %s", exc)
                return
        log.warning("could not release the lease: it kept changing; it expires on its own")
