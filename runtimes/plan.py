"""How the head role starts: model location, topology, executor and the final vLLM arguments (pure).

Ray earns its start-up cost only with tensor parallelism or more than one node: then the
head starts a Ray cluster, waits for every node and GPU, and vLLM runs its Ray executor.
One GPU, pipeline stages inside one pod, or the CPU: vLLM's own local executor, no Ray.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runtimes.defaults import default_engine_args
from runtimes.engine_args import MODEL_DIR
from runtimes.settings import RuntimeSettings
from templates.schema import HF_ID_RE

ExecutorChoice = Literal["auto", "ray", "mp"]
Executor = Literal["ray", "mp"]

# KServe's multi-node runtime contract (injected into the head and worker pods)
ENV_TENSOR = "TENSOR_PARALLEL_SIZE"
ENV_PIPELINE = "PIPELINE_PARALLEL_SIZE"
ENV_NODES = "RAY_NODE_COUNT"
ENV_GPUS = "REQUEST_GPU_COUNT"
ENV_HEAD_SVC = "HEAD_SVC"

TENSOR_FLAGS = ("--tensor-parallel-size", "-tp")
PIPELINE_FLAGS = ("--pipeline-parallel-size", "-pp")
MODEL_FLAGS = ("--model",)
EXECUTOR_FLAGS = ("--distributed-executor-backend",)
CHAT_TEMPLATE_FLAGS = ("--chat-template",)
RUNNER_FLAGS = ("--runner",)
# Hub IDs from before organisations ("gpt2", "bert-base-uncased"); the Hub still resolves them
LEGACY_HF_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PlanError(ValueError):
    """The head cannot start as asked; the message says what to change."""


class Topology(BaseModel):
    model_config = ConfigDict(frozen=True)

    tensor: int = Field(default=1, ge=1)
    pipeline: int = Field(default=1, ge=1)
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=0)

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline

    def expected_gpus(self, on_gpu: bool) -> int:
        """GPUs the Ray cluster must offer before vLLM starts."""
        if not on_gpu:
            return 0
        if self.gpus_per_node is not None:
            return self.gpus_per_node * self.nodes
        return self.world_size


class LaunchPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    vllm_argv: list[str]
    executor: Executor
    topology: Topology
    expected_gpus: int
    model: str

    @property
    def uses_ray(self) -> bool:
        return self.executor == "ray"


def _normalise(flag: str) -> str:
    return flag if not flag.startswith("--") else "--" + flag[2:].replace("_", "-")


def flag_value(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The last value given for a flag (`--flag=value` or `--flag value`; underscores allowed)."""
    found = None
    for index, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if _normalise(name) not in names:
            continue
        if eq:
            found = value
        elif index + 1 < len(argv):
            found = argv[index + 1]
    return found


def without_flag(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """`argv` without any occurrence of the flags (and their separate values)."""
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        name, eq, _ = arg.partition("=")
        if _normalise(name) in names:
            skip_next = not eq
            continue
        out.append(arg)
    return out


def _positive_int(raw: str | None, what: str) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise PlanError(f"{what} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise PlanError(f"{what} must not be negative, got {value}")
    return value


def topology_from(argv: Sequence[str], env: Mapping[str, str]) -> Topology:
    """Parallelism from the vLLM flags, falling back to KServe's multi-node environment."""
    tensor = _positive_int(flag_value(argv, TENSOR_FLAGS), "--tensor-parallel-size") or _positive_int(env.get(ENV_TENSOR), ENV_TENSOR)
    pipeline = _positive_int(flag_value(argv, PIPELINE_FLAGS), "--pipeline-parallel-size") or _positive_int(
        env.get(ENV_PIPELINE), ENV_PIPELINE
    )
    nodes = _positive_int(env.get(ENV_NODES), ENV_NODES)
    gpus = _positive_int(env.get(ENV_GPUS), ENV_GPUS)
    return Topology(tensor=tensor or 1, pipeline=pipeline or 1, nodes=nodes or 1, gpus_per_node=gpus)


def choose_executor(choice: ExecutorChoice, topology: Topology, on_gpu: bool) -> Executor:
    """`auto`: Ray for tensor parallelism or several nodes on GPUs, otherwise vLLM's local executor."""
    if choice != "auto":
        return choice
    if not on_gpu:
        return "mp"  # vLLM's Ray executor does not support the CPU platform
    return "ray" if topology.tensor > 1 or topology.nodes > 1 else "mp"


def resolve_model(value: str | None, exists: Callable[[str], bool]) -> str:
    """What vLLM loads: a local directory (KServe puts models at /mnt/models; relative paths too)
    or a Hugging Face ID ('org/model', or a legacy one-word ID such as 'gpt2')."""
    if value is None or value == "":
        if exists(MODEL_DIR):
            return MODEL_DIR
        raise PlanError(f"no --model given and {MODEL_DIR} does not exist (KServe's storage initializer puts the model there)")
    if value.startswith("hf://"):
        value = value.removeprefix("hf://")
    if "://" in value:
        raise PlanError(
            f"the runtime does not download {value}: set it as the InferenceService's storageUri so that "
            f"KServe's storage initializer puts it at {MODEL_DIR}, and pass --model={MODEL_DIR}"
        )
    if exists(value):  # vLLM, too, looks for a local directory before it asks the Hub
        return value
    if value.startswith(("/", ".", "~")) or value.count("/") > 1:
        hint = " (is the InferenceService's storageUri set?)" if value == MODEL_DIR else ""
        raise PlanError(f"model path {value} does not exist{hint}")
    if HF_ID_RE.match(value) or LEGACY_HF_ID_RE.match(value):
        return value
    raise PlanError(f"--model {value!r} is neither an existing path nor a Hugging Face ID 'org/model'")


def plan_head(
    argv: Sequence[str],
    settings: RuntimeSettings,
    env: Mapping[str, str],
    *,
    executor: ExecutorChoice,
    on_gpu: bool,
    exists: Callable[[str], bool],
) -> LaunchPlan:
    """The vLLM arguments and executor for the head role, from its command line and environment."""
    explicit_backend = flag_value(argv, EXECUTOR_FLAGS)
    if explicit_backend is not None:
        if explicit_backend not in ("ray", "mp"):
            raise PlanError(f"--distributed-executor-backend={explicit_backend} is not supported here; use --executor auto|ray|mp")
        if executor not in ("auto", explicit_backend):
            raise PlanError(f"--executor {executor} contradicts --distributed-executor-backend={explicit_backend}")
        executor = explicit_backend  # type: ignore[assignment]
    topology = topology_from(argv, env)
    chosen = choose_executor(executor, topology, on_gpu)
    model = resolve_model(flag_value(argv, MODEL_FLAGS), exists)

    out = without_flag(argv, (*MODEL_FLAGS, *EXECUTOR_FLAGS))
    out.insert(0, f"--model={model}")
    if flag_value(argv, TENSOR_FLAGS) is None and topology.tensor > 1:
        out.append(f"--tensor-parallel-size={topology.tensor}")
    if flag_value(argv, PIPELINE_FLAGS) is None and topology.pipeline > 1:
        out.append(f"--pipeline-parallel-size={topology.pipeline}")
    # auto without Ray leaves the choice between vLLM's uni- and multi-process executors to vLLM
    if chosen == "ray" or executor == "mp":
        out.append(f"--distributed-executor-backend={chosen}")
    # embed and score: the pooling runner; --convert stays auto, as vLLM serves a *ForSequenceClassification cross-encoder
    # as it is (forcing --convert=classify would wrap it in an adapter meant for causal LMs)
    if settings.task != "generate" and flag_value(argv, RUNNER_FLAGS) is None:
        out.append("--runner=pooling")
    out += default_engine_args(settings.generation, has_chat_template=flag_value(argv, CHAT_TEMPLATE_FLAGS) is not None)
    return LaunchPlan(vllm_argv=out, executor=chosen, topology=topology, expected_gpus=topology.expected_gpus(on_gpu), model=model)
