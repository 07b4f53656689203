"""Start phases without vLLM: what the handler reads from vLLM's log records, the compile cache's outcome,
the order of the phases, and the replica's ready report on a real nats-server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from events.local_server import LocalNatsServer
from events.types import DeploymentLoadStatus, LoadStatus
from runtimes.metrics import RuntimeMetrics
from runtimes.start_phases import (
    PHASES,
    EngineEvent,
    PhaseLogHandler,
    ReplicaRef,
    StartClock,
    StartTracker,
    compile_result,
    logging_config,
    read_events,
)
from runtimes.status import StatusBus
from tests.fixtures.nats import run_in_thread, stored_statuses


def events(*names: str) -> list[EngineEvent]:
    return [EngineEvent(name, float(i)) for i, name in enumerate(names)]


@pytest.mark.parametrize(
    ("found", "logged", "result"),
    [
        ("missing", ["aot_saved"], "miss"),
        ("missing", ["inductor_miss", "inductor_miss"], "miss"),
        ("complete", ["aot_loaded"], "hit"),
        ("complete", ["inductor_hit", "inductor_hit"], "hit"),
        ("complete", ["inductor_hit", "inductor_miss"], "miss"),
        ("complete", ["aot_load_failed", "aot_saved"], "corrupt"),
        ("incomplete", ["inductor_miss"], "corrupt"),
        ("complete", ["inductor_load_failed", "inductor_miss"], "corrupt"),
        ("complete", ["weights_loaded"], None),  # nothing compiled or loaded (--enforce-eager)
    ],
)
def test_the_compile_cache_outcome_comes_from_vllms_records(found: str, logged: list[str], result: str | None) -> None:
    assert compile_result(found, events(*logged)) == result


def test_the_phase_handler_records_vllms_lines_through_its_logging_config(tmp_path: Path) -> None:
    sink = tmp_path / "phases.jsonl"
    base = {"handlers": {"vllm": {"class": "logging.StreamHandler", "level": "INFO"}}, "loggers": {"vllm": {"handlers": ["vllm"]}}}
    config = logging_config(base, sink, "WARNING")
    assert config["loggers"]["vllm"]["handlers"] == ["vllm", "stokehold_phases"]
    assert config["handlers"]["vllm"]["level"] == "WARNING" and base["handlers"]["vllm"]["level"] == "INFO"

    handler = PhaseLogHandler(str(sink))
    log = logging.getLogger("tests.phases")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:  # vLLM 0.32's own format strings
        log.info("Loading weights took %.2f seconds", 0.02)
        log.info("unrelated %s", "line")
        log.warning("%sCompiling model again due to a load failure from %s, reason: %s", "[backbone] ", "/c/model", "bad")
        log.info("fx graph cache hit for key %s", "abc")
    finally:
        log.removeHandler(handler)

    assert [e.event for e in read_events(sink)] == ["weights_loaded", "aot_load_failed", "inductor_hit"]
    assert "reason: bad" in read_events(sink)[1].message


def test_phases_are_reported_in_their_order_since_process_start() -> None:
    clock = StartClock(started_at=100.0)
    clock.mark("engine_ready", 130.0)
    clock.mark("imports", 110.5)
    clock.mark("first_generation", 131.0)
    assert clock.ordered() == {"imports": 10.5, "engine_ready": 30.0, "first_generation": 31.0}
    assert list(clock.ordered()) == [p for p in PHASES if p in clock.phases]


def test_a_replica_publishes_its_phases_when_first_ready(nats_server: LocalNatsServer, clean_stream: object, tmp_path: Path) -> None:
    env = {
        "STOKEHOLD_DEPLOYMENT": "team-a/chat",
        "STOKEHOLD_TEMPLATE": "tiny-demo",
        "STOKEHOLD_TEMPLATE_VERSION": "3",
        "STOKEHOLD_CONTENT_HASH": "sha256:" + "a" * 64,
        "STOKEHOLD_REPLICA": "chat-predictor-abc",
        "STOKEHOLD_NATS_URL": nats_server.url,
    }
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    start = StartTracker(StartClock(started_at=0.0), replica=ReplicaRef.from_env(env, "host"), bus=StatusBus.from_env(env))
    start.attach(metrics)

    async def become_ready() -> None:
        start.mark("imports", 9.0)
        start.engine_ready()
        start.first_generation()
        await asyncio.gather(*start._tasks)

    run_in_thread(become_ready())

    (report,) = stored_statuses(nats_server, DeploymentLoadStatus)
    assert (report.namespace, report.name, report.template, report.version) == ("team-a", "chat", "tiny-demo", 3)
    assert report.status is LoadStatus.SUCCEEDED and report.replica == "chat-predictor-abc"
    assert report.phases is not None and list(report.phases) == ["imports", "engine_ready", "first_generation"]
    assert report.phases["imports"] == 9.0
    assert registry.get_sample_value("stokehold_runtime_start_phase_seconds", {"phase": "imports"}) == 9.0


def test_without_a_deployment_nothing_is_reported() -> None:
    assert ReplicaRef.from_env({"STOKEHOLD_TEMPLATE": "tiny-demo"}, "host") is None
