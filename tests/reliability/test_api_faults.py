"""The Kubernetes API fails 20% of the controller's calls (500, 409, 429, slow): it still converges.

The emulator injects the faults on every kind of call the controller makes — lists, gets,
creates, replaces, deletes and status watches — for the whole run, faults included in the
final stretch; only the final check reads the API server's store directly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from events.local_server import LocalNatsServer
from tests.fixtures.figures import FiguresRecorder
from tests.fixtures.nats import nats_client
from tests.k8s_emulator import KubernetesEmulator
from tests.reliability.harness import WriteLog, converge, provision, publish_reliably
from tests.reliability.settings import SEED, SIZES, kube_controller
from tests.reliability.workload import build_workload

ROOT, NAMESPACE = "faults", "api-faults"
PUBLISH_RATE = 250.0  # events/s: a stream of writes, not one coalesced batch
SHARE = 0.05  # of the calls each fault kind takes: four kinds, 20% in all


def inject_faults(emulator: KubernetesEmulator) -> None:
    """Four rules tried in order; each fraction is of the calls the rules before it let through, so each kind gets SHARE."""
    remaining = 1.0
    for kind, options in (
        ("error", {"status": 500}),
        ("throttle", {"retry_after": 1}),
        ("delay", {"delay_s": 0.5}),
        ("conflict", {}),
    ):
        emulator.faults.add(kind, SHARE / remaining, path="inferenceservices", **options)  # type: ignore[arg-type]
        remaining -= SHARE


async def test_api_faults_on_a_fifth_of_calls_still_converge(
    k8s_emulator: KubernetesEmulator, nats_server: LocalNatsServer, tmp_path: Path, figures: FiguresRecorder
) -> None:
    workload = build_workload(events=SIZES.events, templates=SIZES.templates, seed=SEED + 100, namespace=NAMESPACE, root=ROOT)
    k8s_emulator.faults.clear(seed=SEED)
    inject_faults(k8s_emulator)
    writes = WriteLog(k8s_emulator, NAMESPACE)
    controller = kube_controller(k8s_emulator, nats_server.url, root=ROOT, namespace=NAMESPACE, log=tmp_path / "controller.log")
    try:
        async with nats_client(nats_server.options()) as nc:
            await provision(nc, workload)
            controller.start()
            await asyncio.to_thread(controller.wait_ready)
            sequences = await publish_reliably(nc, workload.events, rate=PUBLISH_RATE)
            result = await converge(nc, k8s_emulator, workload, sequences, limit=240)
        stats = k8s_emulator.faults.stats()
        alive = controller.alive()
    finally:
        controller.stop()
        writes.close()
        k8s_emulator.faults.clear()
    calls, injected = stats["calls"].get("total", 0), stats["injected"]
    figures.report(
        **result.figures(),
        trials=1,
        api_calls=calls,
        faults=injected.get("total", 0),
        errors_500=injected.get("error", 0),
        throttled_429=injected.get("throttle", 0),
        conflicts_409=injected.get("conflict", 0),
        slow=injected.get("delay", 0),
        out_of_order=len(writes.out_of_order()),
    )
    assert alive, controller.log_tail()
    assert result.lost == 0, f"{result.wrong[:10]}\n{controller.log_tail()}"
    assert not result.dead_letters, list(result.dead_letters.values())[:5]
    assert not writes.out_of_order()
    # every kind of fault really happened, at about the rate asked for
    assert all(injected.get(kind, 0) > 0 for kind in ("error", "throttle", "delay", "conflict")), stats
    assert injected["total"] >= 0.1 * calls, stats
