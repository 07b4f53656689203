"""SIGKILL the controller at random moments while events flow; restart it; nothing is lost or reordered.

Each trial runs the controller as its own process (kube sink, Kubernetes API emulator over
HTTPS, a real nats-server) on its own stream, publishes the seeded workload at a steady rate and
kills the controller with SIGKILL at random moments — while it starts, rebuilds, consumes or
writes — starting it again each time. Afterwards the API server must hold exactly the expected
InferenceServices, every event must be settled by the durable consumer, and no object may ever
have gone back to an older version.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from events.local_server import LocalNatsServer
from tests.fixtures.figures import FiguresRecorder
from tests.fixtures.nats import nats_client
from tests.k8s_emulator import KubernetesEmulator
from tests.reliability.harness import WriteLog, converge, provision, publish_reliably
from tests.reliability.settings import SEED, SIZES, kube_controller
from tests.reliability.workload import build_workload

PUBLISH_RATE = 250.0  # events/s: the workload flows for a few seconds, long enough to kill into it


async def test_sigkill_at_random_moments_loses_nothing(
    k8s_emulator: KubernetesEmulator, nats_server: LocalNatsServer, tmp_path: Path, figures: FiguresRecorder
) -> None:
    totals = {"published": 0, "applied": 0, "dead_lettered": 0, "lost": 0, "out_of_order": 0, "kills": 0}
    failures: list[str] = []
    async with nats_client(nats_server.options()) as nc:
        for trial in range(SIZES.trials):
            seed = SEED + trial
            rng = random.Random(seed)
            root, namespace = f"kill{trial}", f"kill-{trial}"
            workload = build_workload(events=SIZES.events, templates=SIZES.templates, seed=seed, namespace=namespace, root=root)
            await provision(nc, workload)
            writes = WriteLog(k8s_emulator, namespace)
            controller = kube_controller(k8s_emulator, nats_server.url, root=root, namespace=namespace, log=tmp_path / f"{root}.log")
            try:
                controller.start()
                publishing = asyncio.create_task(publish_reliably(nc, workload.events, rate=PUBLISH_RATE))
                kills = 0
                while kills < SIZES.kills_per_trial or not publishing.done():
                    if rng.random() < 0.25:
                        await asyncio.sleep(rng.uniform(0.0, 1.5))  # somewhere in start-up or the rebuild
                    else:
                        await asyncio.to_thread(controller.wait_ready)
                        await asyncio.sleep(rng.uniform(0.05, 1.5))  # while consuming and writing
                    controller.kill()
                    kills += 1
                    controller.start()
                sequences = await publishing
                await asyncio.to_thread(controller.wait_ready)
                result = await converge(nc, k8s_emulator, workload, sequences, limit=120)
                exit_code = controller.stop()
            finally:
                controller.stop()
                writes.close()
            backwards = writes.out_of_order()
            print(
                f"trial {trial} (seed {seed}): kills={kills} published={result.published} applied={result.applied} "
                f"dead_lettered={result.dead_lettered} lost={result.lost} writes={writes.writes} out_of_order={len(backwards)}"
            )
            if result.lost or result.dead_letters or backwards or exit_code != 0:
                failures.append(
                    f"trial {trial} (seed {seed}): wrong={result.wrong[:5]} dead_letters={list(result.dead_letters.values())[:3]} "
                    f"out_of_order={backwards[:5]} exit={exit_code}\n{controller.log_tail()}"
                )
            totals["published"] += result.published
            totals["applied"] += result.applied
            totals["dead_lettered"] += result.dead_lettered
            totals["lost"] += result.lost
            totals["out_of_order"] += len(backwards)
            totals["kills"] += kills
    figures.report(trials=SIZES.trials, **totals)
    assert not failures, "\n\n".join(failures)
    assert totals["lost"] == 0
