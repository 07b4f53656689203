"""The runtime with the real vLLM engine on the CPU, driven by the official openai SDK.

One server for the whole module (API key on, max concurrency 2, template defaults set), so
that every path is tested on it; the SIGTERM test runs last because it stops the server.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from tokenizers import Tokenizer

from runtimes.local import LocalServer, free_port, runtime_command
from tests.fixtures.figures import FiguresRecorder

pytestmark = pytest.mark.vllm

API_KEY = "test-key"
MODEL = "tiny"
MAX_CONCURRENCY = 2
DEFAULT_MAX_TOKENS = 7
STOP_WORD = "Paris"  # a single token of the tiny tokenizer (" Paris")
PROMPT_FORMAT = "### Instruction:\n{instruction}\n### Response:\n"
LONG = 1000  # tokens: streams that stay open for seconds
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    port = free_port()
    defaults = {"prompt_format": PROMPT_FORMAT, "stop": [STOP_WORD], "sampling": {"max_tokens": DEFAULT_MAX_TOKENS, "temperature": 0.0}}
    env = {
        "STOKEHOLD_API_KEY": API_KEY,
        "STOKEHOLD_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "STOKEHOLD_GENERATION_DEFAULTS": json.dumps(defaults),
        "STOKEHOLD_DRAIN_SECONDS": "120",
    }
    command = runtime_command(tiny_model_dir, MODEL, port, "--dtype=float32", "--enforce-eager", "--max-model-len=2048")
    runtime = LocalServer(command, port, tmp_path_factory.mktemp("logs") / "runtime.log", env)
    with runtime:
        runtime.wait_until("/ready", timeout=400)
        yield runtime


@pytest.fixture(scope="module")
def stop_token(tiny_model_dir: Path) -> int:
    ids = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode(" " + STOP_WORD).ids
    assert len(ids) == 1
    return int(ids[0])


def sdk(server: LocalServer, prefix: str = "/v1", key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url=server.base_url + prefix, api_key=key, max_retries=0, timeout=120)


def async_sdk(server: LocalServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def raw(server: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


def metric(server: LocalServer, name: str, **labels: str) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name} {labels} not in /metrics"
    return float(match.group(1))


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"]
    return error


def test_models_on_both_prefixes(server: LocalServer) -> None:
    for prefix in ("/v1", "/openai/v1"):
        models = sdk(server, prefix).models.list()
        assert [m.id for m in models.data] == [MODEL]


def test_chat_completion(server: LocalServer) -> None:
    reply = sdk(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=5)
    assert reply.model == MODEL and reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 5


def test_chat_completion_under_the_kserve_prefix(server: LocalServer) -> None:
    reply = sdk(server, "/openai/v1").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens <= 3


def test_prompt_format_is_the_chat_template(server: LocalServer) -> None:
    expected = "<|begin|>" + PROMPT_FORMAT.replace("{instruction}", "Say hi")
    with raw(server) as client:
        chat = client.post("/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}]}).json()
        text = client.post("/tokenize", json={"model": MODEL, "prompt": expected, "add_special_tokens": False}).json()
    assert chat["tokens"] == text["tokens"]  # the model's own chat template (<|user|> …) is replaced


def test_default_max_tokens_and_temperature_apply_and_the_request_wins(server: LocalServer) -> None:
    client = sdk(server)
    defaulted = [client.completions.create(model=MODEL, prompt="The moon", extra_body={"ignore_eos": True}) for _ in range(2)]
    assert [r.choices[0].finish_reason for r in defaulted] == ["length"] * 2
    assert [r.usage.completion_tokens if r.usage else 0 for r in defaulted] == [DEFAULT_MAX_TOKENS] * 2
    assert defaulted[0].choices[0].text == defaulted[1].choices[0].text  # template temperature 0: greedy
    own = client.completions.create(
        model=MODEL, prompt="The moon", n=3, max_tokens=3, temperature=1.0, seed=7, extra_body={"ignore_eos": True}
    )
    assert own.usage is not None and own.usage.completion_tokens == 3 * 3
    assert len({c.text for c in own.choices}) > 1  # the request's temperature 1.0 samples


def test_default_stop_sequence_applies_and_the_request_wins(server: LocalServer, stop_token: int) -> None:
    client = sdk(server)
    forced = {str(stop_token): 100}  # the model now says " Paris" at every step
    stopped = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, logit_bias=forced, extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert STOP_WORD not in stopped.choices[0].text
    own = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=6, logit_bias=forced, stop=["zzz"], extra_body={"ignore_eos": True}
    )
    assert own.choices[0].finish_reason == "length"
    assert own.choices[0].text == f" {STOP_WORD}" * 6
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], logit_bias=forced)
    assert chat.choices[0].finish_reason == "stop" and STOP_WORD not in (chat.choices[0].message.content or "")


def test_streaming_chat_over_sse(server: LocalServer) -> None:
    stream = sdk(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=12, stream=True, stop=[],
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 12
    with raw(server) as client:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "stream": True}
        with client.stream("POST", "/openai/v1/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_bad_requests_get_openai_errors_never_500(server: LocalServer) -> None:
    with raw(server) as client:
        assert_openai_error(client.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}), 400)
        assert_openai_error(client.post("/v1/chat/completions", json=[1, 2]), 400)
        wrong_type = assert_openai_error(client.post("/v1/chat/completions", json={"model": MODEL, "messages": "hi"}), 400)
        assert wrong_type["param"] == "body.messages"
        assert_openai_error(client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "temperature": "hot"}), 400)
        assert_openai_error(client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 100_000}), 400)
        assert_openai_error(client.post("/v1/completions", json={"model": MODEL, "prompt": "hello " * 3000}), 400)
        assert_openai_error(
            client.post("/v1/completions", content=b'{"prompt": "\xff"}', headers={"content-type": "application/json"}), 400
        )
        assert_openai_error(client.post("/v1/nothing", json={}), 404)
        assert_openai_error(client.get("/v1/chat/completions"), 405)
    with pytest.raises(openai.BadRequestError) as negative:
        sdk(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    assert negative.value.status_code == 400 and "max_tokens" in str(negative.value.body)
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk(server).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(unknown.value.body, dict) and set(unknown.value.body) == ERROR_KEYS


def test_api_key_is_required_except_for_probes(server: LocalServer) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(server, key="wrong").models.list()
    assert wrong.value.status_code == 401
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        assert_openai_error(anonymous.post("/openai/v1/completions", json={"model": MODEL, "prompt": "hi"}), 401)
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        ready = anonymous.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reason": "generated a token"}


def test_metrics_cover_vllm_and_the_runtime(server: LocalServer) -> None:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert "vllm:num_requests_running" in text
    cold_start = metric(server, "stokehold_runtime_cold_start_seconds")
    assert cold_start > 1.0 and cold_start < 400
    assert metric(server, "stokehold_runtime_readiness_probes_total", result="ready") >= 1
    assert metric(server, "stokehold_runtime_rejected_requests_total", reason="unauthorized") >= 2
    assert metric(server, "stokehold_runtime_max_concurrency") == MAX_CONCURRENCY


OVERFLOW = 6  # requests sent at once while every slot is taken


class HeldRequest:
    """A completion request whose body is sent but for its last byte until `release()`.

    The server counts it in flight from the moment it arrives, whatever the machine's speed — a
    long stream on the tiny model may be fully generated (and off the server's books) before a
    test gets to look, so slots and drains are held this way instead.
    """

    def __init__(self, server: LocalServer, **request: Any) -> None:
        self._release = asyncio.Event()
        body = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 5, **request}).encode()

        async def upload() -> Any:
            yield body[:-1]
            await self._release.wait()
            yield body[-1:]

        self._client = httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        self.task = asyncio.create_task(
            self._client.post("/v1/completions", content=upload(), headers={"content-type": "application/json"})
        )

    async def release(self) -> httpx.Response:
        self._release.set()
        try:
            return await self.task
        finally:
            await self._client.aclose()


def streamed(response: httpx.Response) -> tuple[str | None, int]:
    """The finish reason and completion tokens of a server-sent-events completion."""
    finish_reason, tokens = None, 0
    for line in response.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line.removeprefix("data: "))
        if chunk.get("choices") and chunk["choices"][0].get("finish_reason"):
            finish_reason = chunk["choices"][0]["finish_reason"]
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return finish_reason, tokens


async def hold(server: LocalServer, count: int, **request: Any) -> list[HeldRequest]:
    held = [HeldRequest(server, **request) for _ in range(count)]
    for _ in range(500):
        if metric(server, "stokehold_runtime_in_flight_requests") == count:
            return held
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server never counted {count} requests in flight")


def completed(response: httpx.Response) -> bool:
    return response.status_code == 200 and bool(response.json()["choices"][0]["text"] is not None)


async def test_overload_answers_429_with_retry_after(server: LocalServer, figures: FiguresRecorder) -> None:
    client = async_sdk(server)
    rejected_before = metric(server, "stokehold_runtime_rejected_requests_total", reason="overloaded")
    held = await hold(server, MAX_CONCURRENCY)
    outcomes = await asyncio.gather(
        *(client.completions.create(model=MODEL, prompt="x", max_tokens=2) for _ in range(OVERFLOW)), return_exceptions=True
    )
    limited = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    finished = [await request.release() for request in held]
    reply = await client.completions.create(model=MODEL, prompt="x", max_tokens=2)  # the slots are free again
    served = sum(completed(response) for response in finished) + bool(reply.choices)
    sent = MAX_CONCURRENCY + OVERFLOW + 1
    figures.report(published=sent, applied=served, dead_lettered=len(limited), lost=sent - served - len(limited), trials=1)
    assert len(limited) == OVERFLOW, outcomes
    for error in limited:
        assert error.status_code == 429
        assert error.response.headers["retry-after"] == "1"
        assert isinstance(error.body, dict) and error.body["code"] == "rate_limit_exceeded"
    assert served == MAX_CONCURRENCY + 1
    assert metric(server, "stokehold_runtime_in_flight_requests") == 0
    assert metric(server, "stokehold_runtime_rejected_requests_total", reason="overloaded") - rejected_before == OVERFLOW


async def test_sigterm_finishes_open_streams_then_exits_0(server: LocalServer, figures: FiguresRecorder) -> None:
    """Runs last: Knative's scale-down. New requests get 503, the streams in flight finish, exit code 0."""
    long_stream = {"max_tokens": LONG, "stream": True, "stop": [], "ignore_eos": True, "stream_options": {"include_usage": True}}
    held = await hold(server, MAX_CONCURRENCY, **long_stream)
    server.terminate()
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as h:
        for _ in range(100):  # the signal is asynchronous: wait until the server says it is draining
            ready = await h.get("/ready")
            if ready.status_code == 503:
                break
            await asyncio.sleep(0.05)
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "draining"}
        refused = await h.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        error = assert_openai_error(refused, 503)
        assert error["code"] == "draining"
    answers = [await request.release() for request in held]  # the streams start now, during the drain
    results = [streamed(answer) for answer in answers]
    served = sum(result == ("length", LONG) for result in results)
    figures.report(published=len(held) + 1, applied=served, dead_lettered=1, lost=len(held) - served, trials=1)
    assert results == [("length", LONG)] * len(held)
    assert await asyncio.to_thread(server.wait, 120) == 0
