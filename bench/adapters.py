"""Time to serve a new LoRA adapter: an attach event against a redeploy (`python -m bench.adapters`, `make bench-adapters`).

- attach: a running replica (LoRA on, following the bus) is sent `deployment.adapter.attached`;
  measured from the publish to the first successful completion on the adapter.
- redeploy: what a user does today, a new template version with the adapter preloaded: a fresh
  runtime with `--lora-modules`; measured from the spawn to the first successful completion on it.
- serving overhead (information): completions per second on the adapter against the base model,
  on the same replica, the same sequential load.

Results: bench/results/adapters.json (`attach_to_first_token_s`, `redeploy_to_first_token_s`, `ratio`,
`adapter_throughput_ratio`). Everything it starts is stopped, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import print_table, stopped_by_sigterm, write_results
from events.local_server import LocalNatsServer
from events.options import NatsOptions
from events.publisher import Publisher
from events.stream import StreamSettings, provision_stream
from events.types import AdapterVersionPublished, DeploymentAdapterAttached, EventKind
from runtimes.local import LocalServer, free_port, runtime_command
from runtimes.tiny_model import build_tiny_model
from tests.fixtures.lora import lora_engine_args, make_adapter, replica_env

TEMPLATE = "tiny"
ADAPTER = "alpha"
RANK = 8
PROMPT = "Templates are published as events"
LOAD_REQUESTS = 24
TARGET_RATIO = 0.1
START_TIMEOUT = 900.0
ENGINE_ARGS = lora_engine_args(max_loras=2, max_rank=RANK)


def completion(base_url: str, model: str, max_tokens: int = 1) -> bool:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
    try:
        return httpx.post(base_url + "/v1/completions", json=body, timeout=120).status_code == 200
    except httpx.HTTPError:
        return False


def until_served(base_url: str, model: str, started: float, timeout: float = START_TIMEOUT) -> float:
    while not completion(base_url, model):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{model} not served after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def throughput(base_url: str, model: str) -> float:
    started = time.monotonic()
    for _ in range(LOAD_REQUESTS):
        assert completion(base_url, model, max_tokens=16)
    return LOAD_REQUESTS / (time.monotonic() - started)


async def _publish(options: NatsOptions, events: list[tuple[EventKind, Any]], *, fresh: bool = False) -> None:
    client = await options.connect()
    try:
        if fresh:
            await provision_stream(client.jetstream(), StreamSettings())
        publisher = Publisher(client)
        for kind, data in events:
            await publisher.publish(kind, data)
    finally:
        await client.close()


def main() -> int:
    with stopped_by_sigterm(), tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "tiny")
        cache = root / "cache"
        make_adapter(model_dir, cache / ADAPTER, seed=1)
        nats = stack.enter_context(LocalNatsServer())
        asyncio.run(_publish(nats.options(), [], fresh=True))
        asyncio.run(
            _publish(
                nats.options(),
                [
                    (
                        EventKind.ADAPTER_PUBLISHED,
                        AdapterVersionPublished(template=TEMPLATE, name=ADAPTER, version=1, source=ADAPTER, rank=RANK),
                    )
                ],
            )
        )
        env = replica_env(nats.url, TEMPLATE, cache)
        port = free_port()
        running = stack.enter_context(
            LocalServer(runtime_command(model_dir, TEMPLATE, port, *ENGINE_ARGS), port, root / "running.log", env)
        )
        running.wait_until("/ready", timeout=START_TIMEOUT)

        started = time.monotonic()
        asyncio.run(_publish(nats.options(), [(EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template=TEMPLATE, adapter=ADAPTER))]))
        attach_s = until_served(running.base_url, ADAPTER, started)
        base_rps = throughput(running.base_url, TEMPLATE)
        adapter_rps = throughput(running.base_url, ADAPTER)
        running.stop()

        port = free_port()
        command = runtime_command(model_dir, TEMPLATE, port, *ENGINE_ARGS, f"--lora-modules={ADAPTER}={cache / ADAPTER}")
        started = time.monotonic()
        redeployed = stack.enter_context(LocalServer(command, port, root / "redeploy.log"))
        redeploy_s = until_served(redeployed.base_url, ADAPTER, started)
        redeployed.stop()

    results = {
        "attach_to_first_token_s": attach_s,
        "redeploy_to_first_token_s": redeploy_s,
        "ratio": attach_s / redeploy_s,
        "target_ratio": TARGET_RATIO,
        "adapter_throughput_ratio": adapter_rps / base_rps,
        "base_requests_per_s": base_rps,
        "adapter_requests_per_s": adapter_rps,
    }
    print_table(
        "LoRA adapter: attach event vs redeploy (tiny model, CPU)",
        ("figure", "value"),
        [(key, value) for key, value in results.items()],
    )
    path = write_results("adapters", results)
    print(f"ratio {results['ratio']:.3f} (target ≤ {TARGET_RATIO}); written to {path}")
    return 0 if results["ratio"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
