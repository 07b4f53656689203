"""Events benchmark: `python -m bench.events` (`make bench-events`).

Publish-with-ack throughput of our `Publisher` against raw nats-py JetStream publishes of
the same bytes, on the same local nats-server (file storage, as in production), in the
same run. Each round publishes N events both ways in alternating blocks of 50, so that
changes in machine load (other processes on a small box) hit both sides alike; a round's
ratio compares its two sides.

- publisher: what a caller does —
  - `deployment.requested`: `request_deployment(...)` from plain arguments, validated and
    encoded on every call (the one-click deploy);
  - `deployment.ready`: `publish(kind, model)` of an already-validated status model (what
    the controller sends most);
  - `template.version.published`: `publish_version(version)` of an already-validated
    version, which also hashes the version's canonical JSON for `stokeholdhash`;
- raw: `js.publish(subject, payload, headers=...)` of the same events pre-encoded, i.e. the
  wire work alone. The publisher makes the same `JetStreamContext.publish` call (naming the
  stream it expects), so the ratio is the price of validating and encoding with the
  cloudevents SDK on every call.

`publisher_vs_raw_throughput_ratio` is the lower of the median round ratios of the two
frequent events (requests and status). Version publishing is reported beside it: versions
are published rarely, by people or CI, and most of its extra cost is the content hash
that identifies the version (templates.schema), not the publisher. The ratio is
information, not a target: a publish waits about a millisecond for the stream's
acknowledgement, and the publisher's code is written to be read. Writes bench/results/events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from nats.js import JetStreamContext

from bench.common import console, median, percentile, print_table, write_results
from events.codec import encode, nats_subject
from events.local_server import LocalNatsServer
from events.publisher import Publisher
from events.stream import provision_stream
from events.types import DeploymentReady, DeploymentRequested, EventKind, TemplateVersionPublished
from templates.catalog import load_catalog

WORKLOADS = ("deployment.requested", "deployment.ready", "template.version.published")
HEADLINE_WORKLOADS = ("deployment.requested", "deployment.ready")


@dataclass
class Round:
    raw_per_s: float
    publisher_per_s: float
    raw_latencies_us: list[float]
    publisher_latencies_us: list[float]

    @property
    def ratio(self) -> float:
        return self.publisher_per_s / self.raw_per_s


def _versions(count: int, round_number: int) -> list[TemplateVersionPublished]:
    """Distinct, validated versions shaped like the catalog's (different numbers, so different hashes)."""
    catalog = load_catalog()
    versions = []
    for index in range(count):
        base = catalog[index % len(catalog)].to_document()
        base["version"] = (round_number * count + index) % 1_000_000 + 1
        versions.append(TemplateVersionPublished.model_validate(base))
    return versions


def _requests(count: int, round_number: int) -> list[dict[str, Any]]:
    return [{"template": "gemma-7b-it", "namespace": "bench", "name": f"d{round_number}-{index}"} for index in range(count)]


def _ready(count: int, round_number: int) -> list[DeploymentReady]:
    content_hash = "sha256:" + "ab" * 32
    return [
        DeploymentReady(
            template="gemma-7b-it",
            version=1,
            namespace="bench",
            name=f"r{round_number}-{index}",
            content_hash=content_hash,
            url=f"http://r{round_number}-{index}.bench.example.com",
        )
        for index in range(count)
    ]


BLOCK = 50  # events per timed block; raw and publisher blocks alternate, so both see the same machine load


async def _timed_block(calls: list[Callable[[], Awaitable[object]]], latencies: list[float]) -> float:
    started = time.perf_counter()
    for call in calls:
        begin = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - begin) * 1e6)
    return time.perf_counter() - started


async def _interleaved(
    raw_calls: list[Callable[[], Awaitable[object]]], publisher_calls: list[Callable[[], Awaitable[object]]], raw_first: bool
) -> Round:
    gc.collect()  # the events prepared for this round start in the old generation, on both sides alike
    raw_latencies: list[float] = []
    publisher_latencies: list[float] = []
    raw_seconds = publisher_seconds = 0.0
    for block, start in enumerate(range(0, len(raw_calls), BLOCK)):
        raw_block, publisher_block = raw_calls[start : start + BLOCK], publisher_calls[start : start + BLOCK]
        if (block % 2 == 0) == raw_first:
            raw_seconds += await _timed_block(raw_block, raw_latencies)
            publisher_seconds += await _timed_block(publisher_block, publisher_latencies)
        else:
            publisher_seconds += await _timed_block(publisher_block, publisher_latencies)
            raw_seconds += await _timed_block(raw_block, raw_latencies)
    return Round(len(raw_calls) / raw_seconds, len(publisher_calls) / publisher_seconds, raw_latencies, publisher_latencies)


async def _round(js: JetStreamContext, publisher: Publisher, workload: str, count: int, number: int, raw_first: bool) -> Round:
    data: list[Any]
    if workload == "deployment.requested":
        requests = _requests(count, number)
        publisher_calls: list[Callable[[], Awaitable[object]]] = [
            partial(publisher.request_deployment, **request) for request in _requests(count, number + 10_000)
        ]
        kind, data = EventKind.DEPLOYMENT_REQUESTED, [DeploymentRequested.model_validate(request) for request in requests]
    elif workload == "deployment.ready":
        publisher_calls = [partial(publisher.publish, EventKind.DEPLOYMENT_READY, ready) for ready in _ready(count, number + 10_000)]
        kind, data = EventKind.DEPLOYMENT_READY, _ready(count, number)
    else:
        versions = _versions(count, number)
        publisher_calls = [partial(publisher.publish_version, version) for version in _versions(count, number + 10_000)]
        kind, data = EventKind.VERSION_PUBLISHED, versions
    wire = [(nats_subject(kind, item), *encode(kind, item, source=publisher.source)) for item in data]
    raw_calls: list[Callable[[], Awaitable[object]]] = [
        partial(js.publish, subject, payload, headers=headers) for subject, headers, payload in wire
    ]
    return await _interleaved(raw_calls, publisher_calls, raw_first)


async def run(count: int, rounds: int) -> dict[str, Any]:
    async with LocalNatsServer() as server, await Publisher.connect(server.options(), source="/bench/events") as publisher:
        js = publisher.client.jetstream()
        await provision_stream(js)
        for workload in WORKLOADS:  # warm up both paths (imports, inboxes, the server's file store)
            await _round(js, publisher, workload, max(50, count // 10), 900, raw_first=True)
        results: dict[str, list[Round]] = {workload: [] for workload in WORKLOADS}
        for number in range(rounds):
            for workload in WORKLOADS:
                results[workload].append(await _round(js, publisher, workload, count, number, raw_first=number % 2 == 0))
        server_version = publisher.client.connected_server_version
    return _report(results, count, rounds, str(server_version))


def _report(results: dict[str, list[Round]], count: int, rounds: int, server_version: str) -> dict[str, Any]:
    rows = []
    figures: dict[str, Any] = {}
    for workload, measured in results.items():
        raw_latencies = [value for r in measured for value in r.raw_latencies_us]
        publisher_latencies = [value for r in measured for value in r.publisher_latencies_us]
        figures[workload] = {
            "raw_msgs_per_s": median(r.raw_per_s for r in measured),
            "publisher_msgs_per_s": median(r.publisher_per_s for r in measured),
            "ratio": median(r.ratio for r in measured),
            "round_ratios": [round(r.ratio, 4) for r in measured],
            "raw_p50_us": percentile(raw_latencies, 50),
            "raw_p99_us": percentile(raw_latencies, 99),
            "publisher_p50_us": percentile(publisher_latencies, 50),
            "publisher_p99_us": percentile(publisher_latencies, 99),
        }
        f = figures[workload]
        rows.append(
            [
                workload,
                f["raw_msgs_per_s"],
                f["publisher_msgs_per_s"],
                f["ratio"],
                f["raw_p50_us"],
                f["publisher_p50_us"],
                f["publisher_p99_us"],
            ]
        )
    headline = min(figures[workload]["ratio"] for workload in HEADLINE_WORKLOADS)
    print_table(
        f"publish with ack: Publisher vs raw nats-py JetStream ({rounds} rounds x {count} events, nats-server {server_version})",
        ["workload", "raw msg/s", "publisher msg/s", "ratio", "raw p50 µs", "publisher p50 µs", "publisher p99 µs"],
        rows,
    )
    console.print(
        f"publisher_vs_raw_throughput_ratio = {headline:.3f} (information, not a target; lower of {' and '.join(HEADLINE_WORKLOADS)})"
    )
    return {
        "publisher_vs_raw_throughput_ratio": round(headline, 4),
        "headline_workloads": list(HEADLINE_WORKLOADS),
        "version_publish_ratio": round(figures["template.version.published"]["ratio"], 4),
        "events_per_round": count,
        "rounds": rounds,
        "nats_server": server_version,
        "workloads": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.events", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000, help="events per round and side")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per workload")
    args = parser.parse_args()
    results = asyncio.run(run(args.count, args.rounds))
    console.print(f"wrote {write_results('events', results)}")


if __name__ == "__main__":
    main()
