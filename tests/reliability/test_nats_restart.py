"""The NATS server restarts mid-stream (same storage directory): the controller reconnects by itself, nothing is lost.

One restart is graceful (SIGTERM), one a crash (SIGKILL); the server stays down for a moment
each time while the publisher keeps trying. The controller process is never restarted: it must
ride both outages on its own reconnects, and the stream (file storage) must keep every event.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from events.local_server import LocalNatsServer
from tests.fixtures.figures import FiguresRecorder
from tests.fixtures.nats import nats_client
from tests.k8s_emulator import KubernetesEmulator
from tests.reliability.harness import WriteLog, converge, provision, publish_reliably
from tests.reliability.settings import SEED, SIZES, kube_controller
from tests.reliability.workload import build_workload

PUBLISH_RATE = 200.0
ROOT, NAMESPACE = "restart", "nats-restart"


def reconnects(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    match = re.search(r"^stokehold_controller_nats_reconnects_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def outage(server: LocalNatsServer, *, crash: bool, down_s: float) -> None:
    await asyncio.to_thread(server.kill if crash else server.stop)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(server.start)


async def test_nats_restarts_mid_stream_lose_nothing(k8s_emulator: KubernetesEmulator, tmp_path: Path, figures: FiguresRecorder) -> None:
    workload = build_workload(events=SIZES.events, templates=SIZES.templates, seed=SEED, namespace=NAMESPACE, root=ROOT)
    with LocalNatsServer(store_dir=tmp_path / "jetstream") as server:
        writes = WriteLog(k8s_emulator, NAMESPACE)
        # the test's own client must outlast the outages too
        async with nats_client(server.options(max_reconnect_attempts=-1, reconnect_time_wait=0.5)) as nc:
            await provision(nc, workload)
            controller = kube_controller(k8s_emulator, server.url, root=ROOT, namespace=NAMESPACE, log=tmp_path / "controller.log")
            try:
                controller.start()
                await asyncio.to_thread(controller.wait_ready)
                duration = len(workload.events) / PUBLISH_RATE
                publishing = asyncio.create_task(publish_reliably(nc, workload.events, rate=PUBLISH_RATE))
                await asyncio.sleep(duration * 0.25)
                await outage(server, crash=False, down_s=1.5)
                await asyncio.sleep(duration * 0.25)
                await outage(server, crash=True, down_s=1.0)
                sequences = await publishing
                result = await converge(nc, k8s_emulator, workload, sequences, limit=120)
                reconnected = reconnects(controller.port)
                still_running = controller.alive()
                exit_code = controller.stop()
            finally:
                controller.stop()
                writes.close()
    backwards = writes.out_of_order()
    figures.report(
        **result.figures(),
        trials=1,
        nats_restarts=2,
        controller_reconnects=int(reconnected),
        controller_starts=controller.starts,
        out_of_order=len(backwards),
    )
    assert still_running and controller.starts == 1, controller.log_tail()
    assert reconnected >= 2, f"the controller reconnected {reconnected} times\n{controller.log_tail()}"
    assert result.lost == 0, f"{result.wrong[:10]}\n{controller.log_tail()}"
    assert not result.dead_letters and not backwards
    assert exit_code == 0
