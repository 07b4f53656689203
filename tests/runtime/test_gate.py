"""The ASGI gate in front of vLLM, against a stand-in app: prefix, API key, served routes, backpressure weighed
by sequences, body size cap, drain, defaults. (Stalled bodies over real sockets: test_gate_http.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from runtimes.api_keys import ApiKeys
from runtimes.defaults import RequestDefaults
from runtimes.gate import SERVED_PATHS, RuntimeGate, served_paths
from runtimes.metrics import RuntimeMetrics
from tests.runtime.standin import StandIn, assert_openai_error, metric, rejected


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


async def test_kserve_prefix_reaches_the_same_routes(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry))
    async with make_client(gate) as client:
        for path in ("/openai/v1/chat/completions", "/v1/chat/completions"):
            response = await client.post(path, json={"model": "m"})
            assert response.json()["path"] == "/v1/chat/completions"
        assert (await client.get("/openai/v1/models")).json()["path"] == "/v1/models"
        assert_openai_error(await client.get("/openaiv1/models"), 404, "not_found")  # only the /openai/ prefix


async def test_api_key(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), api_keys=ApiKeys.fixed("s3cret"))
    async with make_client(gate) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret"}):
            response = await client.post("/openai/v1/completions", json={}, headers=headers)
            assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.post("/v1/completions", json={}, headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert (await client.get("/v1/models", headers={"Authorization": "bearer s3cret"})).status_code == 200
        # an unknown route answers 401 as well: nothing is told without the key
        assert_openai_error(await client.post("/invocations", json={}), 401, "invalid_api_key")
        # probes and scraping need no key
        for path in ("/health", "/ready", "/metrics", "/ping", "/version"):
            assert (await client.get(path)).status_code == 200
    assert rejected(registry, "unauthorized") == 5
    assert stand_in.entered == 7


async def test_only_the_served_routes_reach_vllm(stand_in: StandIn, registry: CollectorRegistry) -> None:
    """SageMaker's /invocations (which skipped the template's defaults), the Responses and Anthropic APIs, batch,
    scoring and admin routes are not served; neither are websockets (vLLM's /v1/realtime)."""
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), defaults=RequestDefaults(stop=("END",), max_tokens=4))
    unserved = ["/invocations", "/openai/invocations", "/v1/responses", "/v1/messages", "/v1/chat/completions/batch",
                "/scale_elastic_ep", "/collective_rpc", "/pooling", "/docs", "/v1/models/"]  # fmt: skip
    async with make_client(gate) as client:
        for path in unserved:
            error = assert_openai_error(await client.post(path, json={"prompt": "hi"}), 404, "not_found")
            assert "/v1/chat/completions" in error["message"]
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"):
            assert (await client.post(path, json={})).status_code == 200
        assert (await client.get("/v1/models")).status_code == 200
    assert stand_in.entered == 6
    assert rejected(registry, "not_served") == len(unserved)

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await gate({"type": "websocket", "path": "/v1/realtime", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert stand_in.entered == 6


async def test_a_scoring_template_serves_the_scoring_routes_under_the_same_rules(stand_in: StandIn, registry: CollectorRegistry) -> None:
    scoring = ["/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score"]
    assert served_paths("generate") == served_paths("embed") == SERVED_PATHS
    async with make_client(RuntimeGate(stand_in, metrics=RuntimeMetrics(CollectorRegistry()))) as client:
        for path in scoring:
            assert_openai_error(await client.post(path, json={}), 404, "not_found")
    assert stand_in.entered == 0

    gate = RuntimeGate(
        stand_in,
        metrics=RuntimeMetrics(registry),
        served=served_paths("score"),
        api_keys=ApiKeys.fixed("k"),
        defaults=RequestDefaults(stop=("END",), max_tokens=4),
        max_body_bytes=4096,
        max_concurrency=1,
    )
    key = {"Authorization": "Bearer k"}
    rerank = {"query": "q", "documents": ["d"] * 100}  # one forward pass for all pairs: weighs 1, like embeddings
    async with make_client(gate) as client:
        for path in scoring:
            assert_openai_error(await client.post(path, json=rerank), 401, "invalid_api_key")
            response = await client.post("/openai" + path, json=rerank, headers=key)
            assert response.status_code == 200 and json.loads(response.json()["body"]) == rerank  # no generation defaults
        too_large = await client.post("/rerank", json={"query": "q", "documents": ["x" * 4096]}, headers=key)
        assert_openai_error(too_large, 413, "request_too_large")
        assert_openai_error(await client.post("/pooling", json={}, headers=key), 404, "not_found")
    assert stand_in.entered == len(scoring)
    assert (rejected(registry, "unauthorized"), rejected(registry, "too_large")) == (len(scoring), 1)


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
    assert rejected(registry, "overloaded") == 1
    assert metric(registry, "stokehold_runtime_max_concurrency") == 2


async def test_admission_weighs_n_best_of_and_prompt_lists(stand_in: StandIn, registry: CollectorRegistry) -> None:
    """n=1000 used to count as one request; it asks for 1,000 sequences."""
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), max_concurrency=8)
    async with make_client(gate) as client:
        for body in ({"n": 1000}, {"n": "9"}, {"best_of": 9, "n": 1}, {"prompt": ["a"] * 9}, {"prompt": ["a", "b", "c"], "n": 3}):
            error = assert_openai_error(await client.post("/v1/completions", json=body), 400, "too_many_sequences")
            assert error["param"] == "n" and "at most 8" in error["message"]
        assert_openai_error(await client.post("/v1/chat/completions", json={"n": 9, "messages": []}), 400, "too_many_sequences")
        assert stand_in.entered == 0

        held = [asyncio.create_task(client.post("/v1/completions", json={"hold": True, "n": 3})) for _ in range(2)]
        await stand_in.wait_for_arrivals(2)
        assert (gate.in_flight, gate.load) == (2, 6)
        assert metric(registry, "stokehold_runtime_in_flight_sequences") == 6
        assert_openai_error(await client.post("/v1/chat/completions", json={"n": 3}), 429, "rate_limit_exceeded")
        assert_openai_error(await client.post("/v1/completions", json={"prompt": [[1, 2], [3]], "n": 2}), 429, "rate_limit_exceeded")
        # a token list is one prompt; a body vLLM will refuse counts as 1 and reaches vLLM for its own 400
        assert (await client.post("/v1/completions", json={"prompt": [1, 2, 3], "n": 2})).status_code == 200
        assert (await client.post("/v1/completions", json={"n": "many"})).status_code == 200
        assert (await client.post("/v1/completions", content=b"{not json")).status_code == 200
        assert (await client.post("/v1/embeddings", json={"input": ["a"] * 50})).status_code == 200  # one forward pass each
        stand_in.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert (gate.in_flight, gate.load) == (0, 0)
    assert metric(registry, "stokehold_runtime_in_flight_sequences") == 0
    assert rejected(registry, "too_many_sequences") == 6
    assert rejected(registry, "overloaded") == 2


async def test_body_size_cap_refuses_early_and_never_holds_the_whole_body(stand_in: StandIn, registry: CollectorRegistry) -> None:
    cap = 1024 * 1024
    chunk = b"x" * 65536
    pulled = 0

    async def upload(chunks: int) -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(chunks):
            pulled += 1
            yield chunk

    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), max_body_bytes=cap)
    async with make_client(gate) as client:
        # declared length over the cap: refused before a byte of the body is read
        response = await client.post("/v1/completions", content=upload(3200), headers={"content-length": str(3200 * len(chunk))})
        assert_openai_error(response, 413, "request_too_large")
        assert response.headers["connection"] == "close"
        assert pulled == 0
        # chunked (no length): refused as soon as it passes the cap, 17 of 3,200 chunks (200 MiB) read
        assert_openai_error(await client.post("/v1/completions", content=upload(3200)), 413, "request_too_large")
        assert pulled == cap // len(chunk) + 1
        # at the cap exactly: served
        pulled = 0
        assert (await client.post("/v1/completions", content=upload(cap // len(chunk)))).status_code == 200
    assert stand_in.entered == 1
    assert rejected(registry, "too_large") == 2


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
    assert rejected(registry, "draining") == 2
    assert metric(registry, "stokehold_runtime_draining") == 1


async def test_a_body_still_arriving_when_the_drain_starts_is_refused(stand_in: StandIn, registry: CollectorRegistry) -> None:
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry))
    arrived, finish = asyncio.Event(), asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield b'{"prompt":'
        arrived.set()
        await finish.wait()
        yield b' "hi"}'

    async with make_client(gate) as client:
        request = asyncio.create_task(client.post("/v1/completions", content=upload()))
        await arrived.wait()
        assert gate.in_flight == 0  # not admitted before its body is whole
        await gate.wait_idle()
        gate.start_draining()
        finish.set()
        assert_openai_error(await request, 503, "draining")
    assert stand_in.entered == 0


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
