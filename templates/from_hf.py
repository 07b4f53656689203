"""Build a new template version from a Hugging Face model ID with sensible defaults.

Nothing is downloaded: the size is read from the ID (`7b`, `8x7b`, `70B`, `1.5b`),
which is how these IDs are written in practice, and resources follow from it. The
tool-call and reasoning parsers are guessed from the model family the ID names
(`guess_parsers`), and the template's description says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from templates.naming import SERVICE_NAME_MAX, k8s_name
from templates.schema import HF_ID_RE, ModelTemplateVersion, TemplateValidationError, parse_version

# at most 7 digits each: IDs with thousands of digits must not reach int() or float()
_SIZE_RE = re.compile(r"(?:(\d{1,4})x)?(\d{1,7}(?:\.\d{1,4})?)([bm])(?![a-z])", re.IGNORECASE)
MAX_BILLIONS = 20_000.0  # ten times the largest model published so far: anything more is not a size
GPU_MEMORY_GB = {
    "nvidia-l4": 24,
    "nvidia-a10g": 24,
    "nvidia-l40s": 48,
    "nvidia-a100-40gb": 40,
    "nvidia-a100-80gb": 80,
    "nvidia-h100-80gb": 80,
}
# when the ID does not say: a typical chat model, or a typical (BERT-sized) embedding model or reranker
DEFAULT_BILLIONS = {"generate": 7.0, "embed": 0.5, "score": 0.5}
_FOUR_BIT = {"awq", "gptq", "awq_marlin", "gptq_marlin"}


def parameters_billions(hf_id: str) -> float | None:
    """Parameter count in billions read from the ID, or None when it does not say."""
    match = _SIZE_RE.search(hf_id.split("/", 1)[-1])
    if not match:
        return None
    experts, size, unit = match.groups()
    billions = float(size) / (1000.0 if unit.lower() == "m" else 1.0)
    return billions * (int(experts) if experts else 1)


@dataclass(frozen=True)
class ParserGuess:
    """What the model family an ID names implies: vLLM's tool-call and reasoning parsers for it (None: none)."""

    family: str
    tools: str | None
    reasoning: str | None

    def describe(self) -> str:
        found = [f"tool-call parser {self.tools}" if self.tools else "", f"reasoning parser {self.reasoning}" if self.reasoning else ""]
        return f"{' and '.join(part for part in found if part)} guessed from the ID ({self.family}): check the model card"


# The first pattern found in the lower-cased model name wins. From vLLM's tool-calling and reasoning
# documentation and the model cards; a family without a parser here gets none (add one by hand).
_FAMILIES = (
    (re.compile(r"gpt-oss"), ParserGuess("gpt-oss", "openai", "openai_gptoss")),
    (re.compile(r"deepseek-r1"), ParserGuess("DeepSeek-R1", None, "deepseek_r1")),
    (re.compile(r"qwq"), ParserGuess("QwQ", "hermes", "deepseek_r1")),
    (re.compile(r"qwen3-coder"), ParserGuess("Qwen3-Coder", "qwen3_coder", None)),
    (re.compile(r"qwen3-.*instruct-2507"), ParserGuess("Qwen3 Instruct-2507, no thinking", "hermes", None)),
    (re.compile(r"qwen3-(?!.*(?:embedding|reranker))"), ParserGuess("Qwen3", "hermes", "qwen3")),
    (re.compile(r"qwen2\.5-(?!.*(?:math|vl))"), ParserGuess("Qwen2.5", "hermes", None)),
    (re.compile(r"llama-4"), ParserGuess("Llama 4", "llama4_pythonic", None)),
    (re.compile(r"llama-3\.[123]-.*instruct"), ParserGuess("Llama 3.1-3.3 Instruct", "llama3_json", None)),
    (re.compile(r"magistral"), ParserGuess("Magistral", "mistral", "mistral")),
    (
        re.compile(r"mistral-(?:small|medium|large|nemo)|ministral|devstral|mistral-7b-instruct-v0\.3"),
        ParserGuess("Mistral", "mistral", None),
    ),
    (re.compile(r"hermes-[23]"), ParserGuess("Hermes", "hermes", None)),
)


def guess_parsers(hf_id: str, task: str = "generate") -> ParserGuess | None:
    """The parsers a chat model's family implies, from its ID alone; None for other families and for embedding models."""
    if task != "generate":
        return None
    model = hf_id.rsplit("/", 1)[-1].lower()
    return next((guess for pattern, guess in _FAMILIES if pattern.search(model)), None)


def template_from_hf(
    hf_id: str,
    *,
    gpus: int | None = None,
    gpu_type: str = "nvidia-a100-80gb",
    name: str | None = None,
    version: int = 1,
    max_model_len: int | None = 8192,
    quantization: str | None = None,
    task: str = "generate",
) -> ModelTemplateVersion:
    """A validated version; raises only `TemplateValidationError`, naming the option or the spec field.

    `gpus=0` gives a CPU template (no GPU type, one pod, no parallelism).
    """
    source = f"template for {hf_id if len(hf_id) <= 100 else hf_id[:100] + '…'}"
    if not HF_ID_RE.match(hf_id):
        raise TemplateValidationError([("hf_id", f"{hf_id!r} is not a Hugging Face ID 'org/model'")], source)
    if gpu_type not in GPU_MEMORY_GB:
        raise TemplateValidationError([("gpu_type", f"unknown GPU type {gpu_type!r}; one of {', '.join(GPU_MEMORY_GB)}")], source)
    billions = parameters_billions(hf_id) or DEFAULT_BILLIONS.get(task, DEFAULT_BILLIONS["generate"])
    if billions > MAX_BILLIONS:
        raise TemplateValidationError(
            [("hf_id", f"the ID reads as {billions:,.0f} billion parameters, more than any model: name it without that size")], source
        )
    weights_gb = billions * (0.55 if quantization in _FOUR_BIT else 2.0)
    if gpus is None:
        # weights plus ~30% for KV cache and activations, in powers of two for tensor parallelism
        needed = math.ceil(weights_gb * 1.3 / (GPU_MEMORY_GB[gpu_type] * 0.9))
        gpus = 1 << max(0, needed - 1).bit_length()
    resources: dict[str, Any] = {"gpus": gpus, "cpu": str(max(4, 4 * gpus)), "memory": f"{max(16, int(weights_gb * 1.5) + 8)}Gi"}
    if gpus:
        resources["gpu_type"] = gpu_type
    guess = guess_parsers(hf_id, task)
    surface = {"tools": {"parser": guess.tools}} if guess and guess.tools else {}
    if guess and guess.reasoning:
        surface["reasoning"] = {"parser": guess.reasoning}
    document = {
        "template": {
            "name": name or k8s_name(hf_id, SERVICE_NAME_MAX),  # short enough to name the InferenceService
            "description": f"{hf_id} from Hugging Face" + (f"; {guess.describe()}" if guess else ""),
            "labels": {"source": "huggingface"},
        },
        "version": version,
        "spec": {
            "source": f"hf://{hf_id}",
            "served_model_name": hf_id,
            "task": task,
            "model_size_gb": round(weights_gb, 1),
            "engine": {"max_model_len": max_model_len if task == "generate" else None, "quantization": quantization},
            "resources": resources,
            "parallelism": {"tensor": max(1, gpus)},
            **surface,
        },
    }
    return parse_version(document, source=source)
