"""The ASGI layer in front of vLLM's OpenAI app: KServe prefix, API key, served routes, drain, body limits,
backpressure and request defaults.

A POST's body is read here, within a size cap and a time limit, before the request is admitted:
a client that sends headers and then stalls holds a connection, never a slot of the concurrency
limit. Admission then weighs the request by the sequences it asks for (`runtimes.admission`), and
chat/completion bodies get the template's defaults. Everything else is a few comparisons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from enum import Enum
from typing import Any

from runtimes.admission import GENERATION_ROUTES, sequences
from runtimes.api_keys import ApiKeys
from runtimes.defaults import RequestDefaults, encode_json, parse_json
from runtimes.errors import error_bytes
from runtimes.metrics import RuntimeMetrics
from runtimes.settings import DEFAULT_BODY_TIMEOUT_SECONDS, DEFAULT_MAX_BODY_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KSERVE_PREFIX = "/openai"
# probes and scraping: never behind the API key, the drain or the limit
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/ping", "/version"})
# what clients may call (after the prefix is removed); every other route of vLLM's app (SageMaker's
# /invocations, /v1/responses, /v1/messages, batch, admin and dev routes, scoring but on a scoring template) is not served:
# those would bypass the template's defaults, the request weighing or both
SERVED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize", "/detokenize"})
# a scoring template's routes (vLLM's, Jina's and Cohere's shapes): no defaults apply, and like an embedding
# request a rerank of many documents is one batched forward pass, so it weighs 1
SCORE_PATHS = frozenset({"/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score"})
RETRY_AFTER_SECONDS = 1


def served_paths(task: str) -> frozenset[str]:
    """The routes served for a template's task; vLLM itself answers 404 for those its model lacks (chat on a reranker)."""
    return SERVED_PATHS | SCORE_PATHS if task == "score" else SERVED_PATHS


class _Body(Enum):
    TOO_LARGE = "too_large"
    TIMED_OUT = "timed_out"
    GONE = "gone"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _declared_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


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
        api_keys: ApiKeys | None = None,
        defaults: RequestDefaults | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
        served: frozenset[str] = SERVED_PATHS,
    ) -> None:
        self.app = app
        self.served = served
        self.metrics = metrics
        self.max_concurrency = max_concurrency
        self.api_keys = api_keys
        self.defaults = defaults or RequestDefaults()
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.in_flight = 0  # requests
        self.load = 0  # sequences those requests generate: what the limit applies to
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
        if scope["type"] == "websocket":  # no served route is a websocket (vLLM's /v1/realtime is not served)
            await send({"type": "websocket.close", "code": 1008})
            return
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
        if self.api_keys is not None and not self._authorized(scope):
            message = "Missing or invalid API key: send 'Authorization: Bearer <key>'."
            await self._refuse(
                send, "unauthorized", 401, message, "invalid_request_error", "invalid_api_key", [(b"www-authenticate", b"Bearer")]
            )
            return
        if path not in self.served:
            message = f"Invalid URL ({scope['method']} {path}): this server serves {', '.join(sorted(self.served))}."
            await self._refuse(send, "not_served", 404, message, "invalid_request_error", "not_found")
            return
        if self.draining:
            await self._refuse_draining(send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self._over_limit(1):  # refused before its body is read: overload costs no upload
            await self._refuse_overloaded(send)
            return
        body = await self._read_body(scope, receive)
        if isinstance(body, _Body):
            await self._refuse_body(send, body)
            return
        await self._admit(scope, receive, send, body)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        if self.draining:  # it started while the body was arriving
            await self._refuse_draining(send)
            return
        path = scope["path"]
        document = parse_json(body) if path in GENERATION_ROUTES else None
        weight = sequences(path, document)
        if self.max_concurrency is not None and weight > self.max_concurrency:
            message = (
                f"This request asks for {weight} sequences (n, or best_of, times the number of prompts); "
                f"this server generates at most {self.max_concurrency} at once. Send fewer per request."
            )
            await self._refuse(send, "too_many_sequences", 400, message, "invalid_request_error", "too_many_sequences", param="n")
            return
        if self._over_limit(weight):
            await self._refuse_overloaded(send)
            return
        if self.defaults.applies_to(path) and (filled := self.defaults.fill(document)) is not None:
            body = encode_json(filled)
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"] + [
                (b"content-length", str(len(body)).encode())
            ]
        self.in_flight += 1
        self.load += weight
        self._idle.clear()
        self.metrics.in_flight.inc()
        self.metrics.in_flight_sequences.inc(weight)
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1
            self.load -= weight
            self.metrics.in_flight.dec()
            self.metrics.in_flight_sequences.dec(weight)
            if self.in_flight == 0:
                self._idle.set()

    # ------------------------------------------------------------------ body

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | _Body:
        """The whole body, or why not. Never holds more than the cap: a declared length over it is refused
        before a byte is read, and a chunked body as soon as it passes the cap."""
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return _Body.TOO_LARGE
        chunks: list[bytes] = []
        size = 0
        self.metrics.receiving_bodies.inc()
        try:
            async with asyncio.timeout(self.body_timeout_seconds):  # for the whole body: trickling bytes does not extend it
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return _Body.GONE
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        return _Body.TOO_LARGE
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return _Body.TIMED_OUT
        finally:
            self.metrics.receiving_bodies.dec()

    async def _refuse_body(self, send: Send, outcome: _Body) -> None:
        # the rest of the body is not read, so the connection cannot carry another request
        close = [(b"connection", b"close")]
        if outcome is _Body.TOO_LARGE:
            message = f"The request body exceeds this server's limit of {self.max_body_bytes} bytes."
            await self._refuse(send, "too_large", 413, message, "invalid_request_error", "request_too_large", close)
        elif outcome is _Body.TIMED_OUT:
            message = f"The request body did not arrive within {self.body_timeout_seconds:g} s."
            await self._refuse(send, "body_timeout", 408, message, "invalid_request_error", "request_timeout", close)
        else:
            self.metrics.rejected.labels("client_gone").inc()  # nobody to answer

    # ------------------------------------------------------------------ refusals

    def _over_limit(self, weight: int) -> bool:
        return self.max_concurrency is not None and self.load + weight > self.max_concurrency

    async def _refuse_overloaded(self, send: Send) -> None:
        message = f"Too many concurrent requests (limit {self.max_concurrency}); retry after {RETRY_AFTER_SECONDS} s."
        headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
        await self._refuse(send, "overloaded", 429, message, "rate_limit_error", "rate_limit_exceeded", headers)

    async def _refuse_draining(self, send: Send) -> None:
        message = "The server is shutting down; retry on another replica."
        headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode()), (b"connection", b"close")]
        await self._refuse(send, "draining", 503, message, "service_unavailable_error", "draining", headers)

    async def _refuse(
        self,
        send: Send,
        reason: str,
        status: int,
        message: str,
        type_: str,
        code: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        param: str | None = None,
    ) -> None:
        self.metrics.rejected.labels(reason).inc()
        await _send_json(send, status, error_bytes(message, type_, code, param), headers)

    # ------------------------------------------------------------------ helpers

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_keys is not None
        header = _header(scope, b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and self.api_keys.matches(token.strip())

    @staticmethod
    def _strip_prefix(scope: Scope) -> Scope:
        scope = dict(scope)
        scope["path"] = scope["path"][len(KSERVE_PREFIX) :]
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path.startswith(KSERVE_PREFIX.encode()):
            scope["raw_path"] = raw_path[len(KSERVE_PREFIX) :]
        return scope


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body read by the gate, then the client's own messages (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
