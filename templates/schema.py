"""The template schema: `ModelTemplate` and its immutable `ModelTemplateVersion`.

Everything here is pure (no I/O). The same models validate catalog YAML files,
the data of `template.version.published` events and the CLI's input, so a bad
document is refused with the same field-named error wherever it enters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from templates.naming import DNS1123_LABEL_RE, is_dns1123_label, k8s_name, service_name_problem

API_VERSION = "stokehold.dev/v1alpha1"
DEFAULT_KEEP_HOT = "10m"
ALWAYS_HOT_PRIORITY = 2
KEEP_HOT_MAX_S = 3600  # Knative's bound on autoscaling.knative.dev/scale-to-zero-pod-retention-period
VERSION_MAX = 1_000_000  # the highest version number of a template

# Kubernetes resource quantities, e.g. "4", "500m", "24Gi", "1.5".
QUANTITY_RE = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_WHITESPACE_OR_NUL = re.compile(r"[\s\x00]")
DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
SOURCE_SCHEMES = ("hf", "s3", "gs", "pvc", "oci")
HF_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# Flags that the runtime or the rendered InferenceService own, or that have a
# first-class field here: `vllm_args` may not set them (security and single
# source of truth; see docs/security.md).
RESERVED_VLLM_ARGS = frozenset(
    {
        "model",
        "host",
        "port",
        "served_model_name",
        "api_key",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "distributed_executor_backend",
        "trust_remote_code",
        "download_dir",
        "allowed_local_media_path",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_ca_certs",
        "root_path",
        "chat_template",
        "max_model_len",
        "dtype",
        "quantization",
        "gpu_memory_utilization",
        "max_num_seqs",
        "enforce_eager",
        "middleware",
        "tokenizer",
        "hf_token",
        "enable_prefix_caching",
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "lora_modules",
    }
)
VLLM_ARG_KEY_RE = re.compile(r"[a-z][a-z0-9_]*")

# Beyond those, `vllm_args` passes tuning flags only: a key must be one of these exact vLLM
# `serve` flags, with a value of the listed type (a switch takes true or false; false renders
# as `--no-<flag>`, so switches without that form take only true). An exact name matters:
# argparse would read an unknown key such as `trust_remote` as an abbreviation of
# `--trust-remote-code`. Left out on purpose: flags that load code, config files or other
# models (`config`, `*_plugin`, `*_cls`, `logits_processors`, `kv_transfer_config`,
# `speculative_config`, `lora_modules`, `hf_overrides`, `load_format`, ...), that change where
# or for whom the server listens (`uds`, `allowed_origins`, `ssl_*`, `api_key`, ...), that send
# data elsewhere (`otlp_traces_endpoint`) or that log request contents (`enable_log_requests`).
# tests/security/test_injection.py checks every name against the installed vLLM's parser.
_SWITCH: tuple[type, ...] = (bool,)
_INT: tuple[type, ...] = (int,)
_NUMBER: tuple[type, ...] = (int, float)
_TEXT: tuple[type, ...] = (str,)
ALLOWED_VLLM_ARGS: dict[str, tuple[type, ...]] = {
    "async_scheduling": _SWITCH,
    "block_size": _INT,
    "chat_template_content_format": _TEXT,
    "config_format": _TEXT,
    "cpu_offload_gb": _NUMBER,
    "disable_cascade_attn": _SWITCH,
    "disable_custom_all_reduce": _SWITCH,
    "disable_fastapi_docs": _SWITCH,
    "disable_log_stats": _SWITCH,
    "disable_sliding_window": _SWITCH,
    "disable_uvicorn_access_log": _SWITCH,
    "enable_auto_tool_choice": _SWITCH,
    "enable_chunked_prefill": _SWITCH,
    "enable_expert_parallel": _SWITCH,
    "enable_force_include_usage": _SWITCH,
    "enable_prompt_tokens_details": _SWITCH,
    "kv_cache_dtype": _TEXT,
    "kv_cache_memory_bytes": (int, str),
    "limit_mm_per_prompt": _TEXT,
    "logprobs_mode": _TEXT,
    "long_prefill_token_threshold": _INT,
    "max_cudagraph_capture_size": _INT,
    "max_log_len": _INT,
    "max_logprobs": _INT,
    "max_num_batched_tokens": _INT,
    "max_parallel_loading_workers": _INT,
    "mm_processor_cache_gb": _NUMBER,
    "num_gpu_blocks_override": _INT,
    "optimization_level": (int, str),
    "prefix_caching_hash_algo": _TEXT,
    "reasoning_parser": _TEXT,
    "response_role": _TEXT,
    "return_tokens_as_token_ids": _SWITCH,
    "revision": _TEXT,
    "safetensors_load_strategy": _TEXT,
    "scheduling_policy": _TEXT,
    "seed": _INT,
    "stream_interval": _INT,
    "tokenizer_mode": _TEXT,
    "tokenizer_revision": _TEXT,
    "tool_call_parser": _TEXT,
    "uvicorn_log_level": _TEXT,
}
SWITCHES_WITHOUT_NEGATION = frozenset({"disable_log_stats"})  # vLLM has no --no-<flag> for these
VLLM_ARG_VALUE_MAX = 256
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

# The OpenAI surface: the names vLLM accepts for `--tool-call-parser`, `--reasoning-parser` and the
# structured-outputs backend, in the vLLM the runtime images ship (runtimes/Dockerfile*). vLLM's own
# argument parser takes any name and fails only when the engine starts, and the controller has no vLLM
# to ask: so the names are checked in here, and tests/templates/test_catalog_2026.py compares them
# with the installed vLLM's registries (ToolParserManager, ReasoningParserManager, StructuredOutputsConfig,
# ToolStrictLevelName).
VLLM_VERSION = "0.32.0"
TOOL_CALL_PARSERS = frozenset(
    {
        "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31", "deepseek_v32", "deepseek_v4",
        "deepseek_v41", "dots", "ernie45", "functiongemma", "gemma4", "gigachat3", "glm45", "glm47", "granite",
        "granite-20b-fc", "granite4", "hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "internlm", "jamba",
        "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json", "llama4_pythonic", "longcat",
        "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral", "muse_glimmer", "olmo3", "openai", "phi4_mini_json",
        "plamo3", "poolside_v1", "pythonic", "qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5", "xlam",
    }
)  # fmt: skip
REASONING_PARSERS = frozenset(
    {
        "cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4", "deepseek_v41", "ernie45",
        "gemma4", "glm45", "glm47", "granite", "granite_thinking_parser", "hf", "holo2", "hunyuan_a13b", "hy_v3", "hy_v4",
        "inkling", "k2_horizon", "kimi_k2", "kimi_k3", "ling3", "mimo", "minicpmv", "minimax_m2", "minimax_m2_append_think",
        "minimax_m3", "mistral", "muse_glimmer", "nemotron_v3", "olmo3", "openai_gptoss", "plamo3", "poolside_v1", "qwen3",
        "seed_oss", "step3", "step3p5",
    }
)  # fmt: skip
StructuredOutputsBackend = Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"]
ToolStrictLevel = Literal["auto", "function", "parameter"]
COMPACT_JSON_BACKENDS = frozenset({"xgrammar", "guidance"})  # the backends that can forbid whitespace in JSON

DnsLabel = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class TemplateValidationError(ValueError):
    """A template document is invalid. `errors` lists (field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "template") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"invalid {source}: {error_text(errors)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


SHOWN_MAX = 64


def shown(value: str, limit: int = SHOWN_MAX) -> str:
    """The quoted form of a value someone gave, cut to `limit` characters first: a message echoes input, never its size."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def check_dns_label(value: str, what: str) -> str:
    """`value` when it is a DNS-1123 label; otherwise a `ValueError` that says what `what` must look like."""
    if not is_dns1123_label(value):
        raise ValueError(_dns_label_message(value, what))
    return value


def check_service_name(value: str, what: str) -> str:
    """`value` when it can name an InferenceService (templates/naming.py); otherwise a `ValueError` naming the rule."""
    problem = service_name_problem(value)
    if problem:
        raise ValueError(f"{what} {shown(value)} {problem}")
    return value


def _dns_label_message(value: str, what: str) -> str:
    return (
        f"{what} {shown(value)} is not a valid Kubernetes name (DNS-1123 label: lower-case "
        "letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    )


def _check_quantity(value: str | int | float | None) -> str | None:
    if value is None:
        return None
    text = str(value)
    if len(text) > _QUANTITY_MAX or QUANTITY_RE.match(text) is None:
        raise ValueError(f"{text[:_QUANTITY_MAX]!r} is not a Kubernetes quantity (e.g. '4', '500m', '24Gi')")
    return text


_QUANTITY_MAX = 64


def duration_seconds(value: str) -> int:
    """Seconds in a duration such as '10m', '1h30m', '45s' (validated forms only)."""
    match = DURATION_RE.match(value)
    if not match or not value:
        raise ValueError(f"{value!r} is not a duration like '10m', '1h30m' or '45s'")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class SecretRef(_Strict):
    """A reference to a Kubernetes Secret key. Secret values never travel in events."""

    name: DnsLabel
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = "HF_TOKEN"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not is_dns1123_label(v):
            # no echo of the value: someone may have pasted the token itself, and dead letters are widely read
            raise ValueError("secret name is not a valid Kubernetes name (DNS-1123 label): it names a Secret, it never holds the token")
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if v in (".", "..") or v.startswith(".."):  # Kubernetes' own rule for Secret keys
            raise ValueError(f"{v!r} is not a valid Secret key (it may not be '.' or '..' or start with '..')")
        return v


def _check_vllm_arg_value(key: str, normalised: str, value: Any) -> None:
    allowed = ALLOWED_VLLM_ARGS[normalised]
    kind = type(value)
    if kind not in allowed:
        names = " or ".join("true/false" if t is bool else t.__name__ for t in allowed)
        raise ValueError(f"vllm_args {shown(key)} takes {names}, not {kind.__name__}")
    if value is False and normalised in SWITCHES_WITHOUT_NEGATION:
        raise ValueError(f"vllm_args {shown(key)} can only be switched on (true); leave it out to keep it off")
    if isinstance(value, str) and (len(value) > VLLM_ARG_VALUE_MAX or _CONTROL_CHARS.search(value)):
        raise ValueError(f"vllm_args {shown(key)} must be at most {VLLM_ARG_VALUE_MAX} characters without control characters")
    if normalised in _PARSER_ARGS:
        check_parser(value, *_PARSER_ARGS[normalised], what=f"vllm_args {shown(key)}")


def check_parser(value: str, known: frozenset[str], kind: str, *, what: str = "") -> str:
    """`value` when vLLM has a `kind` parser of that name; otherwise a `ValueError` listing the names there are."""
    if value not in known:
        prefix = f"{what} " if what else ""
        raise ValueError(f"{prefix}{shown(value)} is not a {kind} parser of vLLM {VLLM_VERSION}; one of {', '.join(sorted(known))}")
    return value


_PARSER_ARGS: Final = {"tool_call_parser": (TOOL_CALL_PARSERS, "tool-call"), "reasoning_parser": (REASONING_PARSERS, "reasoning")}


class ToolCalling(_Strict):
    """Function calling: vLLM's `--tool-call-parser` (how the model writes a call) and `--enable-auto-tool-choice`.

    With a parser, named `tool_choice` and `tool_choice="required"` work: vLLM constrains the output to a
    call, in the model's own format; `auto_tool_choice` also lets the model decide (`tool_choice="auto"`).
    `strict_level` is vLLM's `--tool-strict-level`: at "auto" a call's arguments follow the function's
    parameters when the request marks the function `strict` (as OpenAI does); "parameter" pins them for
    every request, "function" only the function name.
    """

    parser: str
    auto_tool_choice: bool = True
    strict_level: ToolStrictLevel = "auto"

    @field_validator("parser")
    @classmethod
    def _parser(cls, v: str) -> str:
        return check_parser(v, TOOL_CALL_PARSERS, "tool-call")


class Reasoning(_Strict):
    """vLLM's `--reasoning-parser`: the model's thinking comes back as `reasoning`, apart from `content`."""

    parser: str

    @field_validator("parser")
    @classmethod
    def _parser(cls, v: str) -> str:
        return check_parser(v, REASONING_PARSERS, "reasoning")


class StructuredOutputs(_Strict):
    """vLLM's `--structured-outputs-config`: the grammar engine behind `response_format` and tool arguments.

    `disable_any_whitespace` keeps JSON compact: without it a weak model may fill `max_tokens` with the
    whitespace JSON allows between tokens.
    """

    backend: StructuredOutputsBackend = "auto"
    disable_any_whitespace: bool = False

    @model_validator(mode="after")
    def _whitespace(self) -> StructuredOutputs:
        if self.disable_any_whitespace and self.backend not in COMPACT_JSON_BACKENDS:
            raise ValueError(f"disable_any_whitespace needs backend {' or '.join(sorted(COMPACT_JSON_BACKENDS))}, not {self.backend!r}")
        return self


class LoraLimits(_Strict):
    """The engine's LoRA limits: what the InferenceService carries. Adapters come and go as events within them."""

    max_loras: int = Field(default=4, ge=1, le=64, description="adapters served at once (the engine's slots)")
    max_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(default=16, description="the highest adapter rank served")


class EngineSettings(_Strict):
    """Allow-listed vLLM engine arguments, plus a checked pass-through mapping."""

    max_model_len: int | None = Field(default=None, gt=0, le=10_000_000)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    quantization: Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "bitsandbytes", "compressed-tensors"] | None = None
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_num_seqs: int | None = Field(default=None, gt=0, le=65_536)
    enforce_eager: bool = False
    trust_remote_code: bool = False
    enable_prefix_caching: bool | None = None
    lora: LoraLimits | None = Field(default=None, exclude_if=lambda v: v is None)  # None: no adapters (and left out of the content hash)
    vllm_args: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("vllm_args")
    @classmethod
    def _vllm_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            return v
        seen: set[str] = set()
        for key, value in v.items():
            normalised = key.replace("-", "_")
            if not VLLM_ARG_KEY_RE.fullmatch(normalised):
                raise ValueError(f"vllm_args key {shown(key)} must be a flag name like 'max_num_batched_tokens'")
            if normalised in RESERVED_VLLM_ARGS:
                raise ValueError(f"vllm_args key {shown(key)} is reserved: set it through its own field or leave it to the runtime")
            if normalised not in ALLOWED_VLLM_ARGS:
                raise ValueError(
                    f"vllm_args key {shown(key)} is not an allowed vLLM tuning flag (see ALLOWED_VLLM_ARGS in templates/schema.py)"
                )
            if normalised in seen:
                raise ValueError(f"vllm_args key {shown(key)} is given twice (with '-' and '_')")
            seen.add(normalised)
            _check_vllm_arg_value(key, normalised, value)
        return dict(sorted(v.items()))  # canonical order: the content hash hashes the JSON dump


class SamplingDefaults(_Strict):
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    max_tokens: int | None = Field(default=None, gt=0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)


class GenerationDefaults(_Strict):
    """Defaults the runtime applies when a request leaves them out."""

    # prompt formats end in "\n" or " " and stop sequences start with them: keep whitespace as written
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    chat_template: str | None = Field(default=None, max_length=65_536)
    prompt_format: str | None = Field(default=None, max_length=8_192)
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=16)
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)

    @field_validator("prompt_format")
    @classmethod
    def _prompt_format(cls, v: str | None) -> str | None:
        if v is not None and "{instruction}" not in v:
            raise ValueError("prompt_format must contain the placeholder '{instruction}'")
        return v


class Resources(_Strict):
    """Resources of one pod (one node of a multi-node service)."""

    gpus: int = Field(default=0, ge=0, le=16)
    gpu_type: Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$", max_length=63)] | None = None
    cpu: str = "4"
    memory: str = "16Gi"

    @field_validator("gpu_type", mode="before")
    @classmethod
    def _gpu_type(cls, v: Any) -> Any:
        # it becomes a nodeSelector value (config.gpu_products maps known types, others go verbatim)
        if isinstance(v, str) and (not v or len(v) > 63 or not LABEL_VALUE_RE.match(v)):
            raise ValueError(
                f"gpu_type {shown(v)} is not a Kubernetes label value (it selects GPU nodes by label): letters, digits, "
                "'-', '_' and '.', starting and ending with a letter or digit, at most 63 characters"
            )
        return v

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            return _check_quantity(v)
        raise ValueError("must be a Kubernetes quantity string such as '4' or '24Gi'")

    @model_validator(mode="after")
    def _gpu_type_needs_gpus(self) -> Resources:
        if self.gpu_type and self.gpus == 0:
            raise ValueError("gpu_type is set but gpus is 0")
        return self


class Parallelism(_Strict):
    tensor: int = Field(default=1, ge=1, le=16)
    pipeline: int = Field(default=1, ge=1, le=16)
    nodes: int = Field(default=1, ge=1, le=16)


class Scaling(_Strict):
    min_replicas: int = Field(default=0, ge=0, le=100)
    max_replicas: int = Field(default=1, ge=1, le=100)
    target_concurrency: int = Field(default=8, ge=1, le=10_000)
    keep_hot: str = DEFAULT_KEEP_HOT
    priority: int = Field(default=0, ge=0, le=10)

    @field_validator("keep_hot")
    @classmethod
    def _keep_hot(cls, v: str) -> str:
        if duration_seconds(v) > KEEP_HOT_MAX_S:
            raise ValueError(
                f"keep_hot {shown(v)} is longer than 1h, the most Knative allows for "
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period (it would refuse the service); "
                f"to keep a model hot longer, set min_replicas >= 1 or priority >= {ALWAYS_HOT_PRIORITY}"
            )
        return v

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self

    @property
    def always_hot(self) -> bool:
        return self.priority >= ALWAYS_HOT_PRIORITY

    @property
    def keep_hot_seconds(self) -> int:
        return duration_seconds(self.keep_hot)


# sources that can be copied into the model cache ahead of time; a local path, a pvc:// claim and an
# oci:// modelcar are already where the pod reads them
CACHEABLE_SCHEMES: Final = ("hf", "s3", "gs")


class Storage(_Strict):
    """Where a version's weights are kept. `cache`: copy them into the model cache when the version is published
    (docs/cold-start.md), so that a replica starting from zero downloads nothing.

    `cache` left out (null) leaves it to the controller: cached when the version is always hot
    (`scaling.priority` >= 2) or at least 10 GB (`model_size_gb`; the controller's `cache_min_size_gb`), and
    there is somewhere to cache: `cache_pvc`, the controller's `model_cache_pvc`, or KServe's LocalModelCache.
    `true` asks for it (only hf://, s3:// and gs:// sources are cached), `false` never caches.
    """

    cache_pvc: DnsLabel | None = None
    hf_token_secret: SecretRef | None = None
    # like `serving`, left out of documents and the content hash while unset: older versions keep their hash
    cache: bool | None = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("cache_pvc")
    @classmethod
    def _pvc(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_label(v, "cache_pvc")


class ApiKeySecretRef(SecretRef):
    """The Secret key that holds the endpoint's API key(s), one per line (see runtimes/README.md)."""

    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = "api-key"


class Serving(_Strict):
    """How the endpoint is served. Without `api_key_secret` the endpoint accepts requests without a key."""

    api_key_secret: ApiKeySecretRef | None = None


# what a version serves: chat and completions; embeddings; or scores of query-document pairs (a cross-encoder reranker)
Task = Literal["generate", "embed", "score"]
POOLING_KINDS: Final = {"embed": "an embedding", "score": "a scoring"}

# vllm_args flags that a field of the spec also sets: a version may say each only once
_OWNED_FLAGS: Final = (("tool_call_parser", "tools"), ("enable_auto_tool_choice", "tools"), ("reasoning_parser", "reasoning"))


def source_scheme(source: str) -> str:
    """'hf', 's3', 'gs', 'pvc', 'oci' or 'local' for a validated model source."""
    if "://" in source:
        return source.split("://", 1)[0]
    return "local"


def _source_problem(source: str) -> str | None:
    if _WHITESPACE_OR_NUL.search(source):
        return "source may not contain whitespace"
    if "://" in source:
        scheme, rest = source.split("://", 1)
        if scheme not in SOURCE_SCHEMES:
            return f"source scheme {scheme!r} is not one of {', '.join(SOURCE_SCHEMES)} (or a local path)"
        if not rest:
            return "source has no location after the scheme"
        if scheme == "hf" and not HF_ID_RE.match(rest):
            return f"hf source {rest!r} must be a Hugging Face ID 'org/model'"
        if scheme == "pvc":
            claim = rest.split("/", 1)[0]
            if not is_dns1123_label(claim):
                return _dns_label_message(claim, "pvc claim")
        if ".." in rest.split("/"):
            return "source may not contain '..'"
    elif not source.startswith("/"):
        return "source must be hf://org/model, s3://…, gs://…, pvc://claim/path, oci://… or an absolute local path"
    elif ".." in source.split("/"):
        return "source may not contain '..'"
    return None


class VersionSpec(_Strict):
    """Everything needed to serve one immutable version of a template."""

    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    served_model_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", max_length=128)] | None = None
    task: Task = "generate"
    model_size_gb: float | None = Field(default=None, gt=0, le=4096)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    # the OpenAI surface beyond chat (task "generate" only); like `serving`, left out of documents and the hash while unset
    tools: ToolCalling | None = Field(default=None, exclude_if=lambda v: v is None)
    reasoning: Reasoning | None = Field(default=None, exclude_if=lambda v: v is None)
    structured_outputs: StructuredOutputs | None = Field(default=None, exclude_if=lambda v: v is None)
    resources: Resources = Field(default_factory=Resources)
    parallelism: Parallelism = Field(default_factory=Parallelism)
    scaling: Scaling = Field(default_factory=Scaling)
    storage: Storage = Field(default_factory=Storage)
    # left out of documents and the content hash while unset, so versions published before it existed keep their hash
    serving: Serving | None = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("serving")
    @classmethod
    def _serving(cls, v: Serving | None) -> Serving | None:
        return None if v == Serving() else v  # `serving: {}` is the same version as none, with the same hash

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        problem = _source_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _arithmetic(self) -> VersionSpec:
        par, res = self.parallelism, self.resources
        if res.gpus == 0:
            if par.tensor * par.pipeline != 1 or par.nodes != 1:
                raise ValueError("parallelism: a CPU-only spec (resources.gpus = 0) needs tensor = pipeline = nodes = 1")
            if self.engine.quantization in {"awq", "awq_marlin", "gptq", "gptq_marlin", "fp8"}:
                raise ValueError(f"engine.quantization {self.engine.quantization!r} needs GPUs (resources.gpus = 0)")
        elif par.tensor * par.pipeline != res.gpus * par.nodes:
            raise ValueError(
                f"parallelism: tensor ({par.tensor}) x pipeline ({par.pipeline}) = {par.tensor * par.pipeline} "
                f"must equal resources.gpus ({res.gpus}) x parallelism.nodes ({par.nodes}) = {res.gpus * par.nodes}"
            )
        if par.nodes > 1 and source_scheme(self.source) not in {"pvc", "oci"}:
            raise ValueError("multi-node serving (parallelism.nodes > 1) needs a pvc:// or oci:// source (KServe multi-node)")
        if self.task != "generate" and (self.generation.chat_template or self.generation.prompt_format or self.generation.stop):
            raise ValueError(f"generation defaults do not apply to {POOLING_KINDS[self.task]} template (task = {self.task!r})")
        self._openai_surface()
        if self.storage.cache and self.source_scheme not in CACHEABLE_SCHEMES:
            raise ValueError(
                f"storage.cache is true, but a {self.source_scheme} source is never copied into the model cache "
                f"(only {', '.join(f'{s}://' for s in CACHEABLE_SCHEMES)} sources are): the pod reads it where it is; "
                "leave storage.cache out"
            )
        return self

    def _openai_surface(self) -> None:
        given = [name for name in ("tools", "reasoning", "structured_outputs") if getattr(self, name) is not None]
        if self.task != "generate" and given:
            raise ValueError(f"{', '.join(given)} apply to generation, not to {POOLING_KINDS[self.task]} template (task = {self.task!r})")
        if self.tools is not None and self.generation.prompt_format:
            raise ValueError(
                "tools and generation.prompt_format do not go together: a prompt format shows the model one instruction, "
                "never the tools; keep the model's chat template or give a chat_template that renders `tools`"
            )
        if self.reasoning is not None and self.generation.stop:
            # vLLM 0.32 holds back streamed text that may begin a stop sequence, while the reasoning parser
            # splits on token ids: a stream would carry reasoning as content (tests/runtime/test_reasoning_vllm.py)
            raise ValueError(
                "generation.stop and reasoning do not go together: with stop sequences vLLM streams reasoning as content; "
                "leave stop out (the chat template's end-of-turn token ends a reply)"
            )
        for flag, field in _OWNED_FLAGS:
            if getattr(self, field) is not None and {flag, flag.replace("_", "-")} & set(self.engine.vllm_args):
                raise ValueError(f"vllm_args {flag!r} and {field} both set --{flag.replace('_', '-')}: keep only {field}")

    @property
    def source_scheme(self) -> str:
        return source_scheme(self.source)

    @property
    def total_gpus(self) -> int:
        return self.resources.gpus * self.parallelism.nodes


class ModelTemplate(_Strict):
    name: DnsLabel
    description: Annotated[str, StringConstraints(max_length=2048)] = ""
    labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(default_factory=dict, max_length=32)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_service_name(v, "template name")  # by default its deployments' InferenceService name

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            problem = "is not a valid Kubernetes label key" if len(key) > _LABEL_KEY_MAX else _label_key_problem(key)
            if problem:
                raise ValueError(f"label key {key[:_LABEL_KEY_MAX]!r} {problem}")
            if not LABEL_VALUE_RE.match(value):
                raise ValueError(f"label value {shown(value)} for {shown(key)} is not a valid Kubernetes label value")
        return dict(sorted(v.items()))  # canonical order: the content hash hashes the JSON dump


_LABEL_KEY_MAX = 253 + 1 + 63  # prefix / name


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(DNS1123_LABEL_RE.fullmatch(p) for p in prefix.split("."))):
        return "has an invalid prefix"
    if not name or len(name) > 63 or not LABEL_KEY_NAME_RE.match(name):
        return "is not a valid Kubernetes label key"
    if prefix.endswith("stokehold.dev") or prefix.startswith("kubernetes.io") or prefix.endswith(".kubernetes.io"):
        return "uses a reserved prefix"
    return None


class ModelTemplateVersion(_Strict):
    """One immutable version of a template: the unit that is published and served."""

    api_version: Literal["stokehold.dev/v1alpha1"] = Field(default="stokehold.dev/v1alpha1", alias="apiVersion")
    kind: Literal["ModelTemplateVersion"] = "ModelTemplateVersion"
    template: ModelTemplate
    version: int = Field(strict=True, ge=1, le=VERSION_MAX)  # strict: `true`, "1" and 1.0 are not version 1
    spec: VersionSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, str_strip_whitespace=True)

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def ref(self) -> str:
        return f"{self.template.name}@{self.version}"

    @property
    def served_model_name(self) -> str:
        return self.spec.served_model_name or self.template.name

    @property
    def content_hash(self) -> str:
        return content_hash(self)

    def to_document(self) -> dict[str, Any]:
        """The canonical YAML/JSON document (what catalog files and events carry)."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=False)


def canonical_json(version: ModelTemplateVersion) -> bytes:
    """The compact JSON of template metadata, version number and spec: what the content hash hashes.

    pydantic dumps fields in declaration order and the only free-order mappings (labels,
    vllm_args) are sorted on validation, so the compact dump is canonical. It is also a
    complete document: `ModelTemplateVersion.model_validate_json` reads it back.
    """
    return type(version).__pydantic_serializer__.to_json(version, include=_HASHED_FIELDS)


def content_hash(version: ModelTemplateVersion) -> str:
    """sha256 over `canonical_json(version)`."""
    return "sha256:" + hashlib.sha256(canonical_json(version)).hexdigest()


_HASHED_FIELDS: Final = {"template", "version", "spec"}


_SHOWN_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def _location(loc: tuple[int | str, ...], *, unknown_key: bool = False) -> str:
    parts = [repr(part) if isinstance(part, str) and (not part or "." in part) else str(part) for part in loc]
    if unknown_key and loc and not (isinstance(loc[-1], str) and _SHOWN_KEY.fullmatch(loc[-1])):
        # a key no schema has may be a line of some other file read as YAML (a password hash): never echo it
        parts[-1] = "<unknown key>"
    return ".".join(parts)  # an empty or dotted key would make the path ambiguous: quoted above


def errors_from(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) pairs from a pydantic error, for humans and dead letters."""
    out = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append((_location(err["loc"], unknown_key=err["type"] == "extra_forbidden"), msg))
    return out


def error_text(errors: ValidationError | Iterable[tuple[str, str]]) -> str:
    """The text "field: message; …" of a pydantic error or of (field path, message) pairs; '<root>' is the whole document."""
    pairs = errors_from(errors) if isinstance(errors, ValidationError) else errors
    return "; ".join(f"{location or '<root>'}: {message}" for location, message in pairs)


def parse_version(document: Any, source: str = "template") -> ModelTemplateVersion:
    """Validate a template-version document. Raises only `TemplateValidationError`."""
    if not isinstance(document, dict):
        raise TemplateValidationError([("", f"expected a mapping, got {type(document).__name__}")], source)
    try:
        return ModelTemplateVersion.model_validate(document)
    except ValidationError as exc:
        raise TemplateValidationError(errors_from(exc), source) from None
    except (TypeError, ValueError, RecursionError) as exc:  # pragma: no cover - defensive
        raise TemplateValidationError([("", str(exc))], source) from None


__all__ = [
    "ALWAYS_HOT_PRIORITY",
    "API_VERSION",
    "CACHEABLE_SCHEMES",
    "REASONING_PARSERS",
    "TOOL_CALL_PARSERS",
    "VERSION_MAX",
    "VLLM_VERSION",
    "ApiKeySecretRef",
    "EngineSettings",
    "GenerationDefaults",
    "ModelTemplate",
    "ModelTemplateVersion",
    "Parallelism",
    "Reasoning",
    "Resources",
    "SamplingDefaults",
    "Scaling",
    "SecretRef",
    "Serving",
    "Storage",
    "StructuredOutputs",
    "TemplateValidationError",
    "ToolCalling",
    "VersionSpec",
    "canonical_json",
    "content_hash",
    "duration_seconds",
    "error_text",
    "errors_from",
    "k8s_name",
    "parse_version",
    "source_scheme",
]
