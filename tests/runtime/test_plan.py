"""The head's plan: executor decision, topology from flags and KServe's env, model resolution, vLLM argv."""

from __future__ import annotations

import json
import re
from typing import Literal

import pytest

from runtimes.engine_args import MODEL_DIR, engine_cli_args, runtime_env
from runtimes.plan import (
    PlanError,
    Topology,
    choose_executor,
    flag_value,
    plan_head,
    resolve_model,
    topology_from,
    without_flag,
)
from runtimes.settings import RuntimeSettings
from templates.catalog import load_catalog
from templates.schema import GenerationDefaults


def exists_only(*paths: str):  # type: ignore[no-untyped-def]
    return lambda path: path in paths


@pytest.mark.parametrize(
    ("choice", "topology", "on_gpu", "expected"),
    [
        ("auto", Topology(), False, "mp"),  # the CPU: never Ray
        ("auto", Topology(tensor=4), False, "mp"),
        ("auto", Topology(), True, "mp"),  # one GPU: short cold start
        ("auto", Topology(pipeline=2), True, "mp"),  # pipeline stages inside one pod
        ("auto", Topology(tensor=2), True, "ray"),
        ("auto", Topology(tensor=1, pipeline=2, nodes=2), True, "ray"),
        ("ray", Topology(), False, "ray"),  # forced either way
        ("mp", Topology(tensor=8, nodes=2), True, "mp"),
    ],
)
def test_executor_decision(choice: str, topology: Topology, on_gpu: bool, expected: str) -> None:
    assert choose_executor(choice, topology, on_gpu) == expected  # type: ignore[arg-type]


def test_flag_parsing_handles_both_spellings() -> None:
    argv = ["--model", "/m", "--tensor_parallel_size=2", "-pp", "3", "--enforce-eager"]
    assert flag_value(argv, ("--model",)) == "/m"
    assert flag_value(argv, ("--tensor-parallel-size", "-tp")) == "2"
    assert flag_value(argv, ("--pipeline-parallel-size", "-pp")) == "3"
    assert flag_value(argv, ("--max-model-len",)) is None
    assert without_flag(argv, ("--model", "-pp")) == ["--tensor_parallel_size=2", "--enforce-eager"]


def test_topology_flags_win_over_kserve_env() -> None:
    env = {"TENSOR_PARALLEL_SIZE": "4", "PIPELINE_PARALLEL_SIZE": "2", "RAY_NODE_COUNT": "2", "REQUEST_GPU_COUNT": "4"}
    assert topology_from(["--tensor-parallel-size=2"], env) == Topology(tensor=2, pipeline=2, nodes=2, gpus_per_node=4)
    assert topology_from([], {}) == Topology()
    assert Topology(tensor=2, pipeline=2, nodes=2, gpus_per_node=2).expected_gpus(on_gpu=True) == 4
    assert Topology(tensor=2).expected_gpus(on_gpu=True) == 2
    assert Topology(tensor=2).expected_gpus(on_gpu=False) == 0


def test_bad_kserve_env_is_named() -> None:
    with pytest.raises(PlanError, match="RAY_NODE_COUNT must be a whole number"):
        topology_from([], {"RAY_NODE_COUNT": "two"})


def test_model_resolution() -> None:
    assert resolve_model(None, exists_only(MODEL_DIR)) == MODEL_DIR
    assert resolve_model("/models/x", exists_only("/models/x")) == "/models/x"
    assert resolve_model("hf://org/model", exists_only()) == "org/model"
    assert resolve_model("org/model", exists_only()) == "org/model"
    with pytest.raises(PlanError, match="/mnt/models does not exist"):
        resolve_model(None, exists_only())
    with pytest.raises(PlanError, match=r"/mnt/models does not exist \(is the InferenceService's storageUri set\?\)"):
        resolve_model(MODEL_DIR, exists_only())
    with pytest.raises(PlanError, match="storage initializer"):
        resolve_model("s3://bucket/model", exists_only())
    with pytest.raises(PlanError, match="neither an existing path nor a Hugging Face ID"):
        resolve_model("not a model", exists_only())


def test_relative_paths_and_legacy_hub_ids() -> None:
    # a local directory wins over a Hub ID of the same spelling, as in vLLM
    assert resolve_model(".cache/tiny", exists_only(".cache/tiny")) == ".cache/tiny"
    assert resolve_model("models/tiny", exists_only("models/tiny")) == "models/tiny"
    assert resolve_model("gpt2", exists_only()) == "gpt2"
    for missing in (".cache/tiny", "./tiny", "../a/b", "~/m", "a/b/c"):
        with pytest.raises(PlanError, match=f"model path {re.escape(missing)} does not exist$"):
            resolve_model(missing, exists_only())


def test_single_gpu_plan_from_a_rendered_catalog_version_has_no_ray() -> None:
    version = next(v for v in load_catalog() if v.spec.resources.gpus == 1 and v.spec.task == "generate")
    argv = engine_cli_args(version.spec, version.served_model_name)
    settings = RuntimeSettings.from_env(runtime_env(version.spec))
    plan = plan_head(argv, settings, {}, executor="auto", on_gpu=True, exists=exists_only(MODEL_DIR))
    assert plan.executor == "mp"
    assert not plan.uses_ray
    assert not any(a.startswith("--distributed-executor-backend") for a in plan.vllm_argv)
    assert plan.vllm_argv[0] == f"--model={MODEL_DIR}"
    assert f"--served-model-name={version.served_model_name}" in plan.vllm_argv


def test_multinode_plan_uses_ray_and_waits_for_every_gpu() -> None:
    version = next(v for v in load_catalog() if v.spec.parallelism.nodes > 1)
    argv = engine_cli_args(version.spec, version.served_model_name)
    env = {"RAY_NODE_COUNT": str(version.spec.parallelism.nodes), "REQUEST_GPU_COUNT": str(version.spec.resources.gpus)}
    plan = plan_head(argv, RuntimeSettings(), env, executor="auto", on_gpu=True, exists=exists_only(MODEL_DIR))
    assert plan.uses_ray
    assert "--distributed-executor-backend=ray" in plan.vllm_argv
    assert plan.expected_gpus == version.spec.total_gpus
    assert plan.topology.nodes == version.spec.parallelism.nodes


def test_kserve_parallel_env_becomes_flags() -> None:
    env = {"TENSOR_PARALLEL_SIZE": "2", "PIPELINE_PARALLEL_SIZE": "2", "RAY_NODE_COUNT": "2"}
    plan = plan_head(["--model=/mnt/models"], RuntimeSettings(), env, executor="auto", on_gpu=True, exists=exists_only(MODEL_DIR))
    assert "--tensor-parallel-size=2" in plan.vllm_argv
    assert "--pipeline-parallel-size=2" in plan.vllm_argv


def test_forced_mp_is_passed_to_vllm_and_conflicts_are_refused() -> None:
    plan = plan_head(["--model=/m"], RuntimeSettings(), {}, executor="mp", on_gpu=True, exists=exists_only("/m"))
    assert plan.vllm_argv[-1] == "--distributed-executor-backend=mp"
    with pytest.raises(PlanError, match="contradicts"):
        plan_head(
            ["--model=/m", "--distributed-executor-backend=ray"],
            RuntimeSettings(),
            {},
            executor="mp",
            on_gpu=True,
            exists=exists_only("/m"),
        )
    with pytest.raises(PlanError, match="not supported here"):
        plan_head(
            ["--model=/m", "--distributed-executor-backend=uni"],
            RuntimeSettings(),
            {},
            executor="auto",
            on_gpu=True,
            exists=exists_only("/m"),
        )


def test_generation_defaults_become_vllm_arguments() -> None:
    settings = RuntimeSettings(
        generation=GenerationDefaults.model_validate(
            {"prompt_format": "Q: {instruction}\nA:", "stop": ["###"], "sampling": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64}}
        )
    )
    plan = plan_head(["--model=/m"], settings, {}, executor="auto", on_gpu=False, exists=exists_only("/m"))
    overrides = json.loads(flag_value(plan.vllm_argv, ("--override-generation-config",)) or "{}")
    assert overrides == {"temperature": 0.2, "top_p": 0.9}  # max_tokens goes into the request instead: vLLM caps with it
    assert "{instruction}" not in (flag_value(plan.vllm_argv, ("--chat-template",)) or "")
    assert "Q: " in (flag_value(plan.vllm_argv, ("--chat-template",)) or "")
    # a chat template given on the command line wins over the template's
    plan = plan_head(["--model=/m", "--chat-template=/t.jinja"], settings, {}, executor="auto", on_gpu=False, exists=exists_only("/m"))
    assert [a for a in plan.vllm_argv if a.startswith("--chat-template")] == ["--chat-template=/t.jinja"]


@pytest.mark.parametrize("task", ["embed", "score"])
def test_embedding_and_scoring_tasks_run_the_pooling_runner(task: Literal["embed", "score"]) -> None:
    plan = plan_head(["--model=/m"], RuntimeSettings(task=task), {}, executor="auto", on_gpu=False, exists=exists_only("/m"))
    assert "--runner=pooling" in plan.vllm_argv and not any(a.startswith("--convert") for a in plan.vllm_argv)
    assert not any(a.startswith(("--override-generation-config", "--chat-template")) for a in plan.vllm_argv)
