"""Readiness that means "can generate": one tiny real request through the engine, cached briefly.

A model that loaded but cannot produce a token is not ready. Probes arrive often (Knative
probes aggressively while a pod starts), so one result serves every probe for
`cache_seconds`, and concurrent probes share the one generation in progress.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtimes.metrics import RuntimeMetrics

PROBE_PROMPT = "Hello"
PROBE_TIMEOUT_SECONDS = 30.0

ProbeFn = Callable[[], Awaitable[str]]  # says what it produced; raises when the engine cannot serve


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    checked_at: float


class ReadinessProbe:
    def __init__(
        self,
        probe: ProbeFn,
        *,
        metrics: RuntimeMetrics,
        cache_seconds: float,
        timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_first_ready: Callable[[], None] | None = None,
    ) -> None:
        self._probe = probe
        self._on_first_ready = on_first_ready  # the start's last phase: the first real generation
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._last: Readiness | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> Readiness:
        if (cached := self._fresh()) is not None:
            return cached
        async with self._lock:
            if (cached := self._fresh()) is not None:  # another probe just ran it
                return cached
            self._last = await self._run()
            return self._last

    def _fresh(self) -> Readiness | None:
        last = self._last
        if last is not None and self._clock() - last.checked_at < self._cache_seconds:
            return last
        return None

    async def _run(self) -> Readiness:
        try:
            produced = await asyncio.wait_for(self._probe(), self._timeout)
            result = Readiness(True, produced, self._clock())
        except TimeoutError:
            result = Readiness(False, f"no output within {self._timeout:g} s", self._clock())
        except Exception as exc:  # any engine failure means "not ready", never a crashed probe
            result = Readiness(False, f"{type(exc).__name__}: {exc}", self._clock())
        self._metrics.readiness.labels("ready" if result.ready else "not_ready").inc()
        if result.ready and self._on_first_ready is not None:
            first, self._on_first_ready = self._on_first_ready, None
            first()
        return result


def engine_probe(engine_client: object, task: str) -> ProbeFn:
    """A probe that generates one token (or computes one embedding, or one score) through vLLM's engine client."""

    async def generate() -> str:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0)
        produced = 0
        async for output in engine_client.generate(PROBE_PROMPT, params, f"stokehold-ready-{uuid.uuid4().hex}"):  # type: ignore[attr-defined]
            produced = max(produced, *(len(c.token_ids) for c in output.outputs), 0)
        if produced < 1:
            raise RuntimeError("the engine finished the probe without a token")
        return "generated a token"

    async def pool(pooling_task: str, what: str) -> str:
        from vllm import PoolingParams

        params = PoolingParams(task=pooling_task)  # type: ignore[arg-type]
        outputs = 0
        async for output in engine_client.encode(PROBE_PROMPT, params, f"stokehold-ready-{uuid.uuid4().hex}"):  # type: ignore[attr-defined]
            if output.outputs is not None:
                outputs += 1
        if outputs < 1:
            raise RuntimeError(f"the engine finished the probe without {what}")
        return f"computed {what}"

    async def embed() -> str:
        return await pool("embed", "an embedding")

    async def score() -> str:
        # a cross-encoder scores a pair with vLLM's classify task; one text is enough to run the whole model
        return await pool("classify", "a score")

    return {"embed": embed, "score": score}.get(task, generate)
