"""The ASGI gate in front of vLLM, against a stand-in app: prefix, API key, backpressure, drain, defaults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from runtimes.defaults import RequestDefaults
from runtimes.gate import RuntimeGate
from runtimes.metrics import RuntimeMetrics

ERROR_KEYS = {"message", "type", "param", "code"}


class StandIn:
    """Echoes path and body; a body with "hold" waits until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()

    async def wait_for_arrivals(self, count: int) -> None:
        for _ in range(count):
            await asyncio.wait_for(self.arrivals.get(), 5)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.entered += 1
        self.arrivals.put_nowait(None)
        if b"hold" in body:
            await self.release.wait()
        headers = dict(scope["headers"])
        payload = json.dumps({"path": scope["path"], "body": body.decode(), "content_length": headers.get(b"content-length", b"").decode()})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload.encode()})


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_client(gate: RuntimeGate) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://runtime")  # type: ignore[arg-type]


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    app = StandIn()
    yield app
    app.release.set()


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == code and error["message"]
    return error


async def test_kserve_prefix_reaches_the_same_routes(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry))
    async with make_client(gate) as client:
        for path in ("/openai/v1/chat/completions", "/v1/chat/completions"):
            response = await client.post(path, json={"model": "m"})
            assert response.json()["path"] == "/v1/chat/completions"
        assert (await client.get("/openai/v1/models")).json()["path"] == "/v1/models"
        assert (await client.get("/openaiv1/models")).json()["path"] == "/openaiv1/models"  # only the /openai/ prefix


async def test_api_key(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), api_key="s3cret")
    async with make_client(gate) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret"}):
            response = await client.post("/openai/v1/completions", json={}, headers=headers)
            assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.post("/v1/completions", json={}, headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert (await client.get("/tokenize", headers={"Authorization": "bearer s3cret"})).status_code == 200
        # probes and scraping need no key
        for path in ("/health", "/ready", "/metrics", "/ping", "/version"):
            assert (await client.get(path)).status_code == 200
    assert metric(registry, "stokehold_runtime_rejected_requests_total", reason="unauthorized") == 4
    assert stand_in.entered == 7


async def test_overload_answers_429_with_retry_after(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), max_concurrency=2)
    async with make_client(gate) as client:
        held = [asyncio.create_task(client.post("/v1/completions", json={"hold": True})) for _ in range(2)]
        await stand_in.wait_for_arrivals(2)
        assert gate.in_flight == 2 and metric(registry, "stokehold_runtime_in_flight_requests") == 2
        response = await client.post("/v1/completions", json={})
        assert_openai_error(response, 429, "rate_limit_exceeded")
        assert response.headers["retry-after"] == "1"
        # reads are not counted and not limited
        assert (await client.get("/v1/models")).status_code == 200
        stand_in.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert gate.in_flight == 0 and metric(registry, "stokehold_runtime_in_flight_requests") == 0
        assert (await client.post("/v1/completions", json={})).status_code == 200
    assert metric(registry, "stokehold_runtime_rejected_requests_total", reason="overloaded") == 1
    assert metric(registry, "stokehold_runtime_max_concurrency") == 2


async def test_drain_refuses_new_requests_and_waits_for_those_in_flight(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry))
    async with make_client(gate) as client:
        held = asyncio.create_task(client.post("/v1/chat/completions", json={"hold": True}))
        await stand_in.wait_for_arrivals(1)
        gate.start_draining()
        for path in ("/v1/chat/completions", "/openai/v1/completions"):
            response = await client.post(path, json={})
            assert_openai_error(response, 503, "draining")
            assert response.headers["connection"] == "close"
        assert (await client.get("/health")).status_code == 200  # liveness stays up while draining
        waiting = asyncio.create_task(gate.wait_idle())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        stand_in.release.set()
        assert (await held).status_code == 200
        await asyncio.wait_for(waiting, 5)
    assert metric(registry, "stokehold_runtime_rejected_requests_total", reason="draining") == 2
    assert metric(registry, "stokehold_runtime_draining") == 1


async def test_defaults_are_added_to_the_body(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), defaults=RequestDefaults(stop=("<|end|>",), max_tokens=8))
    async with make_client(gate) as client:
        echoed = (await client.post("/openai/v1/completions", json={"prompt": "hi"})).json()
        body = json.loads(echoed["body"])
        assert body == {"prompt": "hi", "stop": ["<|end|>"], "max_tokens": 8}
        assert echoed["content_length"] == str(len(echoed["body"].encode()))
        own = json.loads((await client.post("/v1/chat/completions", json={"stop": ["x"], "max_tokens": 2})).json()["body"])
        assert own == {"stop": ["x"], "max_tokens": 2}
        # bodies that are not JSON objects pass unchanged (vLLM answers 400), other routes are not read
        assert (await client.post("/v1/completions", content=b"{bad")).json()["body"] == "{bad"
        assert json.loads((await client.post("/v1/embeddings", json={"input": "x"})).json()["body"]) == {"input": "x"}


async def test_a_body_in_several_chunks_is_read_whole(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), defaults=RequestDefaults(stop=("END",)))

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"prompt":', b' "split', b' body"}'):
            yield part

    async with make_client(gate) as client:
        echoed = (await client.post("/v1/completions", content=chunks())).json()
    assert json.loads(echoed["body"]) == {"prompt": "split body", "stop": ["END"]}
