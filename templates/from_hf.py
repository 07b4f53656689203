"""Build a new template version from a Hugging Face model ID with sensible defaults.

Nothing is downloaded: the size is read from the ID (`7b`, `8x7b`, `70B`, `1.5b`),
which is how these IDs are written in practice, and resources follow from it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from templates.naming import k8s_name
from templates.schema import HF_ID_RE, ModelTemplateVersion, TemplateValidationError, parse_version

_SIZE_RE = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)
GPU_MEMORY_GB = {"nvidia-l4": 24, "nvidia-a10g": 24, "nvidia-a100-40gb": 40, "nvidia-a100-80gb": 80, "nvidia-h100-80gb": 80}
# when the ID does not say: a typical chat model, or a typical (BERT-sized) embedding model
DEFAULT_BILLIONS = {"generate": 7.0, "embed": 0.5}
_FOUR_BIT = {"awq", "gptq", "awq_marlin", "gptq_marlin"}


def parameters_billions(hf_id: str) -> float | None:
    """Parameter count in billions read from the ID, or None when it does not say."""
    match = _SIZE_RE.search(hf_id.split("/", 1)[-1])
    if not match:
        return None
    experts, size, unit = match.groups()
    billions = float(size) / (1000.0 if unit.lower() == "m" else 1.0)
    return billions * (int(experts) if experts else 1)


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
    source = f"template for {hf_id}"
    if not HF_ID_RE.match(hf_id):
        raise TemplateValidationError([("hf_id", f"{hf_id!r} is not a Hugging Face ID 'org/model'")], source)
    if gpu_type not in GPU_MEMORY_GB:
        raise TemplateValidationError([("gpu_type", f"unknown GPU type {gpu_type!r}; one of {', '.join(GPU_MEMORY_GB)}")], source)
    billions = parameters_billions(hf_id) or DEFAULT_BILLIONS.get(task, DEFAULT_BILLIONS["generate"])
    weights_gb = billions * (0.55 if quantization in _FOUR_BIT else 2.0)
    if gpus is None:
        # weights plus ~30% for KV cache and activations, in powers of two for tensor parallelism
        needed = math.ceil(weights_gb * 1.3 / (GPU_MEMORY_GB[gpu_type] * 0.9))
        gpus = 1 << max(0, needed - 1).bit_length()
    resources: dict[str, Any] = {"gpus": gpus, "cpu": str(max(4, 4 * gpus)), "memory": f"{max(16, int(weights_gb * 1.5) + 8)}Gi"}
    if gpus:
        resources["gpu_type"] = gpu_type
    document = {
        "template": {"name": name or k8s_name(hf_id), "description": f"{hf_id} from Hugging Face", "labels": {"source": "huggingface"}},
        "version": version,
        "spec": {
            "source": f"hf://{hf_id}",
            "served_model_name": hf_id,
            "task": task,
            "model_size_gb": round(weights_gb, 1),
            "engine": {"max_model_len": max_model_len if task == "generate" else None, "quantization": quantization},
            "resources": resources,
            "parallelism": {"tensor": max(1, gpus)},
        },
    }
    return parse_version(document, source=source)
