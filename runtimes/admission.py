"""How much of the concurrency limit a request takes: the sequences the engine generates for it (pure).

A completion with `n=1000`, or with a list of 1,000 prompts, runs 1,000 sequences side by side, so
the gate counts it as 1,000 requests, not one. `best_of` counts when it is larger than `n`.
Values are read the way vLLM's request models read them (pydantic's lax mode: `"4"` and `4.0` are 4);
anything vLLM will refuse counts as 1 and is left for vLLM to answer with its own 400.
"""

from __future__ import annotations

from typing import Any

GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


def _count(value: Any) -> int:
    """A positive integer as pydantic's lax mode reads it, else 1."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, str):
        try:
            value = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
        except ValueError:
            return 1
    if isinstance(value, float):
        if not value.is_integer():
            return 1
        value = int(value)
    return value if isinstance(value, int) and value > 1 else 1


def prompt_count(prompt: Any) -> int:
    """Prompts in a completion request's `prompt`: a string or a token list is one; a list of either is one each."""
    if isinstance(prompt, list) and prompt and not all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
        return len(prompt)
    return 1


def sequences(path: str, document: Any) -> int:
    """The sequences a request on `path` (after the /openai prefix) makes the engine generate; 1 for other routes."""
    if path not in GENERATION_ROUTES or not isinstance(document, dict):
        return 1
    per_prompt = max(_count(document.get("n")), _count(document.get("best_of")))
    prompts = prompt_count(document.get("prompt")) if path == "/v1/completions" else 1
    return per_prompt * prompts
