"""Event ids cannot be guessed, so claiming one first suppresses nothing.

JetStream drops a message whose `Nats-Msg-Id` it has seen within the duplicate window, and
that window spans a whole stream. With predictable ids (the CLI's `name.vN.<hash>`, the
controller's visible prefix plus a counter) a tenant could publish junk under a victim's
next id on its own subject, and the victim's event would be acknowledged as a duplicate
and never stored. Here an attacker does exactly that, on a real nats-server with the
controller running, against the `stokehold` CLI and against the controller's own status
events and dead letters; every one of them must still be stored, and the victim's events applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from controller.app import Controller
from controller.cli import build_config
from events.codec import NATS_MSG_ID
from events.local_server import LocalNatsServer
from events.reader import replay
from templates.catalog import CATALOG_DIR, load_file
from tests.fixtures.figures import FiguresRecorder
from tests.security.hostile import run_stokehold

TINY = CATALOG_DIR / "tiny-demo.yaml"
ATTACKER_SUBJECT = "stokehold.templates.attacker.deployment.requested"  # the attacker's own template
NAMESPACE = "llm"


def predictable_version_id(path: Path) -> str:
    """The id the CLI used to give a version: anyone holding the (public) document can compute it."""
    version = load_file(path)
    return f"{version.name}.v{version.version}.{version.content_hash.removeprefix('sha256:')[:32]}"


def successors(observed: str, count: int = 25) -> list[str]:
    """The ids an attacker would try next after seeing `observed`: a counter's next values, or the next UUIDs."""
    counter = re.fullmatch(r"(.*\.)(\d+)", observed)
    if counter is not None:
        prefix, number = counter.group(1), int(counter.group(2))
        return [f"{prefix}{number + step}" for step in range(1, count + 1)]
    with contextlib.suppress(ValueError):
        value = uuid.UUID(observed).int
        return [str(uuid.UUID(int=(value + step) % (1 << 128))) for step in range(1, count + 1)]
    return []


class Wire:
    """Every status event and dead letter the controller sends, as seen by a plain subscriber (stored or not)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def on_message(self, msg: Msg) -> None:
        self.ids.append((msg.headers or {}).get(NATS_MSG_ID, ""))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LocalNatsServer]:
    with LocalNatsServer(store_dir=tmp_path / "store") as running:
        yield running


@contextlib.asynccontextmanager
async def controller(url: str, directory: Path) -> AsyncIterator[Controller]:
    config = build_config(
        {
            "nats.url": url,
            "sink": "dir",
            "dir": directory,
            "namespaces": [NAMESPACE],
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "retry_backoff_s": 0.05,
            "resync_interval_s": 0,
        }
    )
    running = Controller(config)
    task = asyncio.create_task(running.run())
    started = asyncio.create_task(running.wait_started())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise the start-up error
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 15)


async def cli(url: str, *args: str) -> str:
    """Run the `stokehold` command as a user does; its output. Fails the test on a non-zero exit."""
    code, output = await run_stokehold([sys.executable, "-m", "events", "--nats-url", url, *args], {})
    assert code == 0, output
    return output


async def claim(client: NatsClient, ids: list[str]) -> int:
    """Junk on the attacker's own subject under each id; how many of the claims JetStream stored."""
    js = client.jetstream()
    stored = 0
    for event_id in ids:
        ack = await js.publish(ATTACKER_SUBJECT, b"junk", headers={NATS_MSG_ID: event_id})
        stored += not ack.duplicate
    return stored


async def settled(client: NatsClient, running: Controller) -> None:
    """The controller has nothing pending or unacknowledged, and the stream confirmed every status event it sent."""
    js = client.jetstream()
    for _ in range(1500):
        info = await js.consumer_info(running.config.stream, running.config.durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"the controller did not settle: {info}")
    assert running.publisher is not None
    await running.publisher.flush()


async def stored_ids(client: NatsClient, subject_filter: str) -> set[str]:
    """The ids of the valid events stored on `subject_filter`."""
    async with contextlib.aclosing(replay(client, subject_filter)) as items:
        return {item.event.id async for item in items if item.event is not None}


def deployed_version(directory: Path) -> int | None:
    path = directory / NAMESPACE / "tiny-demo.yaml"
    if not path.exists():
        return None
    return int(yaml.safe_load(path.read_text())["metadata"]["labels"]["stokehold.dev/version"])


async def until(condition: Any, what: str) -> None:
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


async def test_claiming_the_next_ids_first_suppresses_nothing(server: LocalNatsServer, tmp_path: Path, figures: FiguresRecorder) -> None:
    directory = tmp_path / "gitops"
    version_2 = tmp_path / "tiny-demo-v2.yaml"
    document = yaml.safe_load(TINY.read_text())
    document["version"] = 2
    document["spec"]["generation"]["sampling"]["max_tokens"] = 64
    version_2.write_text(yaml.safe_dump(document))
    wire = Wire()
    observer = await nats.connect(server.url)
    try:
        await cli(server.url, "stream", "provision")
        await observer.subscribe("stokehold.status.tiny-demo.>", cb=wire.on_message)
        await observer.subscribe("stokehold.deadletter.tiny-demo", cb=wire.on_message)
        async with controller(server.url, directory) as running:
            # 1. the CLI's version ids: claim the victim's next versions before it publishes them
            claims = [predictable_version_id(TINY), predictable_version_id(version_2)]
            claimed = await claim(observer, claims)
            await cli(server.url, "publish", str(TINY))
            await cli(server.url, "deploy", "tiny-demo", "-n", NAMESPACE)
            await until(lambda: deployed_version(directory) == 1, "version 1 deployed")
            await settled(observer, running)

            # 2. the controller's ids: claim what follows every id seen on the wire so far
            await observer.flush()
            guesses = [guess for seen in wire.ids for guess in successors(seen)]
            claims += guesses
            claimed += await claim(observer, guesses)
            await cli(server.url, "publish", str(version_2))  # → status events (updated, load status)
            victim_junk = await observer.jetstream().publish(
                "stokehold.templates.tiny-demo.deployment.requested", b"oops"
            )  # → a dead letter
            await until(lambda: deployed_version(directory) == 2, "version 2 deployed")
            await settled(observer, running)
            await observer.flush()

        status = await stored_ids(observer, "stokehold.status.tiny-demo.>")
        dead_letters = await stored_ids(observer, "stokehold.deadletter.tiny-demo")
        inbound = await stored_ids(observer, "stokehold.templates.tiny-demo.>")
    finally:
        await observer.drain()

    sent = wire.ids
    lost = [event_id for event_id in sent if event_id not in status | dead_letters]
    victim_valid = 3  # version 1, the deployment and version 2 (and one bad event, acknowledged below)
    suppressed = len(lost) + (victim_valid - len(inbound)) + int(bool(victim_junk.duplicate))
    figures.report(
        published=victim_valid + 1,
        applied=victim_valid if deployed_version(directory) == 2 else 0,
        dead_lettered=len(dead_letters),
        lost=suppressed,
        trials=len(claims),
        claims_stored=claimed,
        controller_events=len(sent),
        suppressed=suppressed,
    )
    assert claimed == len(set(claims)), "the attacker's claims were stored (and would have suppressed predictable ids)"
    assert len(inbound) == victim_valid and not victim_junk.duplicate, "every event the victim published is stored"
    assert len(dead_letters) == 1, "the victim's bad event was dead-lettered"
    assert len(sent) >= 4 and lost == [], f"status events or dead letters not stored: {lost}"
    assert deployed_version(directory) == 2
