"""The runtime's start, phase by phase: seconds from process start to the end of each phase.

    download          the head filled the model cache itself (only then)
    imports           vLLM's serving modules are imported, the engine is about to start
    weights_loaded    the engine's worker has loaded the weights (vLLM's own log record)
    engine_ready      the engine is up: KV cache sized, model compiled or loaded from the compile cache
    first_generation  the first real generation (the readiness probe's), i.e. ready

The engine runs in vLLM's own processes, so what happens there is read from vLLM's log records,
through vLLM's documented logging hook (`--log-config-file`, a `dictConfig` JSON that its engine
and worker processes apply too): `logging_config` adds `PhaseLogHandler` to vLLM's own
configuration, and the handler appends one JSON line per watched record to a file the launcher
reads once the engine is ready. Watched: weights loaded, and the compile cache's outcome (an AOT
or graph cache load, a load failure, a fresh compile). A user-given logging configuration is
left alone; those phases are then missing, never wrong.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.types import DeploymentLoadStatus, EventKind, LoadStatus
from runtimes.compile_cache import KeptCompileCache
from runtimes.metrics import RuntimeMetrics
from runtimes.status import StatusBus

logger = logging.getLogger("stokehold.runtime")

PHASES = ("download", "imports", "weights_loaded", "engine_ready", "first_generation")
HANDLER_NAME = "stokehold_phases"

# substrings of vLLM 0.32's format strings (record.msg, before %-formatting) → event
WATCHED_RECORDS = (
    ("Loading weights took", "weights_loaded"),  # model_loader/default_loader.py
    ("Model loading took", "weights_loaded"),  # v1/worker/gpu_model_runner.py (after any loader)
    ("Directly load AOT compilation from path", "aot_loaded"),  # compilation/decorators.py
    ("Compiling model again due to a load failure", "aot_load_failed"),  # compilation/decorators.py
    ("saved AOT compiled function to", "aot_saved"),  # compilation/decorators.py: compiled now, kept for the next start
    ("Directly load the compiled graph(s)", "graph_loaded"),  # compilation/backends.py
    ("Compiling a graph for compile range", "graph_compiled"),  # compilation/backends.py
    ("Overall time to stream", "weights_loaded"),  # runai_model_streamer (--load-format runai_streamer logs no vLLM line)
    ("fx graph cache hit", "inductor_hit"),  # torch/_inductor/codecache.py (INFO)
    ("fx graph cache miss", "inductor_miss"),
    ("fx graph cache unable to load compiled graph", "inductor_load_failed"),  # a kept entry that does not unpickle
)
# loggers outside vLLM's tree whose INFO records are watched: inductor's cache, Run:ai's streamer
OTHER_LOGGERS = ("torch._inductor.codecache", "runai_model_streamer.safetensors_streamer.safetensors_streamer")
FRESH = frozenset({"aot_saved", "graph_compiled", "inductor_miss"})
REUSED = frozenset({"aot_loaded", "graph_loaded", "inductor_hit"})
FAILED = frozenset({"aot_load_failed", "inductor_load_failed"})  # a kept artefact that could not be used


class PhaseLogHandler(logging.Handler):
    """Runs in vLLM's processes: appends {"event", "at", "message"} for each watched record (O_APPEND: whole lines)."""

    def __init__(self, path: str) -> None:
        super().__init__(level=logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg if isinstance(record.msg, str) else ""
        for needle, event in WATCHED_RECORDS:
            if needle in msg:
                try:
                    line = json.dumps({"event": event, "at": record.created, "message": record.getMessage()[:1000]}) + "\n"
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    try:
                        os.write(fd, line.encode())
                    finally:
                        os.close(fd)
                except Exception:
                    self.handleError(record)
                return


def logging_config(base: Mapping[str, Any], sink: Path, level: str) -> dict[str, Any]:
    """vLLM's default `dictConfig` (`vllm.logger.DEFAULT_LOGGING_CONFIG`) at `level`, plus the phase handler on `vllm`."""
    config = copy.deepcopy(dict(base))
    for formatter in config.get("formatters", {}).values():
        if "log_level" in formatter:
            formatter["log_level"] = level
    for handler in config.get("handlers", {}).values():
        handler["level"] = level
    config["handlers"][HANDLER_NAME] = {"()": f"{__name__}.PhaseLogHandler", "path": str(sink), "level": "INFO"}
    vllm_logger = config["loggers"]["vllm"]
    vllm_logger["handlers"] = [*vllm_logger.get("handlers", []), HANDLER_NAME]
    # the phase handler needs INFO records; vLLM's own handler still drops what is below `level`
    vllm_logger["level"] = "DEBUG" if level == "DEBUG" else "INFO"
    for name in OTHER_LOGGERS:
        config["loggers"][name] = {"level": "INFO", "handlers": [HANDLER_NAME], "propagate": True}
    return config


@dataclass(frozen=True)
class EngineEvent:
    event: str
    at: float  # epoch seconds
    message: str = ""


def read_events(sink: Path) -> list[EngineEvent]:
    try:
        lines = sink.read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            raw = json.loads(line)
            events.append(EngineEvent(str(raw["event"]), float(raw["at"]), str(raw.get("message", ""))))
        except (ValueError, KeyError, TypeError):
            continue
    return events


def compile_result(found: str, events: Iterable[EngineEvent]) -> str | None:
    """hit | miss | corrupt for this start's compile cache, from what the launcher found and what vLLM logged.

    `found`: the compile cache folder as the launcher found it (compile_cache.Found). None: nothing was compiled
    or loaded (e.g. --enforce-eager)."""
    seen = {e.event for e in events}
    if not seen & (FRESH | REUSED | FAILED):
        return None
    if seen & FAILED or found == "incomplete":
        return "corrupt"
    return "hit" if seen & REUSED and not seen & FRESH else "miss"


@dataclass
class StartClock:
    """Phases in seconds since `started_at` (epoch seconds, the process's start)."""

    started_at: float
    phases: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str, at: float | None = None) -> float:
        seconds = round(max(0.0, (time.time() if at is None else at) - self.started_at), 3)
        self.phases[phase] = seconds
        return seconds

    def ordered(self) -> dict[str, float]:
        return {phase: self.phases[phase] for phase in PHASES if phase in self.phases}


@dataclass(frozen=True)
class ReplicaRef:
    """Who this replica is, for its DeploymentLoadStatus (the controller renders these variables)."""

    template: str
    version: int | None
    namespace: str
    name: str
    content_hash: str | None
    replica: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], hostname: str) -> ReplicaRef | None:
        from runtimes.adapters import ENV_REPLICA
        from runtimes.engine_args import ENV_CONTENT_HASH, ENV_DEPLOYMENT, ENV_TEMPLATE, ENV_TEMPLATE_VERSION

        raw = env.get(ENV_DEPLOYMENT, "").strip()
        template = env.get(ENV_TEMPLATE, "").strip()
        if not raw or not template:
            return None
        namespace, _, name = raw.rpartition("/")
        version = env.get(ENV_TEMPLATE_VERSION, "").strip()
        return cls(
            template=template,
            version=int(version) if version.isdigit() else None,
            namespace=namespace or "default",
            name=name,
            content_hash=env.get(ENV_CONTENT_HASH) or None,
            replica=env.get(ENV_REPLICA) or hostname,
        )


@dataclass
class StartTracker:
    """One start's phases, on /metrics as they end; the compile cache's outcome; the ready report on the bus."""

    clock: StartClock
    sink: Path | None = None  # where PhaseLogHandler writes the engine's records (None: not configured)
    compile_cache: KeptCompileCache | None = None
    replica: ReplicaRef | None = None
    bus: StatusBus | None = None
    metrics: RuntimeMetrics | None = None
    compile_result: str | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def mark(self, phase: str, at: float | None = None) -> float:
        seconds = self.clock.mark(phase, at)
        if self.metrics is not None:
            self.metrics.start_phase.labels(phase).set(seconds)
        return seconds

    def attach(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics
        for phase, seconds in self.clock.ordered().items():
            metrics.start_phase.labels(phase).set(seconds)

    def engine_failed(self) -> bool:
        """The engine did not start: True if the kept compile cache was set aside and a fresh start is worth a try."""
        if self.compile_cache is None or not self.compile_cache.retry_fresh():
            return False
        os.environ.update(self.compile_cache.env())
        if self.sink is not None:
            self.sink.write_text("")  # the failed attempt's records are not this start's
        return True

    def engine_ready(self) -> None:
        events = read_events(self.sink) if self.sink is not None else []
        loaded = [e.at for e in events if e.event == "weights_loaded"]
        if loaded:
            self.mark("weights_loaded", max(loaded))  # every worker has its weights
        self.mark("engine_ready")
        if self.compile_cache is not None:
            self.compile_result = compile_result(self.compile_cache.found, events)
            if self.compile_result is not None and self.metrics is not None:
                self.metrics.compile_cache.labels(self.compile_result).inc()
            logger.info("compile cache %s: %s", self.compile_cache.lease.folder, self.compile_result or "not used")
            self.compile_cache.lease.complete()

    def engine_gone(self) -> None:
        if self.compile_cache is not None:
            self.compile_cache.lease.discard()

    def first_generation(self) -> None:
        self.mark("first_generation")
        phases = self.clock.ordered()
        logger.info("ready: %s", ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items()))
        if self.replica is not None and self.bus is not None:
            task = asyncio.get_running_loop().create_task(self._report(phases))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _report(self, phases: dict[str, float]) -> None:
        assert self.replica is not None and self.bus is not None
        r = self.replica
        data = DeploymentLoadStatus(
            template=r.template,
            version=r.version,
            namespace=r.namespace,
            name=r.name,
            content_hash=r.content_hash,
            status=LoadStatus.SUCCEEDED,
            replica=r.replica,
            phases=phases,
        )
        async with self.bus as bus:
            await bus.publish(r.template, EventKind.LOAD_STATUS, data)
