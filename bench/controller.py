"""Controller benchmark: `python -m bench.controller` (`make bench-controller`).

Against a real nats-server and the Kubernetes API emulator (over HTTPS, with the real
`kubernetes` client on both sides), in one run:

1. controller cost per event — decode + validate, reduce, render + hash, diff — measured
   in-process without I/O, rendering on every event (no coalescing credited) and every
   version for the first time (the best of three runs; nothing memoised carries over), with
   the garbage-collector settings of the controller process (controller/memory.py);
2. the baseline: a raw `kubernetes` client create of the same pre-rendered objects;
3. end to end: the controller as its own process (`python -m controller run --sink kube`),
   N version events across templates (+ one deployment each) published at once; latency
   is publish → the object in the API server serving that version or a newer one (what a
   level-based controller promises), observed at commit inside the emulator; and the API
   requests the controller made, by method;
4. restart: a controller restarted over a stream holding 10,000 versions; time to
   `/readyz` (state rebuilt) and peak RSS.

Prints a table with ratios and writes bench/results/controller.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import CustomObjectsApi
from nats.aio.client import Client as NatsClient

from bench.common import console, percentile, print_table, write_results
from controller.config import RenderConfig
from controller.consumer import to_inbound
from controller.memory import freeze_long_lived, tune_garbage_collection
from controller.render import forget_rendered_versions, render_inference_service
from controller.sinks.base import content_hash_of
from controller.state import DesiredState
from events.codec import encode
from events.local_server import LocalNatsServer
from events.stream import StreamSettings, provision_stream
from events.types import SUBJECT_ROOT, DeploymentRequested, EventKind, template_subject
from templates.catalog import load_catalog
from tests.fixtures.controller_process import ControllerProcess, wait_until
from tests.k8s_emulator import INFERENCE_SERVICES, KubernetesEmulator
from tests.k8s_emulator.store import WatchEvent

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
BASE_TEMPLATE = "gemma-7b-it"  # a typical single-GPU template: the shape of most objects
STEADY_RATE = 100.0  # events/s for the latency of an unsaturated controller
STEADY_ROUNDS = 2  # versions per template published at that rate after the burst
TARGETS = {"overhead_ratio": 0.10, "events_per_s": 300.0, "restart_10k_s": 30.0, "restart_rss_mb": 300.0}


@dataclass(frozen=True)
class Event:
    template: str
    version: int | None  # None: the deployment request
    subject: str
    headers: dict[str, str]
    payload: bytes


def workload(templates: int, versions: int, *, with_deployments: bool = True, first: int = 1) -> list[Event]:
    """Round `first`: a version and a deployment of each template; later rounds: one new version of each."""
    base = next(v for v in load_catalog() if v.name == BASE_TEMPLATE).to_document()
    events: list[Event] = []

    def add(kind: EventKind, data: dict[str, Any] | DeploymentRequested, template: str, version: int | None) -> None:
        headers, payload = encode(kind, data, source="/bench", subject_template=template)
        events.append(Event(template, version, template_subject(template, kind), headers, payload))

    for number in range(first, first + versions):
        for t in range(templates):
            name = f"bench-{t:04d}"
            document = {**base, "template": {**base["template"], "name": name}, "version": number}
            document["spec"] = {**base["spec"], "engine": {**base["spec"]["engine"], "max_num_seqs": 32 + number}}
            add(EventKind.VERSION_PUBLISHED, document, name, number)
            if number == first and with_deployments:
                add(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template=name, namespace=NAMESPACE), name, None)
    return events


# ------------------------------------------------------------------ 1. controller cost


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


def controller_cost(events: list[Event], keep_objects: bool = False) -> Cost:
    """What the controller computes per event, with every deployment of the template rendered each time."""
    state, config, live = DesiredState(), RenderConfig(), dict[tuple[str, str], str]()
    # Each run meets every version for the first time, as a controller does when the event arrives: nothing
    # the renderer memoised per version in an earlier run may make this one cheaper.
    forget_rendered_versions()
    cost = Cost(events=len(events))
    clock = time.perf_counter
    for sequence, event in enumerate(events, 1):
        t0 = clock()
        inbound = to_inbound(event.subject, event.headers, event.payload, sequence, SUBJECT_ROOT)
        t1 = clock()
        reduction = state.apply(inbound)
        t2 = clock()
        rendered = []
        for deployment in state.deployments_of(reduction.template):
            version = state.version_for(deployment)
            if version is not None:
                rendered.append(render_inference_service(version, deployment, config))
        t3 = clock()
        for obj in rendered:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            wanted = content_hash_of(obj)
            if live.get(key) != wanted:
                live[key] = wanted or ""
                if keep_objects:
                    cost.objects.append(obj)
        t4 = clock()
        cost.decode += t1 - t0
        cost.reduce += t2 - t1
        cost.render += t3 - t2
        cost.diff += t4 - t3
    return cost


# ------------------------------------------------------------------ 2. raw API baseline


def raw_creates(emulator: KubernetesEmulator, objects: list[dict[str, Any]], prefix: str = "raw") -> list[float]:
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


# ------------------------------------------------------------------ 3. end to end


class CommitLog:
    """When each (name, version) first appeared in the API server, recorded at commit time."""

    def __init__(self, emulator: KubernetesEmulator, namespace: str) -> None:
        self.namespace = namespace
        self.seen: dict[str, dict[int, float]] = {}
        self.writes = 0
        self._lock = threading.Lock()
        _, self._subscription, _ = emulator.store.subscribe(INFERENCE_SERVICES, None, self._deliver, namespace)
        self._emulator = emulator

    def _deliver(self, event: WatchEvent | None) -> None:
        if event is None or event.type == "DELETED" or event.obj["metadata"].get("namespace") != self.namespace:
            return
        now = time.perf_counter()
        name = event.obj["metadata"]["name"]
        version = int(event.obj["metadata"]["labels"]["stokehold.dev/version"])
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


async def publish_all(url: str, events: list[Event], rate: float | None = None) -> list[float]:
    """Publish every event as fast as JetStream takes them, or `rate` per second; returns each event's publish time."""
    nc = NatsClient()
    await nc.connect(url)
    js = nc.jetstream()
    times, futures = [], []
    start = time.perf_counter()
    for index, event in enumerate(events):
        if rate is not None:
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        times.append(time.perf_counter())
        futures.append(await js.publish_async(event.subject, event.payload, headers=event.headers))
    await asyncio.gather(*futures)
    await nc.close()
    return times


async def provision(url: str) -> None:
    nc = NatsClient()
    await nc.connect(url)
    await provision_stream(nc.jetstream(), StreamSettings())
    await nc.close()


@dataclass
class EndToEnd:
    latencies: list[float]  # the burst: every event published at once
    seconds: float
    events: int
    writes: int
    steady_latencies: list[float]  # events published at STEADY_RATE, below saturation
    requests: dict[str, int]  # API requests the controller made during the run, by HTTP method

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def end_to_end(nats: LocalNatsServer, emulator: KubernetesEmulator, events: list[Event], workdir: Path) -> EndToEnd:
    asyncio.run(provision(nats.url))
    assert emulator.kubeconfig is not None
    controller = ControllerProcess(
        [
            "--sink",
            "kube",
            "--kubeconfig",
            str(emulator.kubeconfig),
            "--nats-url",
            nats.url,
            "--namespace",
            NAMESPACE,
            "--log-level",
            "WARNING",
        ],
        workdir / "controller-e2e.log",
    ).start()
    commits = CommitLog(emulator, NAMESPACE)
    calls_before = emulator.faults.calls.copy()
    try:
        controller.wait_ready(60)
        names = sorted({e.template for e in events})
        final = max(e.version or 0 for e in events)
        published = asyncio.run(publish_all(nats.url, events))
        wait_until(
            lambda: commits.all_reached(names, final), "waiting for every object to reach its final version", 300, alive=controller.alive
        )
        latencies = []
        for event, sent in zip(events, published, strict=True):
            seen = commits.first_at_least(event.template, event.version or 1)
            assert seen is not None
            latencies.append(max(0.0, seen - sent))
        last = max(commits.first_at_least(name, final) or 0.0 for name in names)
        writes = commits.writes

        steady = workload(len(names), STEADY_ROUNDS, with_deployments=False, first=final + 1)
        sent_at = asyncio.run(publish_all(nats.url, steady, rate=STEADY_RATE))
        wait_until(
            lambda: commits.all_reached(names, final + STEADY_ROUNDS), "waiting for the steady-rate versions", 120, alive=controller.alive
        )
        steady_latencies = [
            max(0.0, (commits.first_at_least(e.template, e.version or 1) or 0.0) - t) for e, t in zip(steady, sent_at, strict=True)
        ]
        requests = dict(emulator.faults.calls - calls_before)
        return EndToEnd(latencies, last - published[0], len(events), writes, steady_latencies, requests)
    finally:
        commits.close()
        controller.stop()


# ------------------------------------------------------------------ 4. restart


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def restart(workdir: Path, templates: int, versions: int) -> tuple[float, float, int]:
    """Seconds from process start to /readyz of a restarted controller over `templates x versions` versions, and its peak RSS."""
    events = workload(templates, versions)
    gitops = workdir / "gitops"
    with LocalNatsServer() as nats:
        asyncio.run(provision(nats.url))
        asyncio.run(publish_all(nats.url, events))
        common = ["--sink", "dir", "--dir", str(gitops), "--nats-url", nats.url, "--log-level", "WARNING"]
        with ControllerProcess(common, workdir / "controller-first.log") as first:
            first.wait_ready(300)
            wait_until(lambda: len(list(gitops.glob("*/*.yaml"))) >= templates, "writing the first objects", 120, alive=first.alive)
        second = ControllerProcess(common, workdir / "controller-restart.log")
        started = time.perf_counter()
        with second.start():
            second.wait_ready(300)
            seconds = time.perf_counter() - started
            time.sleep(1.0)  # the initial reconciliation runs right after ready: include it in the peak
            return seconds, peak_rss_mb(second.pid), len(events)


# ------------------------------------------------------------------ report


def run(templates: int, versions: int, restart_versions: int) -> dict[str, Any]:
    events = workload(templates, versions)
    console.print(f"workload: {templates} templates x {versions} versions + {templates} deployments = {len(events)} events")
    # Measured as the controller process runs (controller/memory.py): its collector settings, and what
    # exists when it starts consuming frozen (it freezes its rebuilt state; here there is none to rebuild).
    tune_garbage_collection()
    costs = []
    for i in range(3):
        freeze_long_lived()
        costs.append(controller_cost(events, keep_objects=(i == 0)))
    cost = min(costs, key=lambda c: c.per_event)
    objects = costs[0].objects
    with tempfile.TemporaryDirectory(prefix="bench-controller-") as tmp, KubernetesEmulator() as emulator:
        workdir = Path(tmp)
        raw_creates(emulator, objects[:50], prefix="warm-up")  # warm-up: connections, TLS, the emulator's code paths
        raw = raw_creates(emulator, objects)
        with LocalNatsServer() as nats:
            e2e = end_to_end(nats, emulator, events, workdir)
        restart_s, restart_rss, restart_events = restart(workdir, templates, restart_versions // templates)

    raw_mean = statistics.fmean(raw)
    overhead = cost.per_event / raw_mean
    results = {
        "overhead_ratio": round(overhead, 4),
        "events_per_s": round(e2e.events_per_s, 1),
        "p50_ms": round(percentile(e2e.steady_latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(e2e.steady_latencies, 99) * 1000, 2),
        "steady_rate_events_per_s": STEADY_RATE,
        "burst_p50_ms": round(percentile(e2e.latencies, 50) * 1000, 1),
        "burst_p99_ms": round(percentile(e2e.latencies, 99) * 1000, 1),
        "restart_10k_s": round(restart_s, 2),
        "restart_rss_mb": round(restart_rss, 1),
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
        "raw_creates_per_s": round(1 / raw_mean, 1),
        "end_to_end": {"events": e2e.events, "seconds": round(e2e.seconds, 3), "api_writes": e2e.writes, "api_requests": e2e.requests},
        "restart_events": restart_events,
        "workload": {"templates": templates, "versions_per_template": versions},
        "targets": TARGETS,
    }
    report(results)
    path = write_results("controller", results)
    console.print(f"results written to {path.relative_to(ROOT)}")
    return results


def report(r: dict[str, Any]) -> None:
    cost, raw, e2e = r["controller_cost_us"], r["raw_create_ms"], r["end_to_end"]

    def verdict(key: str, value: float, at_most: bool = True) -> str:
        target = TARGETS[key]
        met = value <= target if at_most else value >= target
        return f"{'≤' if at_most else '≥'} {target:g}: {'met' if met else 'MISSED'}"

    rows: list[tuple[str, str, str, str, str]] = [
        ("cost/event: decode+validate", f"{cost['decode_validate']:.0f} µs", "", "", ""),
        ("  reduce", f"{cost['reduce']:.0f} µs", "", "", ""),
        ("  render + hash", f"{cost['render_hash']:.0f} µs", "", "", ""),
        ("  diff with live", f"{cost['diff']:.0f} µs", "", "", ""),
        (
            "  total vs raw create",
            f"{cost['total']:.0f} µs",
            f"{raw['mean'] * 1000:.0f} µs",
            f"{r['overhead_ratio']:.3f}",
            verdict("overhead_ratio", r["overhead_ratio"]),
        ),
        (
            "end-to-end events/s",
            f"{r['events_per_s']:.0f}/s",
            f"{r['raw_creates_per_s']:.0f} creates/s",
            f"{r['events_per_s'] / r['raw_creates_per_s']:.2f}",
            verdict("events_per_s", r["events_per_s"], at_most=False),
        ),
        (f"event→object p50 @{STEADY_RATE:.0f}/s", f"{r['p50_ms']:.1f} ms", f"{raw['p50']:.2f} ms", f"{r['p50_ms'] / raw['p50']:.1f}", ""),
        (f"event→object p99 @{STEADY_RATE:.0f}/s", f"{r['p99_ms']:.1f} ms", f"{raw['p99']:.2f} ms", f"{r['p99_ms'] / raw['p99']:.1f}", ""),
        ("event→object p50, burst", f"{r['burst_p50_ms']:.0f} ms", "", "", ""),
        ("event→object p99, burst", f"{r['burst_p99_ms']:.0f} ms", "", "", ""),
        ("API writes/events", f"{e2e['api_writes']}", f"{e2e['events']}", f"{e2e['api_writes'] / e2e['events']:.2f}", ""),
        ("API requests (GET/POST/PUT)", "/".join(str(e2e["api_requests"].get(m, 0)) for m in ("GET", "POST", "PUT")), "", "", ""),
        (
            f"restart {r['restart_events']} ev→ready",
            f"{r['restart_10k_s']:.1f} s",
            "",
            "",
            verdict("restart_10k_s", r["restart_10k_s"]),
        ),
        ("restart peak RSS", f"{r['restart_rss_mb']:.0f} MB", "", "", verdict("restart_rss_mb", r["restart_rss_mb"])),
    ]
    print_table(
        "controller benchmark (baseline: raw kubernetes-client create against the same emulator, same run)",
        ["measure", "controller", "baseline", "ratio", "target"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--templates", type=int, default=200)
    parser.add_argument("--versions", type=int, default=10, help="versions per template (N = templates x versions)")
    parser.add_argument("--restart-versions", type=int, default=10_000)
    args = parser.parse_args()
    run(args.templates, args.versions, args.restart_versions)


if __name__ == "__main__":
    main()
