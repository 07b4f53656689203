"""Stream pressure: the status and dead-letter streams are filled past their limits, then the controller restarts.

Status events, dead letters and junk used to share one stream (limits retention, discard old) with
the inbound events that are the desired state: filling it deleted every deployed service at the
next restart. Now the desired state has a stream of its own. Here the seeded workload is applied,
then 60 KB messages are pushed onto the status and dead-letter subjects until each stream has
dropped its oldest events several times over, and junk arrives on an inbound subject (which the
controller dead-letters, into the full dead-letter stream, and deletes from the desired state).
The controller restarts (SIGTERM, start), rebuilds from the desired-state stream, and must find
every event there and every InferenceService as expected, without a single write or delete.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NatsClient

from events.local_server import LocalNatsServer
from events.types import StreamRole, stream_name
from tests.fixtures.figures import FiguresRecorder
from tests.fixtures.nats import nats_client
from tests.k8s_emulator import KubernetesEmulator
from tests.reliability.harness import WriteLog, converge, provision, publish_reliably, stream_of
from tests.reliability.settings import SEED, SIZES, kube_controller
from tests.reliability.workload import build_workload

ROOT, NAMESPACE = "pressure", "stream-pressure"
SIDE_LIMIT = 1024 * 1024  # bytes of the status and of the dead-letter stream (the smallest allowed)
JUNK = b"j" * 60_000
FILL_FACTOR = 4  # push this many times a stream's limit through it


async def fill(nc: NatsClient, subject: str, stream: str) -> None:
    """Publish junk on `subject` until `stream` has taken FILL_FACTOR times its limit (dropping the oldest)."""
    js = nc.jetstream()
    for _ in range(FILL_FACTOR * SIDE_LIMIT // len(JUNK) + 1):
        await js.publish(subject, JUNK, stream=stream)


async def test_full_status_and_dead_letter_streams_leave_the_desired_state_intact(
    k8s_emulator: KubernetesEmulator, nats_server: LocalNatsServer, tmp_path: Path, figures: FiguresRecorder
) -> None:
    workload = build_workload(events=SIZES.events, templates=SIZES.templates, seed=SEED, namespace=NAMESPACE, root=ROOT)
    base = stream_of(workload)
    desired, status, deadletter = (stream_name(role, base) for role in StreamRole)
    controller = kube_controller(k8s_emulator, nats_server.url, root=ROOT, namespace=NAMESPACE, log=tmp_path / "controller.log")
    async with nats_client(nats_server.options()) as nc:
        js = nc.jetstream()
        await provision(nc, workload, status_max_bytes=SIDE_LIMIT, max_age_seconds=3600.0)
        try:
            controller.start()
            await asyncio.to_thread(controller.wait_ready)
            sequences = await publish_reliably(nc, workload.events)
            before = await converge(nc, k8s_emulator, workload, sequences, limit=120)
            assert before.lost == 0, before.wrong[:10]

            junk_template = f"{ROOT}-junk"
            await fill(nc, f"{ROOT}.status.{junk_template}.deployment.applied", status)
            await fill(nc, f"{ROOT}.deadletter.{junk_template}", deadletter)
            inbound_junk = [await js.publish(f"{ROOT}.templates.{junk_template}.template.version.published", JUNK) for _ in range(20)]
            await converge(nc, k8s_emulator, workload, {**sequences, **{f"junk{a.seq}": a.seq for a in inbound_junk}}, limit=60)

            assert controller.stop() == 0
            writes = WriteLog(k8s_emulator, NAMESPACE)
            controller.start()
            await asyncio.to_thread(controller.wait_ready)
            after = await converge(nc, k8s_emulator, workload, sequences, limit=120)
            exit_code = controller.stop()
        finally:
            controller.stop()
        state = {name: (await js.stream_info(name)).state for name in (desired, status, deadletter)}
    writes.close()
    touched = writes.writes + sum(history.count(0) for history in writes.versions.values())
    figures.report(
        **after.figures(),
        trials=1,
        restarts=1,
        writes_after_restart=touched,
        desired_messages=state[desired].messages,
        desired_first_seq=state[desired].first_seq,
        status_bytes=state[status].bytes,
        status_dropped=state[status].first_seq - 1,
        deadletter_bytes=state[deadletter].bytes,
        deadletter_dropped=state[deadletter].first_seq - 1,
        inbound_junk_deleted=len(inbound_junk),
    )
    assert after.lost == 0 and not after.dead_letters, f"{after.wrong[:10]}\n{controller.log_tail()}"
    assert touched == 0, f"the restart wrote or deleted objects: {writes.versions}"
    assert state[desired].first_seq == 1 and state[desired].messages == len(workload.events), "every inbound event kept, the junk deleted"
    for side in (status, deadletter):
        assert state[side].bytes <= SIDE_LIMIT and state[side].first_seq > 1, f"{side} kept to its limit by dropping its oldest"
    assert exit_code == 0
