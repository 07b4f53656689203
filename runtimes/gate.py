"""The ASGI layer in front of vLLM's OpenAI app: KServe prefix, API key, drain, backpressure, defaults.

Everything it does per request is a few comparisons and a counter, so it costs next to
nothing; only chat/completion requests of a template with default stop sequences have
their (small) JSON body read and, when they carry no `stop`, rewritten.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from runtimes.defaults import RequestDefaults
from runtimes.errors import error_bytes
from runtimes.metrics import RuntimeMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KSERVE_PREFIX = "/openai"
# probes and scraping: never behind the API key, the drain or the limit
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/ping", "/version"})
RETRY_AFTER_SECONDS = 1


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


async def _send_json(send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RuntimeGate:
    """Wraps the vLLM app. `start_draining()` + `wait_idle()` implement the SIGTERM drain."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: RuntimeMetrics,
        max_concurrency: int | None = None,
        api_key: str | None = None,
        defaults: RequestDefaults | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_concurrency = max_concurrency
        self._api_key = api_key.encode() if api_key else None
        self.defaults = defaults or RequestDefaults()
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.max_concurrency.set(max_concurrency or 0)

    # ------------------------------------------------------------------ drain

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.draining.set(1)

    async def wait_idle(self) -> None:
        """Returns once no request is in flight (bound it with `asyncio.timeout`)."""
        await self._idle.wait()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(KSERVE_PREFIX + "/"):
            scope = self._strip_prefix(scope)
            path = scope["path"]
        if path in OPEN_PATHS or path.startswith("/metrics/") or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if self._api_key is not None and not self._authorized(scope):
            self.metrics.rejected.labels("unauthorized").inc()
            body = error_bytes(
                "Missing or invalid API key: send 'Authorization: Bearer <key>'.", "invalid_request_error", "invalid_api_key"
            )
            await _send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])
            return
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            body = error_bytes("The server is shutting down; retry on another replica.", "service_unavailable_error", "draining")
            await _send_json(send, 503, body, [(b"retry-after", str(RETRY_AFTER_SECONDS).encode()), (b"connection", b"close")])
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            self.metrics.rejected.labels("overloaded").inc()
            body = error_bytes(
                f"Too many concurrent requests (limit {self.max_concurrency}); retry after {RETRY_AFTER_SECONDS} s.",
                "rate_limit_error",
                "rate_limit_exceeded",
            )
            await _send_json(send, 429, body, [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
            return
        await self._serve_counted(scope, receive, send)

    async def _serve_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.inc()
        try:
            if self.defaults.applies_to(scope["path"]):
                scope, receive = await self._with_defaults(scope, receive)
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            if self.in_flight == 0:
                self._idle.set()

    # ------------------------------------------------------------------ helpers

    def _authorized(self, scope: Scope) -> bool:
        assert self._api_key is not None
        header = _header(scope, b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._api_key)

    @staticmethod
    def _strip_prefix(scope: Scope) -> Scope:
        scope = dict(scope)
        scope["path"] = scope["path"][len(KSERVE_PREFIX) :]
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path.startswith(KSERVE_PREFIX.encode()):
            scope["raw_path"] = raw_path[len(KSERVE_PREFIX) :]
        return scope

    async def _with_defaults(self, scope: Scope, receive: Receive) -> tuple[Scope, Receive]:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return scope, _replay([message], receive)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        rewritten = self.defaults.rewrite(body)
        if rewritten is None:
            return scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"] + [
            (b"content-length", str(len(rewritten)).encode())
        ]
        return scope, _replay([{"type": "http.request", "body": rewritten, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
