"""What the reliability tests share: publishing through faults, watching writes, and the final accounting.

- `publish_reliably`: publishes events in order, retrying each (same `Nats-Msg-Id`, so JetStream
  stores it once) until the stream acknowledges it — a publisher that survives a broker restart;
- `WriteLog`: every InferenceService write the API emulator commits, to prove no object ever went
  back to an older version (nothing applied out of order);
- `account`: after the run, from the stream and the API server alone (never from the controller's
  own word): which events the durable consumer settled, which were dead-lettered (and why), and
  which objects differ from what the workload says they must be.

`lost` in the figures = events the consumer never settled + objects that are wrong or missing
(an event's effect that never reached the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from controller.labels import STOP_ANNOTATION, VERSION_LABEL
from events.codec import EventDecodeError, decode
from events.stream import StreamSettings, provision_stream
from events.types import EventRejected, StreamRole, deadletter_subject, stream_name
from tests.k8s_emulator import INFERENCE_SERVICES, KubernetesEmulator
from tests.k8s_emulator.store import WatchEvent
from tests.reliability.workload import ExpectedObject, PlannedEvent, Workload

PUBLISH_RETRY_S = 0.1
DURABLE = "stokehold-controller"  # the controller's default durable consumer


async def publish_reliably(nc: NatsClient, events: Iterable[PlannedEvent], *, rate: float | None = None) -> dict[str, int]:
    """Publish in order, each until acknowledged; the stream sequence of every event id."""
    js = nc.jetstream()
    sequences: dict[str, int] = {}
    started = time.monotonic()
    for index, event in enumerate(events):
        if rate is not None:
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        while True:
            try:
                ack = await js.publish(event.subject, event.payload, headers=event.headers, timeout=2.0)
                break
            except (nats.errors.Error, TimeoutError, nats.js.errors.Error):
                await asyncio.sleep(PUBLISH_RETRY_S)  # the broker is away: the same id again, stored once
        sequences[event.event_id] = ack.seq
    return sequences


class WriteLog:
    """Each managed InferenceService's versions in the order the API server committed them."""

    def __init__(self, emulator: KubernetesEmulator, namespace: str) -> None:
        self.namespace = namespace
        self.versions: dict[str, list[int]] = {}
        self.writes = 0
        self._lock = threading.Lock()
        self._emulator = emulator
        _, self._subscription, _ = emulator.store.subscribe(INFERENCE_SERVICES, None, self._deliver, namespace)

    def _deliver(self, event: WatchEvent | None) -> None:
        if event is None or event.obj["metadata"].get("namespace") != self.namespace:
            return
        name = event.obj["metadata"]["name"]
        with self._lock:
            if event.type == "DELETED":
                self.versions.setdefault(name, []).append(0)  # a delete starts the object's history again
                return
            self.writes += 1
            self.versions.setdefault(name, []).append(int(event.obj["metadata"]["labels"][VERSION_LABEL]))

    def out_of_order(self) -> list[str]:
        """Objects whose version ever went down between two writes (a delete in between excepted)."""
        with self._lock:
            backwards = []
            for name, versions in self.versions.items():
                for before, after in itertools.pairwise(versions):
                    if 0 not in (before, after) and after < before:
                        backwards.append(f"{name}: v{before} -> v{after}")
            return backwards

    def close(self) -> None:
        self._emulator.store.unsubscribe(self._subscription)


def wrong_objects(emulator: KubernetesEmulator, namespace: str, expected: dict[str, ExpectedObject]) -> list[str]:
    """How the API server's InferenceServices differ from the expected ones (empty when they match)."""
    live = {obj["metadata"]["name"]: obj for obj in emulator.objects("inferenceservices", namespace)}
    problems = [f"{name}: unexpected object" for name in sorted(live.keys() - expected.keys())]
    for name, want in sorted(expected.items()):
        obj = live.get(name)
        if obj is None:
            problems.append(f"{name}: missing")
            continue
        version = int(obj["metadata"]["labels"][VERSION_LABEL])
        stopped = obj["metadata"].get("annotations", {}).get(STOP_ANNOTATION) == "true"
        if (version, stopped) != (want.version, want.stopped):
            problems.append(f"{name}: serves v{version} stopped={stopped}, expected v{want.version} stopped={want.stopped}")
    return problems


@dataclass
class Accounting:
    published: int
    settled: int  # acknowledged or terminated by the durable consumer
    dead_letters: dict[int, str]  # stream sequence of a published event -> reason
    wrong: list[str] = field(default_factory=list)

    @property
    def dead_lettered(self) -> int:
        return len(self.dead_letters)

    @property
    def applied(self) -> int:
        return self.settled - self.dead_lettered

    @property
    def lost(self) -> int:
        return self.published - self.settled + len(self.wrong)

    def figures(self) -> dict[str, int]:
        return {"published": self.published, "applied": self.applied, "dead_lettered": self.dead_lettered, "lost": self.lost}


async def dead_letters(nc: NatsClient, stream: str, root: str) -> dict[int, str]:
    """Every `event.rejected` in the dead-letter stream of `stream`: the original's stream sequence -> the reason."""
    js = nc.jetstream()
    stream = stream_name(StreamRole.DEADLETTER, stream)
    info = await js.stream_info(stream)
    found: dict[int, str] = {}
    if info.state.messages == 0:
        return found
    subscription = await js.pull_subscribe(  # unacknowledged: an explicit-ack reader stalls at max_ack_pending (1,000)
        deadletter_subject("*", root), stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
    )
    try:
        while True:
            try:
                msgs = await subscription.fetch(500, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                return found
            for msg in msgs:
                try:
                    event = decode(msg.headers, msg.data)
                except EventDecodeError:
                    continue  # junk a test put on a dead-letter subject: not the controller's
                assert isinstance(event.data, EventRejected)
                if event.data.stream_sequence is not None:
                    found[event.data.stream_sequence] = event.data.reason
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


async def settled(nc: NatsClient, stream: str, durable: str, sequences: Iterable[int]) -> int:
    """How many of these stream sequences the durable consumer has acknowledged or terminated."""
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return 0
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    return sum(1 for sequence in sequences if sequence <= floor)


def stream_of(workload: Workload) -> str:
    """Each scenario has its own stream, named after its subject root (as `settings.kube_controller` configures it)."""
    return workload.root.upper()


async def provision(nc: NatsClient, workload: Workload, **limits: int | float) -> StreamSettings:
    settings = StreamSettings(name=stream_of(workload), subject_root=workload.root, **limits)
    await provision_stream(nc.jetstream(), settings)
    return settings


async def account(nc: NatsClient, emulator: KubernetesEmulator, workload: Workload, sequences: dict[str, int]) -> Accounting:
    published = set(sequences.values())
    letters = await dead_letters(nc, stream_of(workload), workload.root)
    return Accounting(
        published=len(published),
        settled=await settled(nc, stream_of(workload), DURABLE, published),
        dead_letters={seq: reason for seq, reason in letters.items() if seq in published},
        wrong=wrong_objects(emulator, workload.namespace, workload.expected),
    )


async def converge(
    nc: NatsClient, emulator: KubernetesEmulator, workload: Workload, sequences: dict[str, int], *, limit: float
) -> Accounting:
    """Account repeatedly until nothing is lost or `limit` seconds pass; the last accounting either way."""
    deadline = time.monotonic() + limit
    while True:
        result = await account(nc, emulator, workload, sequences)
        if result.lost == 0 or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.25)
