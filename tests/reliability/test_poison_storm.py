"""A poison storm: 4,000 oversized events whose rejection echoes escaping characters, among 100 legitimate ones.

The finding: a rejection reason embedded `repr()` of a `vllm_args` key, so each DEL character grew
five-fold; a 250 KB event made a 1.25 MB dead letter, over the message size cap, so the event was
nak'ed forever, logging 1.25 MB each time. 4,000 of them wrote 7.4 GB of logs in two minutes and
kept legitimate events from being applied for more than 90 s.

Here attackers publish 4,000 such versions on their own templates' subjects (each key 16,000
DEL characters, every 20th 250,000; all 250,000 under `make soak`) while the seeded workload's
100 legitimate events go to other templates. Every poison event must end as one bounded dead
letter and leave the desired-state stream, every legitimate event must be applied, and the
controller's log must stay bounded (its size is measured, not guessed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.consumer import MAX_REASON_CHARS
from controller.logs import MAX_MESSAGE_CHARS, JsonFormatter
from events.codec import NATS_MSG_ID, encode
from events.local_server import LocalNatsServer
from events.types import EventKind, TemplateVersionPublished, template_subject
from templates.catalog import load_catalog
from tests.fixtures.figures import FiguresRecorder
from tests.fixtures.nats import nats_client
from tests.k8s_emulator import KubernetesEmulator
from tests.reliability.harness import DURABLE, Accounting, converge, dead_letters, provision, publish_reliably, settled, stream_of
from tests.reliability.settings import SEED, SOAK, kube_controller
from tests.reliability.workload import BASE_TEMPLATE, SOURCE, build_workload

ROOT, NAMESPACE = "poison", "poison-storm"
POISON, LEGITIMATE, ATTACKERS = 4000, 100, 4
POISON_WITH_CUTS = 2000 if SOAK else 1000  # each cut costs a rebuild that reads the poison not yet deleted: slow by design
CUT_PENDING = "2MB"  # nats-server's max_pending: what may wait for a client before it is cut off as a slow consumer
SMALL_KEY, LARGE_KEY, LARGE_EVERY = 16_000, 250_000, 20
LOG_BYTES_PER_EVENT = 4096  # the bound asserted on the controller's log, on average per event (one line is at most ~3 KB)
CONCURRENT_PUBLISHES = 32


def poison_events(count: int, all_large: bool) -> Iterator[tuple[str, dict[str, str], bytes]]:
    """(subject, headers, payload) of each poison event: a valid version but for one vllm_args key of DEL characters."""
    base = next(v for v in load_catalog() if v.name == BASE_TEMPLATE).to_document()
    for index in range(count):
        template = f"{ROOT}-attacker-{index % ATTACKERS}"
        document = {**base, "template": {**base["template"], "name": template}, "version": index + 1}
        headers, _ = encode(EventKind.VERSION_PUBLISHED, TemplateVersionPublished.model_validate(document), source=SOURCE)
        size = LARGE_KEY if all_large or index % LARGE_EVERY == 0 else SMALL_KEY
        document["spec"] = {**document["spec"], "engine": {**document["spec"]["engine"], "vllm_args": {"\x7f" * size: 1}}}
        event_id = str(uuid.uuid4())
        headers = {**headers, "ce-id": event_id, NATS_MSG_ID: event_id}
        yield template_subject(template, EventKind.VERSION_PUBLISHED, ROOT), headers, json.dumps(document, ensure_ascii=False).encode()


def size_of(path: Path) -> int:
    return path.stat().st_size


@dataclass
class Storm:
    """What one storm did, measured from the stream, the API server and the controller's log."""

    result: Accounting
    poison: int
    ended: int
    letters: dict[int, str]
    legitimate_letters: dict[int, str]  # what a failure shows first: why a legitimate event was dead-lettered
    log_bytes: int
    log: str
    desired_messages: int
    legitimate_published_s: float
    legitimate_settled_s: float
    all_settled_s: float
    alive: bool

    def why(self) -> str:
        return f"dead-lettered: {self.legitimate_letters}; wrong: {self.result.wrong[:10]}\n{self.log}"

    def figures(self) -> dict[str, object]:
        return {
            **self.result.figures(),
            "trials": 1,
            "poison": self.poison,
            "poison_ended": self.ended,
            "legitimate_applied": self.result.applied,
            "log_bytes": self.log_bytes,
            "log_bytes_per_event": self.log_bytes // (self.poison + LEGITIMATE),
            "longest_reason": max((len(reason) for reason in self.letters.values()), default=0),
            "desired_messages_after": self.desired_messages,
            "legitimate_published_s": round(self.legitimate_published_s, 1),
            "legitimate_settled_s": round(self.legitimate_settled_s, 1),
            "all_settled_s": round(self.all_settled_s, 1),
        }


async def run_storm(server: LocalNatsServer, emulator: KubernetesEmulator, log: Path, poison: int, *, all_large: bool) -> Storm:
    """Start the controller, publish `poison` poison events and, once a quarter are out, the legitimate ones; wait for all."""
    workload = build_workload(events=LEGITIMATE, templates=10, seed=SEED, namespace=NAMESPACE, root=ROOT)
    controller = kube_controller(emulator, server.url, root=ROOT, namespace=NAMESPACE, log=log)
    async with nats_client(server.options()) as nc:
        js = nc.jetstream()
        await provision(nc, workload)
        try:
            controller.start()
            await asyncio.to_thread(controller.wait_ready)
            log_before = size_of(log)
            loop = asyncio.get_running_loop()
            started = loop.time()
            poisoned: dict[str, int] = {}
            storm_under_way = asyncio.Event()

            async def storm() -> None:
                pending: list[tuple[str, asyncio.Future[object]]] = []
                for subject, headers, payload in poison_events(poison, all_large):
                    pending.append((headers[NATS_MSG_ID], asyncio.ensure_future(js.publish(subject, payload, headers=headers, timeout=30))))
                    if len(pending) >= CONCURRENT_PUBLISHES:
                        for event_id, ack in pending:
                            poisoned[event_id] = (await ack).seq  # type: ignore[attr-defined]
                        pending.clear()
                    if len(poisoned) >= poison // 4:
                        storm_under_way.set()
                for event_id, ack in pending:
                    poisoned[event_id] = (await ack).seq  # type: ignore[attr-defined]
                storm_under_way.set()

            storming = asyncio.create_task(storm())
            await storm_under_way.wait()
            sequences = await publish_reliably(nc, workload.events)  # while poison events are queued ahead and more arrive
            legitimate_published = loop.time() - started
            await storming
            everything = {**sequences, **poisoned}
            legitimate_settled_s = None
            for _ in range(2400):  # cheap polls first: the accounting reads every dead letter, once, below
                if legitimate_settled_s is None and await settled(nc, stream_of(workload), DURABLE, sequences.values()) == LEGITIMATE:
                    legitimate_settled_s = loop.time() - started
                if await settled(nc, stream_of(workload), DURABLE, everything.values()) == len(everything):
                    break
                await asyncio.sleep(0.25)
            result = await converge(nc, emulator, workload, everything, limit=30)
            settled_s = loop.time() - started
            letters = await dead_letters(nc, stream_of(workload), ROOT)
            desired = (await js.stream_info(stream_of(workload))).state
            alive = controller.alive()
        finally:
            controller.stop()
    poison_sequences = set(poisoned.values())
    return Storm(
        result=result,
        poison=len(poison_sequences),
        ended=sum(1 for sequence in poison_sequences if sequence in letters),
        letters=letters,
        legitimate_letters={sequence: letters[sequence] for sequence in sequences.values() if sequence in letters},
        log_bytes=size_of(log) - log_before,
        log=controller.log_tail(),
        desired_messages=desired.messages,
        legitimate_published_s=legitimate_published,
        legitimate_settled_s=legitimate_settled_s or settled_s,
        all_settled_s=settled_s,
        alive=alive,
    )


async def test_a_poison_storm_ends_and_legitimate_events_flow(
    k8s_emulator: KubernetesEmulator, nats_server: LocalNatsServer, tmp_path: Path, figures: FiguresRecorder
) -> None:
    storm = await run_storm(nats_server, k8s_emulator, tmp_path / "controller.log", POISON, all_large=SOAK)
    figures.report(**storm.figures())  # type: ignore[arg-type]
    assert storm.alive, storm.log
    assert storm.result.lost == 0 and storm.result.applied == LEGITIMATE, storm.why()
    assert storm.ended == POISON == storm.poison, "every poison event ended as a dead letter"
    assert all(len(reason) <= MAX_REASON_CHARS for reason in storm.letters.values())
    assert storm.log_bytes <= (POISON + LEGITIMATE) * LOG_BYTES_PER_EVENT, f"{storm.log_bytes} bytes of log"
    assert storm.desired_messages == LEGITIMATE, "the poison events were deleted from the desired state"


async def test_a_poison_storm_through_slow_consumer_cuts_loses_nothing(
    k8s_emulator: KubernetesEmulator, tmp_path: Path, figures: FiguresRecorder
) -> None:
    """The same storm on a server that cuts a client off when 3 MB wait for it (64 MB by default).

    Deliveries in transit are lost at each cut and come back only after their ack wait, behind later
    events: the storm that found the controller skipping them, or rejecting the later ones for want of
    them. Deleting the dead-lettered events from the stream is best effort here (a delete can time out
    through the cuts), so that is reported, not asserted.
    """
    log = tmp_path / "controller.log"
    with LocalNatsServer(config=f"max_pending: {CUT_PENDING}") as server:
        storm = await run_storm(server, k8s_emulator, log, POISON_WITH_CUTS, all_large=False)
    text = log.read_text(errors="replace")
    cuts, rebuilds = text.count("disconnected from NATS"), text.count("rebuilding the state from the stream")
    figures.report(**storm.figures(), server_max_pending=CUT_PENDING, cuts=cuts, order_rebuilds=rebuilds)  # type: ignore[arg-type]
    assert storm.alive, storm.log
    assert storm.result.lost == 0 and storm.result.applied == LEGITIMATE, storm.why()
    assert storm.ended == POISON_WITH_CUTS == storm.poison, "every poison event ended as a dead letter"


def test_a_log_line_is_bounded() -> None:
    """The unit behind the log figure: a 1.25 MB reason and a 100 KB field make one line of a few KB."""
    record = logging.makeLogRecord({"msg": "rejected event: %s", "args": ("\x7f" * 1_250_000,), "levelname": "WARNING"})
    record.subject = "s" * 100_000
    line = JsonFormatter().format(record)
    assert len(line.encode()) < 2 * MAX_MESSAGE_CHARS + 1024
    assert json.loads(line)["message"].endswith("[1250016 characters, clipped]")
