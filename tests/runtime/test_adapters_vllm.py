"""LoRA adapters as events, served by real vLLM replicas that follow a real nats-server.

Two replicas start before any adapter exists; two adapters made with peft are published and
attached as events; both replicas load them from the bus without a restart and answer through
the openai SDK with outputs that differ from the base model's. A third replica started after
the attach serves the adapter on its first request. Detaching one gives 404, the other still
works. Each bad adapter input is refused (dead-lettered by the controller's reducer, or
reported FAILED by the replica, which keeps serving the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from events.local_server import LocalNatsServer
from events.options import NatsOptions
from events.publisher import Publisher
from events.types import (
    AdapterLoadStatusData,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentAdapterDetached,
    EventKind,
    LoadStatus,
    status_filter,
)
from runtimes.local import LocalServer, free_port, runtime_command
from tests.fixtures.lora import lora_engine_args, make_adapter, replica_env
from tests.fixtures.nats import reset_stream, run_in_thread

pytestmark = pytest.mark.vllm

MODEL = "tiny"
TEMPLATE = "tiny"
PROMPT = "Templates are published as events"
MAX_LORAS = 2
MAX_RANK = 8
START_TIMEOUT = 600


@pytest.fixture(scope="module")
def cache(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    make_adapter(tiny_model_dir, root / "alpha", seed=1)
    make_adapter(tiny_model_dir, root / "beta", seed=2)
    make_adapter(tiny_model_dir, root / "pickled", seed=3, safe=False)
    return root


@pytest.fixture(scope="module")
def nats() -> Iterator[LocalNatsServer]:
    with LocalNatsServer() as server:
        run_in_thread(reset_stream(server.options()))
        yield server


def replica(model_dir: Path, cache: Path, nats: LocalNatsServer, name: str, logs: Path) -> LocalServer:
    port = free_port()
    env = replica_env(nats.url, TEMPLATE, cache) | {"STOKEHOLD_REPLICA": name}
    command = runtime_command(model_dir, MODEL, port, *lora_engine_args(MAX_LORAS, MAX_RANK))
    return LocalServer(command, port, logs / f"{name}.log", env)


@pytest.fixture(scope="module")
def replicas(
    tiny_model_dir: Path, cache: Path, nats: LocalNatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LocalServer]]:
    logs = tmp_path_factory.mktemp("logs")
    servers = [replica(tiny_model_dir, cache, nats, f"r{i}", logs) for i in (1, 2)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        for server in servers:
            server.wait_until("/ready", timeout=START_TIMEOUT)
        yield servers


def sdk(server: LocalServer) -> OpenAI:
    return OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0, timeout=120)


def greedy(server: LocalServer, model: str) -> str:
    reply = sdk(server).completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0.0, extra_body={"ignore_eos": True})
    return reply.choices[0].text


def adapter_doc(name: str, source: str, *, rank: int = 8, template: str = TEMPLATE) -> AdapterVersionPublished:
    return AdapterVersionPublished(template=template, name=name, version=1, source=source, rank=rank)


async def publish_and_wait(
    options: NatsOptions, events: list[tuple[EventKind, Any]], wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], Any]:
    """Publish events, then wait for a final load status (SUCCEEDED/FAILED) of each (replica, adapter) in `wanted`."""
    client = await options.connect()
    final: dict[tuple[str, str], AdapterLoadStatusData] = {}
    done = asyncio.Event()

    async def on_status(msg: Any) -> None:
        from events.codec import decode

        event = decode(msg.headers, msg.data)
        if event.kind is EventKind.ADAPTER_LOAD_STATUS:
            data = event.data
            assert isinstance(data, AdapterLoadStatusData)
            if data.status in {LoadStatus.SUCCEEDED, LoadStatus.FAILED}:
                final[(data.replica, data.adapter)] = data
                if wanted <= set(final):
                    done.set()

    try:
        await client.subscribe(status_filter(), cb=on_status)
        publisher = Publisher(client)
        for kind, data in events:
            await publisher.publish(kind, data)
        async with asyncio.timeout(300):
            await done.wait()
    finally:
        await client.close()
    return final


def models_of(server: LocalServer) -> set[str]:
    return {m.id for m in sdk(server).models.list().data}


def wait_for_models(server: LocalServer, expected: set[str], timeout: float = 60) -> None:
    """Wait for a final state (the detach applied); fails with the last seen set."""
    deadline = time.monotonic() + timeout
    while (seen := models_of(server)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen == expected


def test_attach_serves_on_every_replica_and_detach_unloads(
    replicas: list[LocalServer], nats: LocalNatsServer, tiny_model_dir: Path, cache: Path, tmp_path: Path
) -> None:
    base = greedy(replicas[0], MODEL)
    events: list[tuple[EventKind, Any]] = [
        (EventKind.ADAPTER_PUBLISHED, adapter_doc("alpha", "alpha")),
        (EventKind.ADAPTER_PUBLISHED, adapter_doc("beta", "beta")),
        (EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template=TEMPLATE, adapter="alpha")),
        (EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template=TEMPLATE, adapter="beta")),
    ]
    wanted = {(r, a) for r in ("r1", "r2") for a in ("alpha", "beta")}
    final = run_in_thread(publish_and_wait(nats.options(), events, wanted))
    assert {k: v.status for k, v in final.items()} == dict.fromkeys(wanted, LoadStatus.SUCCEEDED)

    for server in replicas:
        models = sdk(server).models.list().data
        assert {m.id for m in models} == {MODEL, "alpha", "beta"}
        assert {m.parent for m in models if m.id != MODEL} == {MODEL}
    outputs = {name: greedy(replicas[0], name) for name in ("alpha", "beta")}
    assert outputs["alpha"] != base and outputs["beta"] != base and outputs["alpha"] != outputs["beta"]
    assert greedy(replicas[1], "alpha") == outputs["alpha"]  # the same adapter on the other replica
    chat = sdk(replicas[1]).chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.model == "beta" and chat.choices[0].message.content is not None
    stream = sdk(replicas[0]).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    chunk_models = [chunk.model for chunk in stream]
    assert chunk_models and set(chunk_models) == {"alpha"}

    # a third replica started after the attach: it catches up before it is ready
    late = replica(tiny_model_dir, cache, nats, "r3", tmp_path)
    with late:
        late.wait_until("/ready", timeout=START_TIMEOUT)
        assert greedy(late, "alpha") == outputs["alpha"]  # its first request on the adapter

    # detach one: 404 with OpenAI's error body on every replica, the other adapter still answers
    run_in_thread(_publish([(EventKind.ADAPTER_DETACHED, DeploymentAdapterDetached(template=TEMPLATE, adapter="beta"))], nats.options()))
    for server in replicas:
        wait_for_models(server, {MODEL, "alpha"})
        with pytest.raises(openai.NotFoundError) as caught:
            greedy(server, "beta")
        assert caught.value.status_code == 404
        body = httpx.post(server.base_url + "/v1/completions", json={"model": "beta", "prompt": "x", "max_tokens": 1}, timeout=60).json()
        assert set(body["error"]) >= {"message", "type", "code"}
        assert greedy(server, "alpha") == outputs["alpha"]


def test_a_pickled_adapter_fails_with_the_reason_and_the_rest_keeps_serving(replicas: list[LocalServer], nats: LocalNatsServer) -> None:
    events: list[tuple[EventKind, Any]] = [
        (EventKind.ADAPTER_PUBLISHED, adapter_doc("pickled", "pickled")),
        (EventKind.ADAPTER_ATTACHED, DeploymentAdapterAttached(template=TEMPLATE, adapter="pickled")),
    ]
    final = run_in_thread(publish_and_wait(nats.options(), events, {("r1", "pickled"), ("r2", "pickled")}))
    for status in final.values():
        assert status.status is LoadStatus.FAILED and status.reason is not None and "pickle" in status.reason
    for server in replicas:
        assert "pickled" not in models_of(server)
        assert greedy(server, "alpha")


async def _publish(events: list[tuple[EventKind, Any]], options: NatsOptions) -> None:
    client = await options.connect()
    try:
        publisher = Publisher(client)
        for kind, data in events:
            await publisher.publish(kind, data)
    finally:
        await client.close()
