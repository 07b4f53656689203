"""The gate behind a real uvicorn server, over real sockets: stalled bodies and body limits.

With a concurrency limit of 8, eight connections that sent headers and 10 bytes of body, then
stalled, used to make every other client get 429 for as long as they stayed open: a request
counted as in flight before its body had arrived, and nothing timed a body out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from runtimes.gate import RuntimeGate
from runtimes.metrics import RuntimeMetrics
from tests.runtime.rawhttp import RawConnection
from tests.runtime.standin import StandIn, assert_error_body, assert_openai_error, metric, rejected

LIMIT = 8
STALLED = LIMIT + 2


@contextlib.asynccontextmanager
async def serving(gate: RuntimeGate) -> AsyncIterator[int]:
    """uvicorn with the gate on a free loopback port, in this event loop; stopped on the way out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(gate, lifespan="off", log_level="warning", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


async def stall(port: int, declared: int = 100, sent: bytes = b'{"prompt":') -> RawConnection:
    """A POST that declares `declared` bytes of body, sends `sent` (10 bytes) and stops."""
    connection = await RawConnection.open(port)
    await connection.start("POST", "/v1/completions", {"content-type": "application/json", "content-length": str(declared)})
    await connection.send_body(sent)
    return connection


async def until(condition: str, check: Callable[[], bool]) -> None:
    """Wait for a state that lasts (not a passing one)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {condition}")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_stalled_bodies_hold_no_slot(registry: CollectorRegistry) -> None:
    stand_in = StandIn()
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), max_concurrency=LIMIT, body_timeout_seconds=120)
    async with serving(gate) as port:
        stalled = [await stall(port) for _ in range(STALLED)]
        try:
            # every stalled request reached the gate and waits for its body (the long timeout keeps them there)
            await until("all stalled requests are reading", lambda: metric(registry, "stokehold_runtime_receiving_bodies") == STALLED)
            assert gate.in_flight == 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                held = [asyncio.create_task(client.post("/v1/completions", json={"hold": True})) for _ in range(LIMIT)]
                await stand_in.wait_for_arrivals(LIMIT)  # all eight slots go to clients that sent their bodies
                assert gate.in_flight == LIMIT
                assert_openai_error(await client.post("/v1/completions", json={}), 429, "rate_limit_exceeded")  # the limit still holds
                stand_in.release.set()
                assert [response.status_code for response in await asyncio.gather(*held)] == [200] * LIMIT
                assert (await client.post("/v1/completions", json={})).status_code == 200
        finally:
            stand_in.release.set()
            for connection in stalled:
                await connection.close()
        await until("the stalled requests are gone", lambda: metric(registry, "stokehold_runtime_receiving_bodies") == 0)
    assert rejected(registry, "overloaded") == 1
    assert rejected(registry, "client_gone") == STALLED
    assert stand_in.entered == LIMIT + 1


async def test_a_stalled_body_gets_408_and_its_connection_is_closed(registry: CollectorRegistry) -> None:
    stand_in = StandIn()
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), max_concurrency=LIMIT, body_timeout_seconds=0.5)
    async with serving(gate) as port:
        connection = await stall(port)
        trickling = await stall(port, declared=10_000)

        async def trickle() -> None:  # a byte at a time does not extend the deadline: it is for the whole body
            with contextlib.suppress(OSError):
                for _ in range(10_000):
                    await trickling.send_body(b" ")
                    await asyncio.sleep(0.02)

        sender = asyncio.create_task(trickle())
        try:
            for stalled in (connection, trickling):
                response = await asyncio.wait_for(stalled.response(), 30)
                assert response.status == 408 and response.complete and response.closed
                assert_error_body(response.body, "request_timeout")
        finally:
            sender.cancel()
            for stalled in (connection, trickling):
                await stalled.close()
    assert rejected(registry, "body_timeout") == 2
    assert stand_in.entered == 0 and gate.in_flight == 0


async def test_a_body_over_the_cap_gets_413_before_it_is_read(registry: CollectorRegistry) -> None:
    cap = 1024 * 1024
    stand_in = StandIn()
    gate = RuntimeGate(stand_in, metrics=RuntimeMetrics(registry), max_body_bytes=cap)
    async with serving(gate) as port:
        declared = await RawConnection.open(port)
        try:  # 200 MB announced, none sent: the answer comes at once
            await declared.start("POST", "/v1/chat/completions", {"content-type": "application/json", "content-length": str(200 * 10**6)})
            response = await asyncio.wait_for(declared.response(), 30)
        finally:
            await declared.close()
        assert response.status == 413 and response.closed
        assert_error_body(response.body, "request_too_large")

        chunked = await RawConnection.open(port)
        try:  # no length: cut off at the first byte past the cap
            await chunked.start("POST", "/v1/completions", {"content-type": "application/json", "transfer-encoding": "chunked"})
            for _ in range(cap // 65536):
                await chunked.send_body(b"x" * 65536)
            await chunked.send_body(b"x")
            response = await asyncio.wait_for(chunked.response(), 30)
        finally:
            await chunked.close()
        assert response.status == 413 and response.closed
    assert rejected(registry, "too_large") == 2
    assert stand_in.entered == 0
