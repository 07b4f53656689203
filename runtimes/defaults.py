"""Template generation defaults → vLLM's own mechanisms, plus the one gap a middleware fills (pure).

- sampling defaults (temperature, top_p, top_k, penalties) become `--override-generation-config`:
  vLLM applies them exactly when a request leaves a value out;
- `chat_template`, or a `prompt_format` with `{instruction}` turned into a chat template,
  becomes `--chat-template`;
- stop sequences have no server-side default in vLLM, and its `max_new_tokens` override is a
  cap rather than a default, so `RequestDefaults` adds `stop` and `max_tokens` to the JSON body
  of a chat or completion request that has none of its own.

A `prompt_format` is a single-turn format: the instruction is the text of every message, in
order, joined by a newline. Raw `/v1/completions` prompts are sent as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from templates.schema import GenerationDefaults, SamplingDefaults

INSTRUCTION = "{instruction}"
# routes whose request bodies take `stop` and `max_tokens` (after the /openai prefix is removed)
DEFAULTED_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


def generation_overrides(sampling: SamplingDefaults) -> dict[str, Any]:
    """The `--override-generation-config` mapping: every sampling default but max_tokens."""
    return sampling.model_dump(exclude_none=True, exclude={"max_tokens"})


def _jinja_literal(text: str) -> str:
    # Jinja string literals unescape like Python's; JSON escapes are a subset of those
    return json.dumps(text, ensure_ascii=False)


def prompt_format_chat_template(prompt_format: str) -> str:
    """A Jinja chat template that renders `prompt_format` with the messages as `{instruction}`."""
    if INSTRUCTION not in prompt_format:
        raise ValueError(f"prompt_format must contain {INSTRUCTION}")
    before, after = prompt_format.split(INSTRUCTION, 1)
    return (
        "{%- set ns = namespace(parts=[]) -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set ns.parts = ns.parts + [message['content']] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{{ bos_token if bos_token is defined and bos_token else '' }}"
        f"{{{{ {_jinja_literal(before)} }}}}{{{{ ns.parts | join('\\n') }}}}{{{{ {_jinja_literal(after)} }}}}"
    )


def chat_template_for(generation: GenerationDefaults) -> str | None:
    if generation.chat_template:
        return generation.chat_template
    if generation.prompt_format:
        return prompt_format_chat_template(generation.prompt_format)
    return None


def default_engine_args(generation: GenerationDefaults, *, has_chat_template: bool = False) -> list[str]:
    """vLLM arguments that carry the template's defaults (`has_chat_template`: the command line already sets one)."""
    args = []
    overrides = generation_overrides(generation.sampling)
    if overrides:
        args.append("--override-generation-config=" + json.dumps(overrides, sort_keys=True, separators=(",", ":")))
    template = None if has_chat_template else chat_template_for(generation)
    if template is not None:
        args.append("--chat-template=" + template)
    return args


@dataclass(frozen=True)
class RequestDefaults:
    """Values added to a request body that leaves them out."""

    stop: tuple[str, ...] = ()
    max_tokens: int | None = None

    @classmethod
    def from_generation(cls, generation: GenerationDefaults) -> RequestDefaults:
        return cls(stop=tuple(generation.stop), max_tokens=generation.sampling.max_tokens)

    def applies_to(self, path: str) -> bool:
        return (bool(self.stop) or self.max_tokens is not None) and path in DEFAULTED_ROUTES

    def fill(self, document: Any) -> dict[str, Any] | None:
        """A copy of a request document with the defaults it leaves out, or None when nothing changes
        (also when it is not a JSON object: vLLM then answers with its own 400)."""
        if not isinstance(document, dict):
            return None
        added: dict[str, Any] = {}
        if self.stop and document.get("stop") is None:
            added["stop"] = list(self.stop)
        if self.max_tokens is not None and document.get("max_tokens") is None and document.get("max_completion_tokens") is None:
            added["max_tokens"] = self.max_tokens
        return {**document, **added} if added else None

    def rewrite(self, body: bytes) -> bytes | None:
        """The body with the defaults filled in, or None to send it unchanged."""
        filled = self.fill(parse_json(body))
        return None if filled is None else encode_json(filled)


def parse_json(body: bytes) -> Any:
    """The JSON document in a request body, or None when it is not JSON (vLLM answers those with its own 400)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def encode_json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
