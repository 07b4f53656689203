"""The 2026 catalog and the OpenAI surface of a template: tools, reasoning and structured outputs.

What a catalog entry claims is checked where it can be without a GPU: its size against its parameter
count and weight format, its GPUs against its size (tests/templates/test_naming_catalog.py), its parsers
against the installed vLLM's registries and argument parser, and against what `from-hf` would guess.
"""

from __future__ import annotations

import os
import re
import typing
from typing import Any
from unittest import mock

import pytest
import yaml
from typer.testing import CliRunner

from events.cli import app
from runtimes.engine_args import engine_cli_args
from templates.catalog import load_catalog
from templates.from_hf import guess_parsers, template_from_hf
from templates.schema import (
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    ModelTemplateVersion,
    StructuredOutputsBackend,
    TemplateValidationError,
    ToolStrictLevel,
    parse_version,
)

CATALOG = load_catalog()
SERVED = [v for v in CATALOG if v.spec.source_scheme != "local"]  # all but tiny-demo, which the CPU image builds
# bytes per parameter of each weight format: (least, most); 4-bit formats keep embeddings and norms in 16 bits
BYTES_PER_PARAMETER = {
    "bf16": (2.0, 2.0),
    "fp16": (2.0, 2.0),
    "fp32": (4.0, 4.0),
    "fp8": (1.0, 1.1),
    "awq-int4": (0.5, 0.7),
    "mxfp4": (0.5, 0.7),
}
SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([bm])")


def billions(label: str) -> float:
    match = SIZE_RE.fullmatch(label)
    assert match, f"{label!r} is not a parameter count like '8.2b' or '568m'"
    return float(match[1]) / (1000 if match[2] == "m" else 1)


def hf_id(version: ModelTemplateVersion) -> str:
    """The Hugging Face ID of a catalog source: hf://org/model, or pvc://claim/org/model for a copy in a cache."""
    return "/".join(version.spec.source.split("://", 1)[1].split("/")[-2:])


def with_spec(changes: dict[str, Any], name: str = "tiny-demo") -> dict[str, Any]:
    document = next(v for v in CATALOG if v.name == name).to_document()
    document["spec"] |= changes
    return document


def refusal(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(TemplateValidationError) as info:
        parse_version(document)
    return info.value.errors


def test_the_catalog_covers_what_teams_deploy_in_2026() -> None:
    assert len(SERVED) >= 12
    assert any("active" in v.template.labels for v in SERVED), "a mixture of experts"
    assert any(v.spec.parallelism.tensor > 1 and v.spec.parallelism.nodes == 1 for v in SERVED), "tensor parallelism on one node"
    assert any(v.spec.parallelism.nodes > 1 for v in SERVED), "multi-node"
    assert any(v.spec.engine.quantization for v in SERVED), "a quantized build"
    assert sum(v.spec.task == "embed" for v in SERVED) >= 2, "two embedding models"
    assert any(v.spec.task == "score" and v.template.labels["task"] == "reranking" for v in SERVED), "a reranker"
    families = {v.template.labels["family"] for v in SERVED}
    assert {"qwen3", "llama", "gemma3", "gpt-oss", "mistral", "deepseek-r1"} <= families
    assert any(v.spec.tools for v in SERVED) and any(v.spec.reasoning for v in SERVED)


@pytest.mark.parametrize("version", SERVED, ids=lambda v: v.name)
def test_each_entry_says_why_and_its_size_follows_from_its_parameters(version: ModelTemplateVersion) -> None:
    spec, labels = version.spec, version.template.labels
    assert version.template.description.startswith("Why: ") and "\n" not in version.template.description
    assert spec.served_model_name == hf_id(version), "clients name the model by its Hugging Face ID"
    least, most = BYTES_PER_PARAMETER[labels["weights"]]
    parameters = billions(labels["params"])
    assert spec.model_size_gb is not None
    assert least * parameters * 0.98 <= spec.model_size_gb <= most * parameters * 1.02, f"{parameters}B parameters in {labels['weights']}"
    if "active" in labels:
        assert billions(labels["active"]) < parameters / 4
    if spec.engine.quantization:
        assert labels["weights"] != "bf16" and labels["quantization"] in spec.engine.quantization
    if spec.task == "generate":
        assert spec.generation.sampling.temperature is not None and spec.generation.sampling.max_tokens is not None
        assert spec.engine.max_model_len is not None and spec.generation.sampling.max_tokens <= spec.engine.max_model_len // 2


@pytest.mark.parametrize("version", SERVED, ids=lambda v: v.name)
def test_the_catalog_parsers_are_what_from_hf_guesses(version: ModelTemplateVersion) -> None:
    guess = guess_parsers(hf_id(version), version.spec.task)
    tools = version.spec.tools.parser if version.spec.tools else None
    reasoning = version.spec.reasoning.parser if version.spec.reasoning else None
    assert (tools, reasoning) == ((guess.tools, guess.reasoning) if guess else (None, None))


def test_the_parser_names_are_the_installed_vllms() -> None:
    pytest.importorskip("vllm")
    from vllm.config.structured_outputs import StructuredOutputsBackend as VllmBackends
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager
    from vllm.tool_parsers.tool_strict_level import ToolStrictLevelName

    assert set(ToolParserManager.tool_parsers) | set(ToolParserManager.lazy_parsers) == TOOL_CALL_PARSERS
    assert set(ReasoningParserManager.reasoning_parsers) | set(ReasoningParserManager.lazy_parsers) == REASONING_PARSERS
    assert typing.get_args(VllmBackends) == typing.get_args(StructuredOutputsBackend)
    assert typing.get_args(ToolStrictLevelName) == typing.get_args(ToolStrictLevel)


SURFACE = [v for v in CATALOG if v.spec.tools or v.spec.reasoning or v.spec.structured_outputs]
STRICT = parse_version(with_spec({"tools": {"parser": "hermes", "auto_tool_choice": False, "strict_level": "parameter"}}))


@pytest.mark.parametrize("version", [*SURFACE, STRICT], ids=lambda v: v.name + ("+strict" if v is STRICT else ""))
def test_the_openai_surface_reaches_vllms_argument_parser(version: ModelTemplateVersion) -> None:
    pytest.importorskip("vllm")
    from runtimes.launcher import _parse_vllm_args

    spec = version.spec
    with mock.patch.dict(os.environ):  # vLLM's CLI setup writes to the environment
        args = _parse_vllm_args(engine_cli_args(spec, version.served_model_name))
    assert args.tool_call_parser == (spec.tools.parser if spec.tools else None)
    assert args.enable_auto_tool_choice is bool(spec.tools and spec.tools.auto_tool_choice)
    assert args.tool_strict_level == (spec.tools.strict_level if spec.tools else "auto")
    assert args.reasoning_parser == (spec.reasoning.parser if spec.reasoning else "")
    if spec.structured_outputs:
        config = args.structured_outputs_config
        assert (config.backend, config.disable_any_whitespace) == (
            spec.structured_outputs.backend,
            spec.structured_outputs.disable_any_whitespace,
        )


def test_the_surface_renders_as_vllm_flags() -> None:
    document = with_spec(
        {
            "tools": {"parser": "hermes"},
            "reasoning": {"parser": "deepseek_r1"},
            "structured_outputs": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        | {"generation": {"sampling": {"temperature": 0.0}}}
    )
    args = engine_cli_args(parse_version(document).spec, "tiny")
    assert args[-4:] == [
        "--tool-call-parser=hermes",
        "--enable-auto-tool-choice",
        "--reasoning-parser=deepseek_r1",
        '--structured-outputs-config={"backend":"xgrammar","disable_any_whitespace":true}',
    ]
    assert "--tool-strict-level=parameter" in engine_cli_args(STRICT.spec, "tiny")
    assert not any("tool-strict" in arg for arg in engine_cli_args(parse_version(with_spec({"tools": {"parser": "hermes"}})).spec, "x"))


def test_a_version_without_the_surface_keeps_its_document_and_hash() -> None:
    tiny = next(v for v in CATALOG if v.name == "tiny-demo")
    assert not {"tools", "reasoning", "structured_outputs"} & set(tiny.to_document()["spec"])
    with_tools = parse_version(with_spec({"tools": {"parser": "hermes"}}))
    assert with_tools.content_hash != tiny.content_hash
    assert parse_version(with_tools.to_document()) == with_tools


def test_unknown_names_are_refused_with_the_field_and_the_names_there_are() -> None:
    ((field, message),) = refusal(with_spec({"tools": {"parser": "hermes2"}}))
    assert field == "spec.tools.parser" and "'hermes2' is not a tool-call parser of vLLM" in message and "llama3_json" in message
    ((field, message),) = refusal(with_spec({"reasoning": {"parser": "r1"}}))
    assert field == "spec.reasoning.parser" and "deepseek_r1" in message
    assert refusal(with_spec({"structured_outputs": {"backend": "xgrammer"}}))[0][0] == "spec.structured_outputs.backend"
    assert refusal(with_spec({"tools": {"parser": "hermes", "strict_level": "all"}}))[0][0] == "spec.tools.strict_level"
    ((field, message),) = refusal(with_spec({"engine": {"vllm_args": {"tool_call_parser": "nope"}}}))
    assert field == "spec.engine.vllm_args" and "is not a tool-call parser" in message


def test_rules_between_fields() -> None:
    ((_, message),) = refusal(with_spec({"structured_outputs": {"backend": "outlines", "disable_any_whitespace": True}}))
    assert "disable_any_whitespace needs backend guidance or xgrammar" in message
    ((_, message),) = refusal(with_spec({"reasoning": {"parser": "qwen3"}}))  # tiny-demo has a stop sequence
    assert "generation.stop and reasoning do not go together" in message
    ((_, message),) = refusal(with_spec({"tools": {"parser": "hermes"}, "engine": {"vllm_args": {"enable-auto-tool-choice": True}}}))
    assert "vllm_args 'enable_auto_tool_choice' and tools both set --enable-auto-tool-choice" in message
    prompt_format = {"stop": [], "prompt_format": "Q: {instruction}\nA:"}
    ((_, message),) = refusal(with_spec({"tools": {"parser": "hermes"}, "generation": prompt_format}))
    assert "a prompt format shows the model one instruction, never the tools" in message
    embed = next(v for v in CATALOG if v.spec.task == "embed").to_document()
    embed["spec"]["tools"] = {"parser": "hermes"}
    ((_, message),) = refusal(embed)
    assert "tools apply to generation, not to an embedding template" in message
    reranker = next(v for v in CATALOG if v.spec.task == "score").to_document()
    reranker["spec"]["reasoning"] = {"parser": "qwen3"}
    ((_, message),) = refusal(reranker)
    assert "reasoning apply to generation, not to a scoring template (task = 'score')" in message
    reranker["spec"] |= {"reasoning": None, "generation": {"stop": ["###"]}}
    ((_, message),) = refusal(reranker)
    assert "generation defaults do not apply to a scoring template" in message


def test_from_hf_guesses_parsers_from_the_family_and_says_so() -> None:
    qwen = template_from_hf("Qwen/Qwen3-14B")
    assert qwen.spec.tools is not None and qwen.spec.tools.parser == "hermes"
    assert qwen.spec.reasoning is not None and qwen.spec.reasoning.parser == "qwen3"
    assert "guessed from the ID (Qwen3)" in qwen.template.description
    assert guess_parsers("openai/gpt-oss-120b") == guess_parsers("openai/gpt-oss-20b")
    assert guess_parsers("Qwen/Qwen3-30B-A3B-Instruct-2507").reasoning is None  # type: ignore[union-attr]
    assert guess_parsers("deepseek-ai/DeepSeek-R1-Distill-Llama-8B").tools is None  # type: ignore[union-attr]
    for nothing in ("google/gemma-7b", "Qwen/Qwen3-Embedding-8B", "Qwen/Qwen3-Reranker-4B", "meta-llama/Llama-3.1-8B"):
        assert guess_parsers(nothing) is None, nothing
    assert guess_parsers("Qwen/Qwen3-8B", task="embed") is None
    plain = template_from_hf("google/gemma-7b")
    assert (plain.spec.tools, plain.spec.reasoning) == (None, None) and "guessed" not in plain.template.description
    for pattern_guess in [
        guess_parsers(i) for i in ("Qwen/QwQ-32B", "mistralai/Magistral-Small-2509", "meta-llama/Llama-4-Scout-17B-16E-Instruct")
    ]:
        assert pattern_guess is not None
        assert pattern_guess.tools in TOOL_CALL_PARSERS and (
            pattern_guess.reasoning is None or pattern_guess.reasoning in REASONING_PARSERS
        )


def test_the_from_hf_command_says_what_it_guessed_on_stderr() -> None:
    runner = CliRunner()
    guessed = runner.invoke(app, ["templates", "from-hf", "meta-llama/Llama-3.3-70B-Instruct"])
    assert guessed.exit_code == 0, guessed.output
    assert "tool-call parser llama3_json guessed from the ID" in guessed.stderr
    assert parse_version(yaml.safe_load(guessed.stdout)).spec.tools is not None
    nothing = runner.invoke(app, ["templates", "from-hf", "google/gemma-7b"])
    assert "no tool-call or reasoning parser guessed" in nothing.stderr
