"""A replica killed mid-load never leaves its adapter LOADING: its LOADING stops repeating and reads
as FAILED; a replica restarted under the same name loads again and reports SUCCEEDED.

Real processes and a real nats-server; the load stalls deterministically on a FIFO that nobody writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import DeliverPolicy

from events.codec import DecodedEvent, decode
from events.local_server import LocalNatsServer
from events.publisher import Publisher
from events.reader import replay
from events.status_view import summarize
from events.types import (
    AdapterLoadStatusData,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentApplied,
    EventKind,
    LoadStatus,
    status_filter,
)
from tests.fixtures.nats import run_in_thread

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "tiny-demo"
REPORT_EVERY_S = 0.2


@contextlib.contextmanager
def replica_process(nats_url: str, cache: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | {
        "STOKEHOLD_DEPLOYMENT": f"default/{TEMPLATE}",
        "STOKEHOLD_TEMPLATE": TEMPLATE,
        "STOKEHOLD_TEMPLATE_VERSION": "1",
        "STOKEHOLD_ADAPTER_CACHE": str(cache),
        "STOKEHOLD_REPLICA": "r1",
        "STOKEHOLD_NATS_URL": nats_url,
    }
    proc = subprocess.Popen([sys.executable, "-m", "tests.runtime.file_replica", str(REPORT_EVERY_S)], cwd=REPO, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


async def wait_for_reports(server: LocalNatsServer, enough: Callable[[list[AdapterLoadStatusData]], bool]) -> None:
    """Read the adapter load statuses stored so far and from now on until `enough` says so."""
    client = await server.options().connect()
    seen: list[AdapterLoadStatusData] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        event = decode(msg.headers, msg.data)
        if isinstance(event.data, AdapterLoadStatusData):
            seen.append(event.data)
            if enough(seen):
                done.set()

    try:
        await client.jetstream().subscribe(status_filter(), cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        async with asyncio.timeout(120):
            await done.wait()
    finally:
        await client.close()


async def stored_statuses(server: LocalNatsServer) -> list[DecodedEvent]:
    client = await server.options().connect()
    try:
        async with contextlib.aclosing(replay(client, status_filter())) as items:
            return [item.event async for item in items if item.event is not None]
    finally:
        await client.close()


async def publish(server: LocalNatsServer, *events: tuple[EventKind, Any]) -> None:
    client = await server.options().connect()
    try:
        for kind, data in events:
            await Publisher(client).publish(kind, data)
    finally:
        await client.close()


def loading_beats(reports: list[AdapterLoadStatusData]) -> int:
    return sum(1 for r in reports if r.replica == "r1" and r.status is LoadStatus.LOADING)


@pytest.mark.usefixtures("clean_stream")
def test_a_replica_killed_mid_load_reads_failed_and_a_restarted_one_succeeds(nats_server: LocalNatsServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    adapter = cache / "adapters" / "slow"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    weights = adapter / "adapter_model.safetensors"
    os.mkfifo(weights)  # nobody writes it: the load stalls there until the process dies
    doc = AdapterVersionPublished(template=TEMPLATE, name="slow", version=1, source="adapters/slow", rank=8)
    run_in_thread(
        publish(
            nats_server,
            (EventKind.ADAPTER_PUBLISHED, doc),
            (EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template=TEMPLATE, adapter="slow")),
        )
    )

    with replica_process(nats_server.url, cache) as proc:
        run_in_thread(wait_for_reports(nats_server, lambda seen: loading_beats(seen) >= 2))  # loading, and still alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    events = run_in_thread(stored_statuses(nats_server))
    last = max(e.time for e in events if e.time is not None)
    assert {(type(e.data).__name__, e.data.status) for e in events} == {("AdapterLoadStatusData", LoadStatus.LOADING)}
    # beside the controller's row of the deployment, read at the time of the last report and well after it
    applied = DecodedEvent(
        id="applied",
        kind=EventKind.DEPLOYMENT_APPLIED,
        source="/controller",
        time=events[0].time,
        content_hash=None,
        data=DeploymentApplied(template=TEMPLATE, version=1, namespace="default", name=TEMPLATE, action="created"),
    )
    assert summarize([applied, *events], now=last)[0].adapters == {"slow@1": "LOADING 1/1"}
    later = last + timedelta(hours=1)
    assert summarize([applied, *events], now=later)[0].adapters == {"slow@1": "FAILED 1/1 (r1 stopped reporting mid-load)"}

    weights.unlink()
    weights.write_bytes(b"\0" * 16)
    with replica_process(nats_server.url, cache):
        run_in_thread(wait_for_reports(nats_server, lambda seen: any(r.status is LoadStatus.SUCCEEDED for r in seen)))
    events = run_in_thread(stored_statuses(nats_server))
    assert summarize([applied, *events], now=later)[0].adapters == {"slow@1": "SUCCEEDED 1/1"}
