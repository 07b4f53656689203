"""Generation defaults (vLLM arguments, prompt_format templates, request rewriting) and the runtime's env settings."""

from __future__ import annotations

import json

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtimes.defaults import RequestDefaults, default_engine_args, generation_overrides, prompt_format_chat_template
from runtimes.engine_args import runtime_env
from runtimes.settings import RuntimeConfigError, RuntimeSettings
from templates.catalog import load_catalog
from templates.schema import GenerationDefaults, SamplingDefaults


def render(template: str, messages: list[dict[str, object]], bos: str | None = "<s>") -> str:
    # the same sandbox transformers and vLLM render chat templates in
    return ImmutableSandboxedEnvironment().from_string(template).render(messages=messages, bos_token=bos, add_generation_prompt=True)


def test_sampling_defaults_except_max_tokens_go_to_vllm() -> None:
    sampling = SamplingDefaults(temperature=0.0, top_k=40, repetition_penalty=1.1, max_tokens=128)
    assert generation_overrides(sampling) == {"temperature": 0.0, "top_k": 40, "repetition_penalty": 1.1}
    assert default_engine_args(GenerationDefaults()) == []


@pytest.mark.parametrize(
    "prompt_format",
    [
        "[INST] {instruction} [/INST]",
        '### Instruction:\n{instruction}\n### Response:\n"quoted" \\ backslash {{ not jinja }} {% raw %}',
        "🙂 {instruction} — ünïcode",
        "{instruction}",
    ],
)
def test_prompt_format_becomes_a_chat_template(prompt_format: str) -> None:
    template = prompt_format_chat_template(prompt_format)
    single = render(template, [{"role": "user", "content": "Say hi"}])
    assert single == "<s>" + prompt_format.replace("{instruction}", "Say hi", 1)
    # single-turn format: every message's text, in order, is the instruction
    multi = render(template, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}], bos=None)
    assert multi == prompt_format.replace("{instruction}", "Be brief.\nSay hi", 1)


def test_prompt_format_without_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match="instruction"):
        prompt_format_chat_template("no placeholder")


def test_explicit_chat_template_wins_over_prompt_format() -> None:
    generation = GenerationDefaults(chat_template="{{ messages[0]['content'] }}", prompt_format="X {instruction}")
    assert default_engine_args(generation) == ["--chat-template={{ messages[0]['content'] }}"]


def test_request_defaults_fill_only_what_is_missing() -> None:
    defaults = RequestDefaults(stop=("<|end|>",), max_tokens=32)
    assert defaults.applies_to("/v1/chat/completions") and defaults.applies_to("/v1/completions")
    assert not defaults.applies_to("/v1/embeddings") and not defaults.applies_to("/v1/models")

    filled = json.loads(defaults.rewrite(b'{"model": "m", "prompt": "hi"}') or b"")
    assert filled == {"model": "m", "prompt": "hi", "stop": ["<|end|>"], "max_tokens": 32}
    assert json.loads(defaults.rewrite(b'{"stop": null, "max_tokens": null}') or b"") == {"stop": ["<|end|>"], "max_tokens": 32}
    # the request's own values win, an explicit empty stop list included
    assert defaults.rewrite(b'{"stop": [], "max_tokens": 5}') is None
    assert json.loads(defaults.rewrite(b'{"stop": "x"}') or b"") == {"stop": "x", "max_tokens": 32}
    assert json.loads(defaults.rewrite(b'{"max_completion_tokens": 9}') or b"") == {"max_completion_tokens": 9, "stop": ["<|end|>"]}
    # not JSON, not an object: untouched, vLLM answers with its own 400
    for body in (b"{bad", b"[1, 2]", b"", "\u00ff".encode("latin-1"), b"[" * 100_000):
        assert defaults.rewrite(body) is None
    assert RequestDefaults().applies_to("/v1/completions") is False


def test_request_defaults_keep_unicode() -> None:
    out = RequestDefaults(stop=("。",)).rewrite('{"prompt": "日本語"}'.encode())
    assert out is not None and json.loads(out) == {"prompt": "日本語", "stop": ["。"]}


def test_settings_from_the_env_the_controller_renders() -> None:
    for version in load_catalog():
        settings = RuntimeSettings.from_env(runtime_env(version.spec))
        assert settings.task == version.spec.task
        assert settings.max_concurrency is not None and settings.max_concurrency >= version.spec.scaling.target_concurrency
        if version.spec.task == "generate":
            assert settings.generation == version.spec.generation


def test_settings_defaults_and_secrets() -> None:
    settings = RuntimeSettings.from_env({"STOKEHOLD_API_KEY": "s3cret-key", "STOKEHOLD_DRAIN_SECONDS": "5"})
    assert settings.max_concurrency is None and settings.task == "generate" and settings.drain_seconds == 5
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STOKEHOLD_MAX_CONCURRENCY": "0"}, "STOKEHOLD_MAX_CONCURRENCY: Input should be greater than or equal to 1"),
        ({"STOKEHOLD_MAX_CONCURRENCY": "many"}, "STOKEHOLD_MAX_CONCURRENCY"),
        ({"STOKEHOLD_TASK": "chat"}, "STOKEHOLD_TASK"),
        ({"STOKEHOLD_GENERATION_DEFAULTS": "{not json"}, "STOKEHOLD_GENERATION_DEFAULTS is not valid JSON"),
        ({"STOKEHOLD_GENERATION_DEFAULTS": '{"sampling": {"temperature": 9}}'}, "STOKEHOLD_GENERATION_DEFAULTS.sampling.temperature"),
        ({"STOKEHOLD_GENERATION_DEFAULTS": '{"prompt_format": "no placeholder"}'}, "{instruction}"),
        ({"STOKEHOLD_TASK": "embed", "STOKEHOLD_GENERATION_DEFAULTS": '{"stop": ["x"]}'}, "does not apply to an embedding model"),
        ({"STOKEHOLD_TASK": "score", "STOKEHOLD_GENERATION_DEFAULTS": '{"stop": ["x"]}'}, "does not apply to a scoring model"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(RuntimeConfigError) as caught:
        RuntimeSettings.from_env(env)
    assert message in str(caught.value)


def test_whitespace_in_formats_and_stops_is_kept() -> None:
    raw = {"prompt_format": "### Instruction:\n{instruction}\n### Response:\n", "stop": ["\nUser:", "\n\n"]}
    settings = RuntimeSettings.from_env({"STOKEHOLD_GENERATION_DEFAULTS": json.dumps(raw)})
    assert settings.generation.prompt_format == raw["prompt_format"]
    assert settings.generation.stop == raw["stop"]
