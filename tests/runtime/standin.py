"""A stand-in for vLLM's app behind the gate, and helpers for the gate's metrics and error bodies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

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


def rejected(registry: CollectorRegistry, reason: str) -> float:
    return metric(registry, "stokehold_runtime_rejected_requests_total", reason=reason)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return assert_error_body(response.content, code)


def assert_error_body(body: bytes, code: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == code and error["message"]
    return error
