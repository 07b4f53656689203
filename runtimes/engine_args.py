"""Version spec → the runtime's command-line arguments and environment (pure).

The controller renders these into the InferenceService (`model.args`, `env`), and the
launcher parses the same arguments, so this module is the one place the mapping lives.
"""

from __future__ import annotations

import functools
import json

from templates.schema import VersionSpec

MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model
ENV_GENERATION_DEFAULTS = "STOKEHOLD_GENERATION_DEFAULTS"
ENV_MAX_CONCURRENCY = "STOKEHOLD_MAX_CONCURRENCY"
ENV_TASK = "STOKEHOLD_TASK"
ENV_API_KEY = "STOKEHOLD_API_KEY"
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
    for key, value in sorted(engine.vllm_args.items()):
        if value is True:
            args.append(_flag(key))
        elif value is False:
            args.append(_flag("no_" + key.replace("-", "_")))
        else:
            args.append(f"{_flag(key)}={value}")
    return args


def runtime_env(spec: VersionSpec) -> dict[str, str]:
    """Non-secret environment for the runtime container."""
    env = {
        ENV_TASK: spec.task,
        ENV_MAX_CONCURRENCY: str(spec.scaling.target_concurrency * CONCURRENCY_HEADROOM),
    }
    if spec.task == "generate":
        env[ENV_GENERATION_DEFAULTS] = _generation_defaults_json(spec.generation.model_dump_json(exclude_none=True))
    return env


@functools.lru_cache(maxsize=1024)  # templates share a few sets of defaults; every render needs them
def _generation_defaults_json(document: str) -> str:
    """Canonical JSON (sorted keys, compact) of the generation defaults, for the runtime's environment."""
    return json.dumps(json.loads(document), sort_keys=True, separators=(",", ":"))
