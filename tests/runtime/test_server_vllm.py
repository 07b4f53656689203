"""The runtime with the real vLLM engine on the CPU, driven by the official openai SDK.

One server for the whole module (API key from a key file as the controller mounts it, max
concurrency 2, a 3 s body timeout, a 1 MiB body cap, template defaults set), so that every path is
tested on it; the SIGTERM test runs last because it stops the server.
"""

from __future__ import annotations

import asyncio
import json
import os
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
from tests.runtime.rawhttp import RawConnection, RawResponse

pytestmark = pytest.mark.vllm

API_KEY = "test-key"
MODEL = "tiny"
MAX_CONCURRENCY = 2
DEFAULT_MAX_TOKENS = 7
STOP_WORD = "Paris"  # a single token of the tiny tokenizer (" Paris")
PROMPT_FORMAT = "### Instruction:\n{instruction}\n### Response:\n"
ERROR_KEYS = {"message", "type", "param", "code"}
BODY_TIMEOUT_SECONDS = 3
MAX_BODY_BYTES = 1024 * 1024
RECURSIVE = {"$ref": "#"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "api-key"
    path.write_text(API_KEY + "\n")
    return path


def write_keys(path: Path, *keys: str) -> None:
    """Replace the key file as the kubelet replaces a mounted Secret: a new file, swapped in at once."""
    staged = path.with_name(".staged")
    staged.write_text("".join(key + "\n" for key in keys))
    os.replace(staged, path)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    port = free_port()
    defaults = {"prompt_format": PROMPT_FORMAT, "stop": [STOP_WORD], "sampling": {"max_tokens": DEFAULT_MAX_TOKENS, "temperature": 0.0}}
    env = {
        "STOKEHOLD_API_KEY_FILE": str(key_file),
        "STOKEHOLD_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "STOKEHOLD_GENERATION_DEFAULTS": json.dumps(defaults),
        "STOKEHOLD_DRAIN_SECONDS": "120",
        "STOKEHOLD_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
        "STOKEHOLD_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
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
        model=MODEL, prompt="The moon", n=2, max_tokens=3, temperature=1.0, seed=7, extra_body={"ignore_eos": True}
    )
    assert own.usage is not None and own.usage.completion_tokens == 2 * 3
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


def test_api_key_rotation_takes_effect_without_a_restart(server: LocalServer, key_file: Path) -> None:
    try:
        write_keys(key_file, API_KEY, "next-key")  # both, while clients move over
        assert [m.id for m in sdk(server, key="next-key").models.list().data] == [MODEL]
        assert [m.id for m in sdk(server).models.list().data] == [MODEL]
        write_keys(key_file, "next-key")
        with pytest.raises(openai.AuthenticationError):
            sdk(server).models.list()
        reply = sdk(server, key="next-key").completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert reply.choices
    finally:
        write_keys(key_file, API_KEY)
    assert [m.id for m in sdk(server).models.list().data] == [MODEL]


def test_invocations_is_not_served(server: LocalServer) -> None:
    """vLLM's SageMaker route skipped the template's defaults (and the request weighing): it is off."""
    with raw(server) as client:
        for path in ("/invocations", "/openai/invocations", "/v1/responses", "/v1/chat/completions/batch"):
            error = assert_openai_error(client.post(path, json={"model": MODEL, "prompt": "hi"}), 404)
            assert error["code"] == "not_found"


def test_n_counts_against_the_concurrency_limit(server: LocalServer) -> None:
    with pytest.raises(openai.BadRequestError) as many:
        sdk(server).completions.create(model=MODEL, prompt="x", n=1000, max_tokens=4)
    assert isinstance(many.value.body, dict) and many.value.body["code"] == "too_many_sequences"
    with raw(server) as client:
        listed = client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 2})
        assert assert_openai_error(listed, 400)["code"] == "too_many_sequences"
        assert client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2}).status_code == 200


def test_unsatisfiable_json_schemas_get_400_not_500(server: LocalServer) -> None:
    """`{"$ref": "#"}` compiles to a grammar no output can finish: the engine used to fail the request with 500."""
    schema_format = {"type": "json_schema", "json_schema": {"name": "r", "schema": RECURSIVE}}
    needs_itself = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    completion = {"model": MODEL, "prompt": "hi", "max_tokens": 5}
    requests = [
        ("/v1/chat/completions", {**chat, "response_format": schema_format}),
        ("/v1/chat/completions", {**chat, "response_format": schema_format, "stream": True}),
        ("/v1/completions", {**completion, "structured_outputs": {"json": RECURSIVE}}),
        ("/v1/completions", {**completion, "structured_outputs": {"json": needs_itself}, "stream": True}),
        ("/v1/completions", {**completion, "structured_outputs": {"grammar": "root ::= root"}}),
    ]
    with raw(server) as client:
        for path, body in requests:
            error = assert_openai_error(client.post(path, json=body), 400)
            assert "cannot be satisfied by any finite output" in error["message"]
        # a recursive schema with a way out is served
        may_end = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"next": {"$ref": "#"}}}}}
        served = client.post("/v1/chat/completions", json={**chat, "response_format": may_end})
        assert served.status_code == 200, served.text
    with pytest.raises(openai.BadRequestError):
        sdk(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], response_format=schema_format)  # type: ignore[arg-type]


async def stall(server: LocalServer) -> RawConnection:
    """A completion that declares 100 bytes of body, sends 10 and stops."""
    connection = await RawConnection.open(server.port)
    headers = {"content-type": "application/json", "content-length": "100", "authorization": f"Bearer {API_KEY}"}
    await connection.start("POST", "/v1/completions", headers)
    await connection.send_body(b'{"prompt":')
    return connection


async def test_stalled_bodies_lock_nobody_out_and_time_out(server: LocalServer) -> None:
    stalled = [await stall(server) for _ in range(MAX_CONCURRENCY + 2)]
    try:
        reply = await async_sdk(server).completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert reply.choices  # not 429: a request is counted once its body has arrived
        answers = [await asyncio.wait_for(connection.response(), 60) for connection in stalled]
    finally:
        for connection in stalled:
            await connection.close()
    assert [(a.status, a.closed) for a in answers] == [(408, True)] * len(stalled)
    assert all(json.loads(a.body)["error"]["code"] == "request_timeout" for a in answers)
    assert metric(server, "stokehold_runtime_rejected_requests_total", reason="body_timeout") >= len(stalled)


async def test_a_body_over_the_cap_gets_413_before_it_is_sent(server: LocalServer) -> None:
    connection = await RawConnection.open(server.port)
    try:
        headers = {"content-type": "application/json", "content-length": str(200 * 10**6), "authorization": f"Bearer {API_KEY}"}
        await connection.start("POST", "/v1/chat/completions", headers)
        answer = await asyncio.wait_for(connection.response(), 60)
    finally:
        await connection.close()
    assert (answer.status, answer.closed) == (413, True)
    assert json.loads(answer.body)["error"]["code"] == "request_too_large"


OVERFLOW = 6  # requests sent at once while every slot is taken
HELD_TOKENS = 2000  # per sequence; with MAX_CONCURRENCY sequences and 20 top logprobs a token: ~5.5 MB of events
HELD_BYTES_PER_TOKEN = 1400  # at least, in the chat stream with 20 top logprobs


def send_buffer_max() -> int:
    """The most a TCP send buffer grows to on this machine (bytes)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


class HeldStream:
    """A streamed chat completion with one sequence per slot (n = the limit) whose client reads nothing until
    `release()`.

    Its events (several MB) outgrow every socket buffer on the way, so the server's writes wait and
    the request stays in flight until the client reads — whatever the machine's speed. (A long stream
    that is read, or a request whose body is held back, does neither: the first may end before a test
    looks, the second is not admitted until its body arrives.)
    """

    def __init__(self, connection: RawConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, server: LocalServer) -> HeldStream:
        assert send_buffer_max() < HELD_TOKENS * MAX_CONCURRENCY * HELD_BYTES_PER_TOKEN, "the held stream would fit in a send buffer"
        body = {
            "model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "n": MAX_CONCURRENCY, "max_tokens": HELD_TOKENS,
            "temperature": 1.0, "stream": True, "stop": [], "ignore_eos": True, "logprobs": True, "top_logprobs": 20,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        connection = await RawConnection.open(server.port, receive_buffer=4096, read_limit=1024)
        await connection.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"authorization": f"Bearer {API_KEY}"})
        return cls(connection)

    async def release(self) -> RawResponse:
        try:
            return await asyncio.wait_for(self.connection.response(), 300)
        finally:
            await self.connection.close()


def streamed(body: bytes) -> tuple[list[str | None], int]:
    """The finish reason of each choice and the completion tokens of a server-sent-events chat completion."""
    finish: dict[int, str | None] = {}
    tokens = 0
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line.removeprefix("data: "))
        for choice in chunk.get("choices") or []:
            finish.setdefault(choice["index"], None)
            if choice.get("finish_reason"):
                finish[choice["index"]] = choice["finish_reason"]
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return [finish[index] for index in sorted(finish)], tokens


async def hold(server: LocalServer) -> HeldStream:
    """Every slot taken by one held stream (the limit counts its n sequences)."""
    held = await HeldStream.open(server)
    for _ in range(500):
        if metric(server, "stokehold_runtime_in_flight_sequences") == MAX_CONCURRENCY:
            return held
        await asyncio.sleep(0.02)
    answer = await held.release()
    raise AssertionError(f"the server never counted the held stream in flight: {answer.status} {answer.body[:300]!r}")


def completed(answer: RawResponse) -> bool:
    every_sequence_to_the_end = (["length"] * MAX_CONCURRENCY, HELD_TOKENS * MAX_CONCURRENCY)
    return answer.status == 200 and answer.complete and streamed(answer.body) == every_sequence_to_the_end


async def test_overload_answers_429_with_retry_after(server: LocalServer, figures: FiguresRecorder) -> None:
    client = async_sdk(server)
    rejected_before = metric(server, "stokehold_runtime_rejected_requests_total", reason="overloaded")
    held = await hold(server)
    outcomes = await asyncio.gather(
        *(client.completions.create(model=MODEL, prompt="x", max_tokens=2) for _ in range(OVERFLOW)), return_exceptions=True
    )
    limited = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    finished = await held.release()
    reply = await client.completions.create(model=MODEL, prompt="x", max_tokens=2)  # the slots are free again
    served = completed(finished) + bool(reply.choices)
    sent = 1 + OVERFLOW + 1
    figures.report(published=sent, applied=served, dead_lettered=len(limited), lost=sent - served - len(limited), trials=1)
    assert len(limited) == OVERFLOW, outcomes
    for error in limited:
        assert error.status_code == 429
        assert error.response.headers["retry-after"] == "1"
        assert isinstance(error.body, dict) and error.body["code"] == "rate_limit_exceeded"
    assert served == 2
    assert metric(server, "stokehold_runtime_in_flight_requests") == 0
    assert metric(server, "stokehold_runtime_rejected_requests_total", reason="overloaded") - rejected_before == OVERFLOW


async def test_sigterm_finishes_open_streams_then_exits_0(server: LocalServer, figures: FiguresRecorder) -> None:
    """Runs last: Knative's scale-down. New requests get 503, the stream in flight finishes, exit code 0."""
    held = await hold(server)
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
    answer = await held.release()  # the slow client reads its stream only now, during the drain
    figures.report(published=2, applied=int(completed(answer)), dead_lettered=1, lost=1 - int(completed(answer)), trials=1)
    assert completed(answer), (answer.status, streamed(answer.body))
    assert await asyncio.to_thread(server.wait, 120) == 0
