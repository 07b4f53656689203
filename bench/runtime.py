"""Our runtime versus plain vLLM on the same tiny model and load (`python -m bench.runtime`, `make bench-runtime`).

Each round starts both servers one after the other (the order alternates between rounds: the
server started second ran a few percent faster in every round, so rounds come in pairs) and
measures each cold start (spawn → /v1/models answers → first streamed token); then, with both up,
it runs pairs of load blocks, one block on each server back to back: 64 streamed completions, 8 at
a time, 32 output tokens each with `ignore_eos`. Each server's engine keeps the core vLLM bound its
model worker to and its HTTP process gets the other, with the client (`isolate_engine`), and every
block waits until the other server's engine has stopped busy-looping: without both, blocks on two
cores came out fast or several times slower at random and the comparison was noise. Throughput and
TTFT compare medians over the blocks; a start can only be slowed down by other work, so cold starts
compare the fastest. Paired ratios, the HTTP process's CPU time per request and the gate's own cost
measured in-process (microseconds per request, independent of scheduling) are reported alongside.
Our runtime runs with a template's defaults set (stop sequence and max_tokens added to each
body, concurrency limit above the load), so its per-request work is all on the measured path; plain
vLLM is sent the same stop sequence in the body, so both engines do the same work (checking stop
strings is vLLM's work, not the layer's) and only the HTTP layer differs. Tokens are counted from
each stream's `usage`.
Results: bench/results/runtime.json (`throughput_ratio`, `ttft_p50_added_ms`, `cold_start_ratio`), with
a 95 % bootstrap interval for the two load figures (resampling block pairs) and a conclusion per
target (`met`/`missed` only when the whole interval lies on one side of it, else `inconclusive`),
and every block pair's raw figures so that any other statistic can be recomputed from the file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client import CollectorRegistry

from bench.common import console, percentile, print_table, write_results
from runtimes.defaults import RequestDefaults
from runtimes.gate import Receive, RuntimeGate, Scope, Send
from runtimes.local import TINY_ENGINE_ARGS, LocalServer, free_port, plain_vllm_command, runtime_command
from runtimes.metrics import RuntimeMetrics
from runtimes.tiny_model import build_tiny_model

MODEL = "tiny"
REQUESTS = 64
CONCURRENCY = 8
OUTPUT_TOKENS = 32
WARMUP_REQUESTS = 8
ENGINE_ARGS = (*TINY_ENGINE_ARGS, "--max-model-len=512")
# the same KV cache size for both (our launcher would otherwise pick it on the CPU by itself)
TEMPLATE_STOP = ("<|end|>",)  # the served template's stop sequence: our runtime adds it to every request
COMMON_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
RUNTIME_ENV = {
    "STOKEHOLD_GENERATION_DEFAULTS": json.dumps({"stop": list(TEMPLATE_STOP), "sampling": {"max_tokens": OUTPUT_TOKENS}}),
    "STOKEHOLD_MAX_CONCURRENCY": str(REQUESTS),
}
TARGETS = {"throughput_ratio": 0.97, "ttft_p50_added_ms": 5.0, "cold_start_ratio": 1.10}
READY_TIMEOUT = 600.0
ENGINE_SETTLE_S = 2.0
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class RequestTiming:
    ttft: float
    itl: float  # mean seconds between streamed chunks after the first
    tokens: int


@dataclass
class Block:
    throughput: float
    ttft_p50_ms: float
    api_cpu_ms: float  # CPU time of the HTTP server process (ours: vLLM's app + our layer) per request


Pair = tuple[Block, Block]  # (plain, runtime), measured back to back


@dataclass
class Variant:
    """One server kind: its cold starts and the load blocks measured on it."""

    name: str
    # what the body adds for this server: plain vLLM is sent the stop sequence our runtime adds by
    # itself, so that both engines do the same work and only the HTTP layer differs
    extra_body: dict[str, Any] = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    timings: list[RequestTiming] = field(default_factory=list)


async def stream_completion(client: httpx.AsyncClient, prompt: str, extra: dict[str, Any]) -> RequestTiming:
    body = {
        "model": MODEL, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "temperature": 0.0, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True}, **extra,
    }  # fmt: skip
    started = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                arrivals.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if not arrivals or not tokens:
        raise RuntimeError("the stream produced no chunk or no usage")
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # tokens from the server's usage, not the chunk count: a stop sequence may hold text back and merge chunks
    return RequestTiming(ttft=arrivals[0] - started, itl=statistics.fmean(gaps) if gaps else 0.0, tokens=tokens)


async def run_load(base_url: str, requests: int, concurrency: int, extra: dict[str, Any]) -> tuple[list[RequestTiming], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)
        timings: list[RequestTiming] = []

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                timings.append(await stream_completion(client, f"Request {index}: tell me about the moon over Paris.", extra))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return timings, time.perf_counter() - started


def start(variant: Variant, model_dir: Path, logs: Path) -> LocalServer:
    """Spawn the server and record its cold start: spawn → /v1/models answers → first streamed token."""
    port = free_port()
    log = logs / f"{variant.name}-{port}.log"
    if variant.name == "runtime":
        server = LocalServer(runtime_command(model_dir, MODEL, port, *ENGINE_ARGS), port, log, COMMON_ENV | RUNTIME_ENV)
    else:
        server = LocalServer(plain_vllm_command(model_dir, MODEL, port, *ENGINE_ARGS), port, log, COMMON_ENV)
    server.start()
    try:
        variant.ready_s.append(server.wait_until("/v1/models", READY_TIMEOUT))
        asked_at = time.perf_counter() - server.spawned_at
        first, _ = asyncio.run(run_load(server.base_url, 1, 1, variant.extra_body))
        variant.first_token_s.append(asked_at + first[0].ttft)
        asyncio.run(run_load(server.base_url, WARMUP_REQUESTS, CONCURRENCY, variant.extra_body))
    except BaseException:
        server.stop()
        raise
    console.print(f"  {variant.name}: ready {variant.ready_s[-1]:.1f} s, first token {variant.first_token_s[-1]:.1f} s")
    return server


def isolate_engine(pid: int) -> set[int]:
    """Give a server's engine and its HTTP layer a core each; returns the HTTP layer's cores.

    On the CPU, vLLM binds its model worker's compute threads to some cores and leaves one free,
    but everything else floats over every core: whenever the HTTP server or the benchmark's client
    lands on the worker's core a decoding step waits, and the engine's scheduler competes with the
    HTTP server for the other. Blocks came out fast or twice as slow at random. Here the engine
    (the server's child processes: scheduler and worker) keeps the worker's cores and the HTTP
    process, where the two servers differ, gets the free ones, with the client (see `load_block`).
    Both servers get the same. Where vLLM bound nothing, every core is left to every process.
    """
    server = psutil.Process(pid)
    engine = server.children(recursive=True)
    every_core = set(os.sched_getaffinity(0))
    engine_cores = {core for process in engine for core in process.cpu_affinity() if set(process.cpu_affinity()) != every_core}
    http_cores = every_core - engine_cores
    if not engine_cores or not http_cores:
        return every_core
    for process in engine:
        _set_affinity(process.pid, engine_cores)
    _set_affinity(pid, http_cores)
    return http_cores


def _set_affinity(pid: int, cores: set[int]) -> None:
    for thread in psutil.Process(pid).threads():  # affinity is per thread
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(thread.id, cores)


def load_block(variant: Variant, server: LocalServer, client_cores: set[int]) -> Block:
    # vLLM's engine busy-loops for a second on its shared-memory queue after its last step; both
    # engines run on the same cores, so the other server's engine must be idle before a block starts
    time.sleep(ENGINE_SETTLE_S)
    api_server = psutil.Process(server.pid)
    cpu_before = sum(api_server.cpu_times()[:2])
    every_core = set(os.sched_getaffinity(0))
    _set_affinity(os.getpid(), client_cores)
    try:
        timings, elapsed = asyncio.run(run_load(server.base_url, REQUESTS, CONCURRENCY, variant.extra_body))
    finally:
        _set_affinity(os.getpid(), every_core)  # servers started later must see every core
    api_cpu_ms = (sum(api_server.cpu_times()[:2]) - cpu_before) * 1000 / REQUESTS
    variant.timings += timings
    block = Block(sum(t.tokens for t in timings) / elapsed, percentile([t.ttft * 1000 for t in timings], 50), api_cpu_ms)
    variant.blocks.append(block)
    return block


def summarise(variant: Variant) -> dict[str, Any]:
    ttfts = [t.ttft * 1000 for t in variant.timings]
    return {
        "throughput_median_tokens_per_s": statistics.median(b.throughput for b in variant.blocks),
        "throughput_best_tokens_per_s": max(b.throughput for b in variant.blocks),
        "ttft_p50_median_block_ms": statistics.median(b.ttft_p50_ms for b in variant.blocks),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "itl_p50_ms": percentile([t.itl * 1000 for t in variant.timings], 50),
        "api_cpu_ms_per_request": statistics.median(b.api_cpu_ms for b in variant.blocks),
        "ready_s": min(variant.ready_s),
        "cold_start_best_s": min(variant.first_token_s),
        "cold_start_median_s": statistics.median(variant.first_token_s),
        "cold_starts": len(variant.first_token_s),
        "ready_samples_s": variant.ready_s,
        "cold_start_samples_s": variant.first_token_s,
        "load_blocks": len(variant.blocks),
    }


def run_round(round_index: int, variants: dict[str, Variant], model_dir: Path, logs: Path, pairs: int) -> list[Pair]:
    """Start both servers (order alternating by round), then `pairs` pairs of load blocks, one on each
    server back to back (order alternating by pair): whatever else runs on the machine weighs on both
    members of a pair alike. Returns (plain, runtime) block pairs."""
    order = ("plain", "runtime") if round_index % 2 == 0 else ("runtime", "plain")
    servers: dict[str, LocalServer] = {}
    measured: list[Pair] = []
    try:
        for name in order:
            servers[name] = start(variants[name], model_dir, logs)
        free_cores = {name: isolate_engine(server.pid) for name, server in servers.items()}
        for pair in range(pairs):
            blocks = {
                name: load_block(variants[name], servers[name], free_cores[name]) for name in (order if pair % 2 == 0 else order[::-1])
            }
            measured.append((blocks["plain"], blocks["runtime"]))
        ratios = [ours.throughput / plain.throughput for plain, ours in measured]
        console.print(f"  throughput ratio per pair: {' '.join(f'{r:.2f}' for r in ratios)}")
    finally:
        for server in servers.values():
            server.stop()
    return measured


TABLE_ROWS = (
    ("throughput, median block (tokens/s)", "throughput_median_tokens_per_s"),
    ("throughput, best block (tokens/s)", "throughput_best_tokens_per_s"),
    ("TTFT p50, median block (ms)", "ttft_p50_median_block_ms"),
    ("TTFT p50, all requests (ms)", "ttft_p50_ms"),
    ("TTFT p99, all requests (ms)", "ttft_p99_ms"),
    ("inter-token p50 (ms)", "itl_p50_ms"),
    ("HTTP process CPU per request (ms)", "api_cpu_ms_per_request"),
    ("spawn → ready, fastest (s)", "ready_s"),
    ("spawn → first token, fastest (s)", "cold_start_best_s"),
    ("spawn → first token, median (s)", "cold_start_median_s"),
)


class _StandInApp:
    """Reads the body and answers 200, like the cheapest possible vLLM route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def layer_cost_us(requests: int = 20_000) -> dict[str, float]:
    """Microseconds per request through the stand-in app, directly and behind our gate (same defaults
    as the measured runtime: KServe prefix, concurrency accounting, stop and max_tokens added)."""
    body = json.dumps({"model": MODEL, "prompt": "Request 1: tell me about the moon over Paris.", "stream": True}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    gate = RuntimeGate(
        _StandInApp(),
        metrics=RuntimeMetrics(CollectorRegistry()),
        max_concurrency=REQUESTS,
        defaults=RequestDefaults(stop=TEMPLATE_STOP, max_tokens=OUTPUT_TOKENS),
    )

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run(app: Any, path: str) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await app({"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "headers": headers}, receive, send)
        return (time.perf_counter() - started) / requests * 1e6

    async def both() -> dict[str, float]:
        direct = min([await run(_StandInApp(), "/v1/completions") for _ in range(3)])
        gated = min([await run(gate, "/openai/v1/completions") for _ in range(3)])
        return {"direct": direct, "gate": gated}

    return asyncio.run(both())


def ratio(ours: dict[str, Any], plain: dict[str, Any], key: str) -> float:
    return float(ours[key]) / float(plain[key])


def headline(pairs: Sequence[Pair]) -> dict[str, float]:
    """The two load figures of the results: ratio of the median block throughputs, difference of the
    median block TTFT p50s, as the docstring and runtimes/README.md announce them (the bootstrap recomputes exactly these)."""
    return {
        "throughput_ratio": statistics.median(ours.throughput for _, ours in pairs)
        / statistics.median(plain.throughput for plain, _ in pairs),
        "ttft_p50_added_ms": statistics.median(ours.ttft_p50_ms for _, ours in pairs)
        - statistics.median(plain.ttft_p50_ms for plain, _ in pairs),
    }


def bootstrap_ci(pairs: Sequence[Pair], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of `headline`, resampling whole pairs (seeded: reproducible)."""
    rng = random.Random(seed)
    samples = [headline(rng.choices(pairs, k=len(pairs))) for _ in range(resamples)]
    return {key: (percentile([s[key] for s in samples], 2.5), percentile([s[key] for s in samples], 97.5)) for key in samples[0]}


def verdict(interval: tuple[float, float], target: float, *, at_least: bool) -> str:
    """`met` or `missed` only when the whole interval lies on one side of the target."""
    low, high = interval
    if at_least:
        return "met" if low >= target else "missed" if high < target else "inconclusive"
    return "met" if high <= target else "missed" if low > target else "inconclusive"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds: both servers started (order alternating), then the load; rounds differ by a few %%"
    )
    parser.add_argument("--pairs", type=int, default=8, help="pairs of load blocks (one per server, back to back) per round")
    options = parser.parse_args(argv)
    if options.rounds < 2 or options.rounds % 2:
        parser.error("--rounds must be even: each server must be started first as often as second")
    signal.signal(signal.SIGTERM, _interrupt)  # stop the server being measured, too
    with tempfile.TemporaryDirectory(prefix="stokehold-bench-") as work:
        model_dir = build_tiny_model(Path(work) / "tiny")
        variants = {"plain": Variant("plain", extra_body={"stop": list(TEMPLATE_STOP)}), "runtime": Variant("runtime")}
        pairs: list[Pair] = []
        for round_index in range(options.rounds):
            console.print(f"round {round_index + 1}/{options.rounds}")
            pairs += run_round(round_index, variants, model_dir, Path(work) / "logs", options.pairs)
    plain, ours = summarise(variants["plain"]), summarise(variants["runtime"])
    # Per-block medians compare the servers; a start can only be slowed down by other work, so cold
    # starts compare the fastest. The layer's own cost is measured in-process as well. The bootstrap
    # intervals say whether the run can tell the target apart from the noise at all.
    layer = layer_cost_us()
    results = headline(pairs) | {"cold_start_ratio": ratio(ours, plain, "cold_start_best_s")}
    intervals = bootstrap_ci(pairs)
    conclusions = {
        "throughput_ratio": verdict(intervals["throughput_ratio"], TARGETS["throughput_ratio"], at_least=True),
        "ttft_p50_added_ms": verdict(intervals["ttft_p50_added_ms"], TARGETS["ttft_p50_added_ms"], at_least=False),
    }
    diagnostics = {
        "layer_added_us_per_request": layer["gate"] - layer["direct"],
        "api_cpu_ratio": ratio(ours, plain, "api_cpu_ms_per_request"),
        "throughput_ratio_paired_median": statistics.median(b.throughput / a.throughput for a, b in pairs),
        "ttft_p50_added_ms_paired_median": statistics.median(b.ttft_p50_ms - a.ttft_p50_ms for a, b in pairs),
        "throughput_ratio_best_blocks": ratio(ours, plain, "throughput_best_tokens_per_s"),
        "cold_start_ratio_median": ratio(ours, plain, "cold_start_median_s"),
    }
    passed = {
        "throughput_ratio": results["throughput_ratio"] >= TARGETS["throughput_ratio"],
        "ttft_p50_added_ms": results["ttft_p50_added_ms"] <= TARGETS["ttft_p50_added_ms"],
        "cold_start_ratio": results["cold_start_ratio"] <= TARGETS["cold_start_ratio"],
    }
    rows = [(label, plain[key], ours[key], ratio(ours, plain, key)) for label, key in TABLE_ROWS]
    print_table(
        f"runtime vs plain vLLM: blocks of {REQUESTS} requests, concurrency {CONCURRENCY}, {OUTPUT_TOKENS} tokens; "
        f"{options.rounds} rounds x {options.pairs} pairs",
        ["metric", "plain vLLM", "runtime", "ratio"],
        rows,
    )
    console.print(", ".join(f"{k} {results[k]:.3f} ({'ok' if passed[k] else 'MISSED'}, target {TARGETS[k]})" for k in results))
    for key, (low, high) in intervals.items():
        console.print(f"  {key}: 95 % interval {low:.3f} .. {high:.3f} over {len(pairs)} block pairs -> target {conclusions[key]}")
    console.print("diagnostics: " + ", ".join(f"{k} {v:.3f}" for k, v in diagnostics.items()))
    console.print(f"layer cost in-process: {layer['direct']:.1f} µs per request without the gate, {layer['gate']:.1f} µs with it")
    path = write_results(
        "runtime",
        results
        | {
            "targets": TARGETS,
            "passed": passed,
            "ci95": {key: list(interval) for key, interval in intervals.items()},
            "conclusion": conclusions,
            "pairs": [{"plain": asdict(a), "runtime": asdict(b)} for a, b in pairs],
            "diagnostics": diagnostics,
            "layer_cost_us": layer,
            "plain": plain,
            "runtime": ours,
            "load": {
                "requests_per_block": REQUESTS,
                "concurrency": CONCURRENCY,
                "output_tokens": OUTPUT_TOKENS,
                "rounds": options.rounds,
                "pairs_per_round": options.pairs,
                "engine_args": list(ENGINE_ARGS),
            },
        },
    )
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
