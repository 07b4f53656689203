"""Controller benchmark: `python -m bench.controller` (`make bench-controller`).

Everything runs for real: a nats-server with JetStream, the Kubernetes API emulator over
HTTPS (`tests/k8s_emulator`, in this process) and the controller as its own process
(`python -m controller run --sink kube`). Events go in through the `Publisher`, many at once.

1. Restart at fleet scale (targets: ready ≤ 60 s, peak RSS ≤ 1 GiB, no GET per live object,
   no write): the stream holds 100,000 template versions (1,000 templates x 100) and 10,000
   deployments (every template in 10 namespaces); a first controller creates the 10,000
   InferenceServices, then a second one starts over the same stream and cluster. Ready is
   when its initial reconciliation is done (the state rebuilt and every live object
   compared; its log says when); the API requests it made come from the emulator's log.
2. End to end (targets: ≥ 300 events/s, publish → object written p99 ≤ 50 ms at 100 events/s):
   200 templates x 10 versions + 200 deployments published at once, then versions at a steady
   100 events/s; latency is publish → the object in the API server serving that version or a
   newer one (what a level-based controller promises), observed at commit inside the emulator.
3. Information: the controller's CPU per event (decode, reduce, render + hash, diff; the
   events of part 2 as the stream holds them) against one raw `kubernetes` create of the same
   objects — `overhead_ratio`.

Prints a table and writes bench/results/controller.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes.client import CustomObjectsApi
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.common import console, peak_rss_mb, percentile, print_table, stopped_by_sigterm, write_results
from controller.consumer import to_inbound
from controller.labels import VERSION_LABEL, content_hash_of
from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.state import DesiredState
from events.local_server import LocalNatsServer
from events.publisher import Publisher
from events.stream import StreamSettings, provision_stream
from events.types import SUBJECT_ROOT, EventKind, inbound_filter
from templates.catalog import load_catalog
from tests.fixtures.controller_process import ControllerProcess, wait_until
from tests.k8s_emulator import INFERENCE_SERVICES, KubernetesEmulator
from tests.k8s_emulator.server import REQUEST_LOG_SIZE
from tests.k8s_emulator.store import WatchEvent

ROOT = Path(__file__).resolve().parent.parent
BASE_TEMPLATE = "gemma-3-12b-it"  # a typical single-GPU template: the shape of most objects
E2E_NAMESPACE = "bench"
STEADY_RATE = 100.0  # events/s for the latency of an unsaturated controller
STEADY_ROUNDS = 3  # versions per template published at that rate after the burst
PUBLISH_WINDOW = 512  # publishes awaiting their acknowledgement at once
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
TARGETS: dict[str, tuple[str, float]] = {
    "restart_100k_s": ("≤", 60.0),
    "restart_100k_rss_mb": ("≤", 1024.0),
    "gets_per_live_object": ("≤", 0.01),
    "restart_writes": ("≤", 0),
    "events_per_s": ("≥", 300.0),
    "p99_ms": ("≤", 50.0),
}


@dataclass(frozen=True)
class Event:
    kind: EventKind
    data: dict[str, Any]
    template: str
    version: int | None  # None: a deployment request


def template_name(index: int) -> str:
    return f"bench-{index:04d}"


def versions(templates: int, numbers: Iterable[int]) -> Iterator[Event]:
    """One version of each template per number; versions differ in one engine setting, as successive versions do."""
    base = next(v for v in load_catalog() if v.name == BASE_TEMPLATE).to_document()
    for number in numbers:
        for index in range(templates):
            name = template_name(index)
            document = {**base, "template": {**base["template"], "name": name}, "version": number}
            document["spec"] = {**base["spec"], "engine": {**base["spec"]["engine"], "max_num_seqs": 32 + number}}
            yield Event(EventKind.VERSION_PUBLISHED, document, name, number)


def deployments(templates: int, namespaces: list[str]) -> Iterator[Event]:
    for namespace in namespaces:
        for index in range(templates):
            name = template_name(index)
            yield Event(EventKind.DEPLOYMENT_REQUESTED, {"template": name, "namespace": namespace}, name, None)


# ------------------------------------------------------------------ NATS


async def provision(url: str) -> None:
    nc = NatsClient()
    await nc.connect(url)
    try:
        await provision_stream(nc.jetstream(), StreamSettings())
    finally:
        await nc.close()


async def publish(url: str, events: Iterable[Event], *, rate: float | None = None) -> list[float]:
    """Publish through the `Publisher`, up to PUBLISH_WINDOW unacknowledged at once, or open-loop at `rate` per second.

    Returns each event's publish time (perf_counter), in the order given.
    """
    nc = NatsClient()
    await nc.connect(url)
    publisher = Publisher(nc, source="/bench", ack_timeout=60.0)
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    sent: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(event: Event) -> None:
        try:
            await publisher.publish(event.kind, event.data)
        finally:
            window.release()

    try:
        start = time.perf_counter()
        for index, event in enumerate(events):
            if rate is not None:
                await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            await window.acquire()
            sent.append(time.perf_counter())
            tasks.append(asyncio.create_task(one(event)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await nc.close()
    return sent


def publish_phases(url: str, *phases: Iterable[Event], rate: float | None = None) -> list[float]:
    """Publish phase after phase (a deployment request must find its template's first version stored)."""
    return list(itertools.chain.from_iterable(asyncio.run(publish(url, phase, rate=rate)) for phase in phases))


async def stored_inbound(url: str) -> list[tuple[str, dict[str, str] | None, bytes, int]]:
    """Every inbound message of the stream as the controller reads it: subject, headers, payload, stream sequence."""
    nc = NatsClient()
    await nc.connect(url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True)
        sub = await js.pull_subscribe(inbound_filter(), stream=StreamSettings().name, config=config)
        pending = (await sub.consumer_info()).num_pending or 0
        found: list[tuple[str, dict[str, str] | None, bytes, int]] = []
        while len(found) < pending:
            for msg in await sub.fetch(min(1000, pending - len(found)), timeout=10.0):
                found.append((msg.subject, msg.headers, msg.data, msg.metadata.sequence.stream))
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


# ------------------------------------------------------------------ the controller process


def controller_process(emulator: KubernetesEmulator, nats_url: str, log: Path, *extra: str) -> ControllerProcess:
    assert emulator.kubeconfig is not None
    args = ["--sink", "kube", "--kubeconfig", str(emulator.kubeconfig), "--nats-url", nats_url, *extra]
    return ControllerProcess(args, log)


def logged(log: Path, message: str) -> dict[str, Any] | None:
    """The first JSON log line of the controller with this message."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if message in line:
            with contextlib.suppress(ValueError):
                entry: dict[str, Any] = json.loads(line)
                if entry.get("message") == message:
                    return entry
    return None


def wait_logged(controller: ControllerProcess, message: str, limit: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def seen() -> bool:
        entry = logged(controller.log, message)
        if entry is not None:
            found.update(entry)
        return entry is not None

    try:
        wait_until(seen, f"waiting for the log line {message!r}", limit, alive=controller.alive)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}; the controller's log ends:\n{controller.log_tail()}") from None
    return found


def since_start(controller: ControllerProcess, entry: dict[str, Any]) -> float:
    """Seconds from the controller's start to a log line (the log's own clock, milliseconds)."""
    return datetime.fromisoformat(entry["time"]).timestamp() - controller.started_at


# ------------------------------------------------------------------ 1. restart at fleet scale


@dataclass
class Restart:
    templates: int
    versions_per_template: int
    namespaces: int
    seconds: float  # process start → initial reconciliation done
    state_rebuilt_s: float  # process start → /readyz
    rss_mb: float
    live_objects: int
    requests: dict[str, int]  # the restarted controller's API requests on InferenceServices, by verb
    first_start_s: float  # the first controller: rebuild and create every object
    fill_s: float
    events: int

    @property
    def gets_per_live_object(self) -> float:
        return self.requests.get("get", 0) / self.live_objects

    @property
    def writes(self) -> int:
        return sum(count for verb, count in self.requests.items() if verb in WRITE_VERBS)


def request_log_position(emulator: KubernetesEmulator) -> int:
    """Where the emulator's (bounded) request log ends now, so that the requests after it can all be counted."""
    position = len(emulator.requests())
    if position >= REQUEST_LOG_SIZE // 2:
        raise RuntimeError(f"the emulator's request log holds {position} requests already: what follows might not all be counted")
    return position


def isvc_requests_since(emulator: KubernetesEmulator, start: int) -> Counter[str]:
    return Counter(r.verb for r in emulator.requests()[start:] if r.resource == INFERENCE_SERVICES.plural)


def restart_at_fleet_scale(workdir: Path, templates: int, versions_per_template: int, namespaces: int) -> Restart:
    spaces = [f"team-{n}" for n in range(namespaces)]
    with LocalNatsServer() as nats, KubernetesEmulator() as emulator:
        asyncio.run(provision(nats.url))
        started = time.perf_counter()
        phases = (versions(templates, [1]), deployments(templates, spaces), versions(templates, range(2, versions_per_template + 1)))
        events = len(publish_phases(nats.url, *phases))
        fill_s = time.perf_counter() - started
        console.print(f"fleet: {events:,} events in the stream after {fill_s:.0f} s")

        managed = [argument for namespace in spaces for argument in ("--namespace", namespace)]
        with controller_process(emulator, nats.url, workdir / "fleet-first.log", *managed) as first:
            done = wait_logged(first, "initial reconciliation", 900)
            first_start_s = since_start(first, done)
        live = emulator.objects("isvc")
        expected = templates * namespaces
        latest = sum(1 for obj in live if obj["metadata"]["labels"].get(VERSION_LABEL) == str(versions_per_template))
        if len(live) != expected or latest != expected:
            raise RuntimeError(f"the first controller left {len(live)} objects ({latest} at the latest version), not {expected}")
        del live
        console.print(f"fleet: the first controller created {expected:,} InferenceServices in {first_start_s:.0f} s")

        logged_before = request_log_position(emulator)
        with controller_process(emulator, nats.url, workdir / "fleet-restart.log", *managed) as second:
            second.wait_ready(300)
            state_rebuilt_s = time.time() - second.started_at
            done = wait_logged(second, "initial reconciliation", 300)
            seconds = since_start(second, done)
            # the status watcher lists and watches each namespace right after: its lists are part of the peak
            wait_until(
                lambda: isvc_requests_since(emulator, logged_before)["watch"] >= namespaces, "waiting for the watches", 120, second.alive
            )
            time.sleep(2.0)
            rss = peak_rss_mb(second.pid)
            requests = dict(isvc_requests_since(emulator, logged_before))
    return Restart(
        templates, versions_per_template, namespaces, seconds, state_rebuilt_s, rss, expected, requests, first_start_s, fill_s, events
    )


# ------------------------------------------------------------------ 2. end to end


class CommitLog:
    """When each (name, version) first appeared in the API server, recorded at commit time."""

    def __init__(self, emulator: KubernetesEmulator, namespace: str) -> None:
        self.namespace = namespace
        self.seen: dict[str, dict[int, float]] = {}
        self.writes = 0
        self._lock = threading.Lock()
        self._emulator = emulator
        _, self._subscription, _ = emulator.store.subscribe(INFERENCE_SERVICES, None, self._deliver, namespace)

    def _deliver(self, event: WatchEvent | None) -> None:
        if event is None or event.type == "DELETED" or event.obj["metadata"].get("namespace") != self.namespace:
            return
        now = time.perf_counter()
        name = event.obj["metadata"]["name"]
        version = int(event.obj["metadata"]["labels"][VERSION_LABEL])
        with self._lock:
            self.writes += 1
            self.seen.setdefault(name, {}).setdefault(version, now)

    def first_at_least(self, name: str, version: int) -> float | None:
        with self._lock:
            times = [t for v, t in self.seen.get(name, {}).items() if v >= version]
        return min(times) if times else None

    def all_reached(self, names: list[str], version: int) -> bool:
        with self._lock:
            return all(max(self.seen.get(name, {0: 0.0})) >= version for name in names)

    def close(self) -> None:
        self._emulator.store.unsubscribe(self._subscription)


@dataclass
class EndToEnd:
    latencies: list[float]  # the burst: every event published at once
    seconds: float
    events: int
    writes: int
    steady_latencies: list[float]  # events published at STEADY_RATE, below saturation
    requests: dict[str, int]  # API requests the controller made on InferenceServices, by verb
    stored: list[tuple[str, dict[str, str] | None, bytes, int]] = field(repr=False)  # the burst as the stream holds it

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def settle_harness() -> None:
    """Keep this process's collector off what it already holds before a timed phase.

    The emulator and the publisher share this process: a full collection over the emulator's store
    and watch history stalls it for about 100 ms, which would show up as the controller's latency.
    """
    gc.collect()
    gc.freeze()


def latencies(commits: CommitLog, events: list[Event], sent: list[float]) -> list[float]:
    found = []
    for event, at in zip(events, sent, strict=True):
        seen = commits.first_at_least(event.template, event.version or 1)
        if seen is None:
            raise RuntimeError(f"{event.template} never served version {event.version or 1} or newer")
        found.append(max(0.0, seen - at))
    return found


def end_to_end(workdir: Path, emulator: KubernetesEmulator, templates: int, rounds: int) -> EndToEnd:
    burst = [*versions(templates, [1]), *deployments(templates, [E2E_NAMESPACE]), *versions(templates, range(2, rounds + 1))]
    steady = list(versions(templates, range(rounds + 1, rounds + 1 + STEADY_ROUNDS)))
    names = [template_name(index) for index in range(templates)]
    with LocalNatsServer() as nats:
        asyncio.run(provision(nats.url))
        commits = CommitLog(emulator, E2E_NAMESPACE)
        logged_before = request_log_position(emulator)
        try:
            log = workdir / "e2e.log"
            with controller_process(emulator, nats.url, log, "--namespace", E2E_NAMESPACE, "--log-level", "WARNING") as controller:
                controller.wait_ready(120)
                settle_harness()
                first_round = templates * 2  # the first versions and the deployment requests
                sent = publish_phases(nats.url, burst[:templates], burst[templates:first_round], burst[first_round:])
                wait_until(lambda: commits.all_reached(names, rounds), "waiting for the burst", 300, alive=controller.alive)
                burst_latencies = latencies(commits, burst, sent)
                last = max(commits.first_at_least(name, rounds) or 0.0 for name in names)
                writes = commits.writes

                settle_harness()
                steady_sent = publish_phases(nats.url, steady, rate=STEADY_RATE)
                final = rounds + STEADY_ROUNDS
                wait_until(lambda: commits.all_reached(names, final), "waiting for the steady-rate versions", 120, alive=controller.alive)
                steady_latencies = latencies(commits, steady, steady_sent)
                requests = dict(isvc_requests_since(emulator, logged_before))
            stored = [m for m in asyncio.run(stored_inbound(nats.url)) if m[3] <= len(burst)]
        finally:
            commits.close()
    return EndToEnd(burst_latencies, last - sent[0], len(burst), writes, steady_latencies, requests, stored)


# ------------------------------------------------------------------ 3. controller cost (information)


@dataclass
class Cost:
    decode: float = 0.0
    reduce: float = 0.0
    render: float = 0.0
    diff: float = 0.0
    events: int = 0
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def per_event(self) -> float:
        return (self.decode + self.reduce + self.render + self.diff) / self.events


def controller_cost(stored: list[tuple[str, dict[str, str] | None, bytes, int]]) -> Cost:
    """What the controller computes per event, every deployment of the event's template rendered each time (no coalescing)."""
    state, config, live = DesiredState(allowed_namespaces=frozenset({E2E_NAMESPACE})), RenderConfig(), dict[tuple[str, str], str]()
    cost = Cost(events=len(stored))
    clock = time.perf_counter
    for subject, headers, payload, sequence in stored:
        t0 = clock()
        inbound = to_inbound(subject, headers, payload, sequence, SUBJECT_ROOT)
        t1 = clock()
        state.apply(inbound)
        t2 = clock()
        rendered = []
        for deployment in state.deployments_of(inbound.subject_template or ""):
            version = state.version_for(deployment)
            if version is not None:
                rendered.append(render_inference_service(version, deployment, config))
        t3 = clock()
        for obj in rendered:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            wanted = content_hash_of(obj) or ""
            if live.get(key) != wanted:
                live[key] = wanted
                cost.objects.append(obj)
        t4 = clock()
        cost.decode += t1 - t0
        cost.reduce += t2 - t1
        cost.render += t3 - t2
        cost.diff += t4 - t3
    return cost


def raw_creates(emulator: KubernetesEmulator, objects: list[dict[str, Any]], prefix: str) -> list[float]:
    """Seconds per `create_namespaced_custom_object` of each pre-rendered object (unique names)."""
    api = CustomObjectsApi(emulator.api_client())
    durations = []
    for index, obj in enumerate(objects):
        body = json.loads(json.dumps(obj))
        body["metadata"]["namespace"] = "raw"
        body["metadata"]["name"] = f"{prefix}-{index:05d}"
        started = time.perf_counter()
        api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", "raw", "inferenceservices", body)
        durations.append(time.perf_counter() - started)
    return durations


# ------------------------------------------------------------------ report


def run(templates: int, rounds: int, fleet: tuple[int, int, int] | None) -> dict[str, Any]:
    # the machine is shared: its 1-minute load average before and after says how much of it the run had
    results: dict[str, Any] = {
        "targets": {key: f"{op} {value:g}" for key, (op, value) in TARGETS.items()},
        "load_average": [os.getloadavg()[0]],
    }
    with tempfile.TemporaryDirectory(prefix="bench-controller-") as tmp:
        workdir = Path(tmp)
        with KubernetesEmulator() as emulator:
            console.print(
                f"end to end: {templates} templates x {rounds} versions + {templates} deployments, then {STEADY_RATE:.0f} events/s"
            )
            e2e = end_to_end(workdir, emulator, templates, rounds)
            costs = [controller_cost(e2e.stored) for _ in range(3)]
            cost = min(costs, key=lambda c: c.per_event)
            objects = costs[0].objects
            raw_creates(emulator, objects[:50], prefix="warm-up")  # connections, TLS, the emulator's code paths
            raw = raw_creates(emulator, objects, prefix="raw")
        raw_mean = statistics.fmean(raw)
        results |= {
            "events_per_s": round(e2e.events_per_s, 1),
            "p50_ms": round(percentile(e2e.steady_latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(e2e.steady_latencies, 99) * 1000, 2),
            "steady_rate_events_per_s": STEADY_RATE,
            "burst_p50_ms": round(percentile(e2e.latencies, 50) * 1000, 1),
            "burst_p99_ms": round(percentile(e2e.latencies, 99) * 1000, 1),
            "end_to_end": {"events": e2e.events, "seconds": round(e2e.seconds, 3), "api_writes": e2e.writes, "api_requests": e2e.requests},
            "overhead_ratio": round(cost.per_event / raw_mean, 4),
            "controller_cost_us": {
                "decode_validate": round(cost.decode / cost.events * 1e6, 1),
                "reduce": round(cost.reduce / cost.events * 1e6, 1),
                "render_hash": round(cost.render / cost.events * 1e6, 1),
                "diff": round(cost.diff / cost.events * 1e6, 1),
                "total": round(cost.per_event * 1e6, 1),
            },
            "raw_create_ms": {
                "mean": round(raw_mean * 1000, 3),
                "p50": round(percentile(raw, 50) * 1000, 3),
                "p99": round(percentile(raw, 99) * 1000, 3),
            },
            "workload": {"templates": templates, "versions_per_template": rounds, "steady_rounds": STEADY_ROUNDS},
        }
        if fleet is not None:
            console.print("fleet: {} templates x {} versions, deployed in {} namespaces".format(*fleet))
            restart = restart_at_fleet_scale(workdir, *fleet)
            results |= {
                "restart_100k_s": round(restart.seconds, 2),
                "restart_100k_rss_mb": round(restart.rss_mb, 1),
                "gets_per_live_object": round(restart.gets_per_live_object, 4),
                "restart_writes": restart.writes,
                "restart": {
                    "versions": restart.templates * restart.versions_per_template,
                    "deployments": restart.live_objects,
                    "events": restart.events,
                    "state_rebuilt_s": round(restart.state_rebuilt_s, 2),
                    "api_requests": restart.requests,
                    "first_start_s": round(restart.first_start_s, 1),
                    "stream_fill_s": round(restart.fill_s, 1),
                },
            }
    results["load_average"] = [round(results["load_average"][0], 2), round(os.getloadavg()[0], 2)]
    report(results)
    path = write_results("controller", results)
    console.print(f"results written to {path.relative_to(ROOT)}")
    return results


def verdict(key: str, value: float) -> str:
    op, target = TARGETS[key]
    met = value <= target if op == "≤" else value >= target
    return f"{op} {target:g}: {'met' if met else 'MISSED'}"


def report(r: dict[str, Any]) -> None:
    cost, raw, e2e = r["controller_cost_us"], r["raw_create_ms"], r["end_to_end"]
    rows: list[tuple[str, str, str]] = []
    if "restart_100k_s" in r:
        restart = r["restart"]
        title = f"restart: {restart['versions']:,} versions, {restart['deployments']:,} live objects → reconciled"
        rows += [
            (title, f"{r['restart_100k_s']:.1f} s", verdict("restart_100k_s", r["restart_100k_s"])),
            ("  of which state rebuilt (/readyz)", f"{restart['state_rebuilt_s']:.1f} s", ""),
            ("  peak RSS", f"{r['restart_100k_rss_mb']:.0f} MiB", verdict("restart_100k_rss_mb", r["restart_100k_rss_mb"])),
            ("  GETs per live object", f"{r['gets_per_live_object']:.4f}", verdict("gets_per_live_object", r["gets_per_live_object"])),
            ("  writes", str(r["restart_writes"]), verdict("restart_writes", r["restart_writes"])),
            ("  API requests on InferenceServices", ", ".join(f"{k} {v}" for k, v in sorted(restart["api_requests"].items())), ""),
        ]
    rows += [
        ("end-to-end events/s (burst)", f"{r['events_per_s']:.0f}/s", verdict("events_per_s", r["events_per_s"])),
        (f"publish → object p50 @{STEADY_RATE:.0f}/s", f"{r['p50_ms']:.1f} ms", ""),
        (f"publish → object p99 @{STEADY_RATE:.0f}/s", f"{r['p99_ms']:.1f} ms", verdict("p99_ms", r["p99_ms"])),
        ("publish → object p50 / p99, burst", f"{r['burst_p50_ms']:.0f} / {r['burst_p99_ms']:.0f} ms", ""),
        ("API writes / events, burst", f"{e2e['api_writes']} / {e2e['events']}", ""),
        ("API requests on InferenceServices", ", ".join(f"{k} {v}" for k, v in sorted(e2e["api_requests"].items())), ""),
        (
            "CPU/event: decode / reduce / render / diff",
            f"{cost['decode_validate']:.0f} / {cost['reduce']:.0f} / {cost['render_hash']:.0f} / {cost['diff']:.0f} µs",
            "",
        ),
        (
            "overhead ratio: CPU/event ÷ raw create",
            f"{cost['total']:.0f} µs ÷ {raw['mean'] * 1000:.0f} µs = {r['overhead_ratio']:.3f}",
            "information",
        ),
    ]
    before, after = r["load_average"]
    print_table(f"controller benchmark (load average {before:.1f} before, {after:.1f} after)", ["measure", "value", "target"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--templates", type=int, default=200, help="end to end: templates (one deployment each)")
    parser.add_argument("--versions", type=int, default=10, help="end to end: versions per template in the burst")
    parser.add_argument("--fleet-templates", type=int, default=1_000)
    parser.add_argument("--fleet-versions", type=int, default=100, help="versions per template in the restarted stream")
    parser.add_argument("--fleet-namespaces", type=int, default=10, help="every template is deployed once per namespace")
    parser.add_argument("--no-fleet", action="store_true", help="skip the restart at fleet scale")
    args = parser.parse_args()
    fleet = None if args.no_fleet else (args.fleet_templates, args.fleet_versions, args.fleet_namespaces)
    with stopped_by_sigterm():
        run(args.templates, args.versions, fleet)


if __name__ == "__main__":
    main()
