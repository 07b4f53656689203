"""Version spec → the runtime's command-line arguments and environment (pure).

The controller renders these into the InferenceService (`model.args`, `env`), and the
launcher parses the same arguments, so this module is the one place the mapping lives.
"""

from __future__ import annotations

import json
from typing import Any

from templates.schema import SecretRef, VersionSpec

MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model
ENV_GENERATION_DEFAULTS = "STOKEHOLD_GENERATION_DEFAULTS"
ENV_MAX_CONCURRENCY = "STOKEHOLD_MAX_CONCURRENCY"
ENV_TASK = "STOKEHOLD_TASK"
ENV_API_KEY = "STOKEHOLD_API_KEY"
ENV_API_KEY_FILE = "STOKEHOLD_API_KEY_FILE"
# a LoRA runtime follows its deployment's adapter events (runtimes/adapters.py); the controller renders these
ENV_DEPLOYMENT = "STOKEHOLD_DEPLOYMENT"  # namespace/name
ENV_TEMPLATE = "STOKEHOLD_TEMPLATE"
ENV_TEMPLATE_VERSION = "STOKEHOLD_TEMPLATE_VERSION"
ENV_ADAPTER_CACHE = "STOKEHOLD_ADAPTER_CACHE"  # relative adapter sources live here, downloads go here
# cold start (docs/cold-start.md): a cached version's weights and its compile cache live on the model-cache volume
ENV_MODEL_SOURCE = "STOKEHOLD_MODEL_SOURCE"  # where a cached version's weights come from (s3://, hf://, ...), filled once
ENV_CONTENT_HASH = "STOKEHOLD_CONTENT_HASH"  # the version's content hash: part of every cache key
ENV_COMPILE_CACHE = "STOKEHOLD_COMPILE_CACHE"  # root of the compile caches on the volume; the runtime picks the keyed folder
MODEL_CACHE_MARKER = ".stokehold-cache.json"  # written last into a filled model folder: its presence means complete
API_KEY_VOLUME = "stokehold-api-key"
API_KEY_DIR = "/var/run/secrets/stokehold/api-key"
API_KEY_FILE_NAME = "api-key"
CONCURRENCY_HEADROOM = 4  # requests a replica queues before answering 429, per unit of scale target


def model_path(spec: VersionSpec) -> str:
    """Where the runtime finds the model: a local path as is, anything else under /mnt/models."""
    return spec.source if spec.source_scheme == "local" else MODEL_DIR


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def engine_cli_args(spec: VersionSpec, served_model_name: str) -> list[str]:
    """vLLM engine arguments for a spec, as `--flag=value` strings (booleans as bare flags)."""
    engine = spec.engine
    args = [f"--model={model_path(spec)}", f"--served-model-name={served_model_name}"]
    if spec.parallelism.tensor > 1:
        args.append(f"--tensor-parallel-size={spec.parallelism.tensor}")
    if spec.parallelism.pipeline > 1:
        args.append(f"--pipeline-parallel-size={spec.parallelism.pipeline}")
    if engine.max_model_len is not None:
        args.append(f"--max-model-len={engine.max_model_len}")
    if engine.dtype != "auto":
        args.append(f"--dtype={engine.dtype}")
    if engine.quantization is not None:
        args.append(f"--quantization={engine.quantization}")
    if spec.resources.gpus > 0:
        args.append(f"--gpu-memory-utilization={engine.gpu_memory_utilization}")
    if engine.max_num_seqs is not None:
        args.append(f"--max-num-seqs={engine.max_num_seqs}")
    if engine.enforce_eager:
        args.append("--enforce-eager")
    if engine.trust_remote_code:
        args.append("--trust-remote-code")
    if engine.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching")
    if engine.lora is not None:  # only these limits reach the pod: the adapters themselves arrive as events
        args += ["--enable-lora", f"--max-loras={engine.lora.max_loras}", f"--max-lora-rank={engine.lora.max_rank}"]
    args += openai_surface_args(spec)
    for key, value in sorted(engine.vllm_args.items()):
        if value is True:
            args.append(_flag(key))
        elif value is False:
            args.append(_flag("no_" + key.replace("-", "_")))
        else:
            args.append(f"{_flag(key)}={value}")
    return args


def openai_surface_args(spec: VersionSpec) -> list[str]:
    """vLLM flags for tool calling, reasoning and structured outputs (vllm 0.32's flag names)."""
    args = []
    if spec.tools is not None:
        args.append(f"--tool-call-parser={spec.tools.parser}")
        if spec.tools.auto_tool_choice:
            args.append("--enable-auto-tool-choice")
        if spec.tools.strict_level != "auto":
            args.append(f"--tool-strict-level={spec.tools.strict_level}")
    if spec.reasoning is not None:
        args.append(f"--reasoning-parser={spec.reasoning.parser}")
    if spec.structured_outputs is not None:
        config = json.dumps(spec.structured_outputs.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        args.append(f"--structured-outputs-config={config}")
    return args


def runtime_env(spec: VersionSpec) -> dict[str, str]:
    """Non-secret environment for the runtime container."""
    env = {
        ENV_TASK: spec.task,
        ENV_MAX_CONCURRENCY: str(spec.scaling.target_concurrency * CONCURRENCY_HEADROOM),
    }
    if spec.task == "generate":
        # canonical JSON (sorted keys, compact): the rendered object and its content hash must not depend on field order
        defaults = spec.generation.model_dump(mode="json", exclude_none=True)
        env[ENV_GENERATION_DEFAULTS] = json.dumps(defaults, sort_keys=True, separators=(",", ":"))
    return env


def api_key_mount(secret: SecretRef) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The pod volume, container mount and environment variable that give the runtime a Secret's API key file.

    The whole directory is mounted (no subPath), so the kubelet updates the file in place when the
    Secret changes and the runtime, which re-reads it on change, rotates without a restart.
    """
    volume = {
        "name": API_KEY_VOLUME,
        "secret": {"secretName": secret.name, "items": [{"key": secret.key, "path": API_KEY_FILE_NAME}], "defaultMode": 0o444},
    }
    mount = {"name": API_KEY_VOLUME, "mountPath": API_KEY_DIR, "readOnly": True}
    env = {"name": ENV_API_KEY_FILE, "value": f"{API_KEY_DIR}/{API_KEY_FILE_NAME}"}
    return volume, mount, env
