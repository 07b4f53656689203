"""Our runtime versus plain vLLM on the same tiny model and load (`python -m bench.runtime`, `make bench-runtime`).

Each round starts both servers one after the other (the order alternates between rounds) and
measures each cold start (spawn → /v1/models answers → first streamed token); then, with both up,
it runs pairs of load blocks, one block on each server back to back: 64 streamed completions, 8 at
a time, 32 output tokens each with `ignore_eos`. Ratios are medians over the pairs, so that other
work on the (shared) machine weighs on both members of a pair alike.
Our runtime runs with a template's defaults set (stop sequence and max_tokens added to each
body, concurrency limit above the load), so its per-request work is all on the measured path.
Results: bench/results/runtime.json (`throughput_ratio`, `ttft_p50_added_ms`, `cold_start_ratio`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import console, percentile, print_table, write_results
from runtimes.local import TINY_ENGINE_ARGS, LocalServer, free_port, plain_vllm_command, runtime_command
from runtimes.tiny_model import build_tiny_model

MODEL = "tiny"
REQUESTS = 64
CONCURRENCY = 8
OUTPUT_TOKENS = 32
WARMUP_REQUESTS = 8
ENGINE_ARGS = (*TINY_ENGINE_ARGS, "--max-model-len=512")
# the same KV cache size for both (our launcher would otherwise pick it on the CPU by itself)
COMMON_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
RUNTIME_ENV = {
    "MODELPLANE_GENERATION_DEFAULTS": json.dumps({"stop": ["<|end|>"], "sampling": {"max_tokens": OUTPUT_TOKENS}}),
    "MODELPLANE_MAX_CONCURRENCY": str(REQUESTS),
}
TARGETS = {"throughput_ratio": 0.97, "ttft_p50_added_ms": 5.0, "cold_start_ratio": 1.10}
READY_TIMEOUT = 600.0


@dataclass
class RequestTiming:
    ttft: float
    itl: float  # mean seconds between streamed chunks after the first
    tokens: int


@dataclass
class Block:
    throughput: float
    ttft_p50_ms: float


@dataclass
class Variant:
    """One server kind: its cold starts and the load blocks measured on it."""

    name: str
    ready_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    timings: list[RequestTiming] = field(default_factory=list)


async def stream_completion(client: httpx.AsyncClient, prompt: str) -> RequestTiming:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "temperature": 0.0, "stream": True, "ignore_eos": True}
    started = time.perf_counter()
    arrivals: list[float] = []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"]:
                arrivals.append(time.perf_counter())
    if not arrivals:
        raise RuntimeError("the stream produced no chunk")
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return RequestTiming(ttft=arrivals[0] - started, itl=statistics.fmean(gaps) if gaps else 0.0, tokens=len(arrivals))


async def run_load(base_url: str, requests: int, concurrency: int) -> tuple[list[RequestTiming], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)
        timings: list[RequestTiming] = []

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                timings.append(await stream_completion(client, f"Request {index}: tell me about the moon over Paris."))

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
        first, _ = asyncio.run(run_load(server.base_url, 1, 1))
        variant.first_token_s.append(asked_at + first[0].ttft)
        asyncio.run(run_load(server.base_url, WARMUP_REQUESTS, CONCURRENCY))
    except BaseException:
        server.stop()
        raise
    console.print(f"  {variant.name}: ready {variant.ready_s[-1]:.1f} s, first token {variant.first_token_s[-1]:.1f} s")
    return server


def load_block(variant: Variant, server: LocalServer) -> Block:
    timings, elapsed = asyncio.run(run_load(server.base_url, REQUESTS, CONCURRENCY))
    variant.timings += timings
    block = Block(sum(t.tokens for t in timings) / elapsed, percentile([t.ttft * 1000 for t in timings], 50))
    variant.blocks.append(block)
    return block


def summarise(variant: Variant) -> dict[str, Any]:
    ttfts = [t.ttft * 1000 for t in variant.timings]
    return {
        "throughput_tokens_per_s": statistics.median(b.throughput for b in variant.blocks),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "itl_p50_ms": percentile([t.itl * 1000 for t in variant.timings], 50),
        "ready_s": statistics.median(variant.ready_s),
        "cold_start_s": statistics.median(variant.first_token_s),
        "cold_starts": len(variant.first_token_s),
        "load_blocks": len(variant.blocks),
    }


def run_round(round_index: int, variants: dict[str, Variant], model_dir: Path, logs: Path, pairs: int) -> list[tuple[Block, Block]]:
    """Start both servers (order alternating by round), then `pairs` pairs of load blocks, one on each
    server back to back (order alternating by pair): whatever else runs on the machine weighs on both
    members of a pair alike. Returns (plain, runtime) block pairs."""
    order = ("plain", "runtime") if round_index % 2 == 0 else ("runtime", "plain")
    servers: dict[str, LocalServer] = {}
    measured: list[tuple[Block, Block]] = []
    try:
        for name in order:
            servers[name] = start(variants[name], model_dir, logs)
        for pair in range(pairs):
            blocks = {name: load_block(variants[name], servers[name]) for name in (order if pair % 2 == 0 else order[::-1])}
            measured.append((blocks["plain"], blocks["runtime"]))
        ratios = [ours.throughput / plain.throughput for plain, ours in measured]
        console.print(f"  throughput ratio per pair: {' '.join(f'{r:.2f}' for r in ratios)}")
    finally:
        for server in servers.values():
            server.stop()
    return measured


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds: both servers started (order alternating), then the load")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of load blocks (one per server, back to back) per round")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the server being measured, too
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-") as work:
        model_dir = build_tiny_model(Path(work) / "tiny")
        variants = {"plain": Variant("plain"), "runtime": Variant("runtime")}
        pairs: list[tuple[Block, Block]] = []
        for round_index in range(options.rounds):
            console.print(f"round {round_index + 1}/{options.rounds}")
            pairs += run_round(round_index, variants, model_dir, Path(work) / "logs", options.pairs)
    plain, ours = summarise(variants["plain"]), summarise(variants["runtime"])
    # paired comparisons: the two blocks of a pair ran back to back
    results = {
        "throughput_ratio": statistics.median(b.throughput / a.throughput for a, b in pairs),
        "ttft_p50_added_ms": statistics.median(b.ttft_p50_ms - a.ttft_p50_ms for a, b in pairs),
        "cold_start_ratio": ours["cold_start_s"] / plain["cold_start_s"],
    }
    passed = {
        "throughput_ratio": results["throughput_ratio"] >= TARGETS["throughput_ratio"],
        "ttft_p50_added_ms": results["ttft_p50_added_ms"] <= TARGETS["ttft_p50_added_ms"],
        "cold_start_ratio": results["cold_start_ratio"] <= TARGETS["cold_start_ratio"],
    }
    rows = [
        ("throughput (tokens/s)", plain["throughput_tokens_per_s"], ours["throughput_tokens_per_s"], results["throughput_ratio"]),
        ("TTFT p50 (ms)", plain["ttft_p50_ms"], ours["ttft_p50_ms"], ours["ttft_p50_ms"] / plain["ttft_p50_ms"]),
        ("TTFT p99 (ms)", plain["ttft_p99_ms"], ours["ttft_p99_ms"], ours["ttft_p99_ms"] / plain["ttft_p99_ms"]),
        ("inter-token p50 (ms)", plain["itl_p50_ms"], ours["itl_p50_ms"], ours["itl_p50_ms"] / plain["itl_p50_ms"]),
        ("spawn → ready (s)", plain["ready_s"], ours["ready_s"], ours["ready_s"] / plain["ready_s"]),
        ("spawn → first token (s)", plain["cold_start_s"], ours["cold_start_s"], results["cold_start_ratio"]),
    ]
    print_table(
        f"runtime vs plain vLLM: blocks of {REQUESTS} requests, concurrency {CONCURRENCY}, {OUTPUT_TOKENS} tokens; "
        f"{options.rounds} rounds x {options.pairs} pairs; ratios: median over pairs",
        ["metric", "plain vLLM", "runtime", "ratio"],
        rows,
    )
    verdict = ", ".join(f"{k} {results[k]:.3f} ({'ok' if passed[k] else 'MISSED'}, target {TARGETS[k]})" for k in results)
    console.print(verdict)
    path = write_results(
        "runtime",
        results
        | {
            "targets": TARGETS,
            "passed": passed,
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
