"""Readiness runs a real generation, caches the result briefly, and is never ready when generation fails."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from runtimes.metrics import RuntimeMetrics
from runtimes.readiness import ReadinessProbe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Engine:
    """A stand-in probe: counts calls, fails or stalls on demand."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.stall = asyncio.Event()
        self.stall.set()

    async def probe(self) -> str:
        self.calls += 1
        await self.stall.wait()
        if self.error is not None:
            raise self.error
        return "generated a token"


def probes(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("stokehold_runtime_readiness_probes_total", {"result": result}) or 0.0


async def test_result_is_cached_for_the_configured_seconds() -> None:
    engine, clock, registry = Engine(), Clock(), CollectorRegistry()
    probe = ReadinessProbe(engine.probe, metrics=RuntimeMetrics(registry), cache_seconds=5, clock=clock)
    first = await probe.check()
    assert first.ready and first.reason == "generated a token"
    clock.now += 4.9
    assert (await probe.check()) is first
    assert engine.calls == 1
    clock.now += 0.2
    assert (await probe.check()).ready
    assert engine.calls == 2
    assert probes(registry, "ready") == 2


async def test_an_engine_that_cannot_generate_is_not_ready_and_recovers() -> None:
    engine, clock, registry = Engine(), Clock(), CollectorRegistry()
    probe = ReadinessProbe(engine.probe, metrics=RuntimeMetrics(registry), cache_seconds=1, clock=clock)
    engine.error = RuntimeError("CUDA error: device-side assert")
    result = await probe.check()
    assert not result.ready and result.reason == "RuntimeError: CUDA error: device-side assert"
    clock.now += 2
    engine.error = None
    assert (await probe.check()).ready
    assert probes(registry, "not_ready") == 1 and probes(registry, "ready") == 1


async def test_a_stalled_generation_times_out_as_not_ready() -> None:
    engine = Engine()
    engine.stall.clear()
    probe = ReadinessProbe(engine.probe, metrics=RuntimeMetrics(CollectorRegistry()), cache_seconds=5, timeout_seconds=0.05)
    result = await probe.check()
    assert not result.ready and "no output within 0.05 s" in result.reason


async def test_concurrent_probes_share_one_generation() -> None:
    engine = Engine()
    engine.stall.clear()
    probe = ReadinessProbe(engine.probe, metrics=RuntimeMetrics(CollectorRegistry()), cache_seconds=5)
    checks = [asyncio.create_task(probe.check()) for _ in range(5)]
    await asyncio.sleep(0.05)
    engine.stall.set()
    results = await asyncio.gather(*checks)
    assert engine.calls == 1
    assert all(r is results[0] and r.ready for r in results)
