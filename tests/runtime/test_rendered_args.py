"""What the controller renders reaches vLLM: every catalog version's InferenceService, as KServe starts it.

KServe runs the ClusterServingRuntime's command with its args followed by the predictor's `model.args`,
and the runtime's env plus the predictor's; multi-node heads also get RAY_NODE_COUNT and friends. Those go
through the launcher's own option split, its settings and plan, and then vLLM's real argument parser
(no engine is started): the engine settings and generation defaults must arrive as the version says.
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest

from controller.render import render_inference_service
from controller.render_cache import cache_dir, cache_plan
from controller.render_config import RenderConfig
from controller.state import Deployment
from runtimes.defaults import RequestDefaults, chat_template_for, generation_overrides
from runtimes.engine_args import MODEL_DIR
from runtimes.launcher import _parse_vllm_args, _parser
from runtimes.plan import ENV_GPUS, ENV_NODES, ENV_PIPELINE, ENV_TENSOR, LaunchPlan, plan_head
from runtimes.settings import RuntimeSettings
from templates.catalog import load_catalog
from templates.schema import ModelTemplateVersion
from tests.manifests.kustomize import MANIFESTS, one, render_dir

CONFIG = RenderConfig()
# a tuning flag of each kind through `vllm_args`: number, switch on, switch off
TUNING = {"max_num_batched_tokens": 2048, "enable_chunked_prefill": False, "async_scheduling": True}


def with_tuning(version: ModelTemplateVersion) -> ModelTemplateVersion:
    document = version.model_dump(mode="json")
    document["spec"]["engine"]["vllm_args"] = TUNING
    return ModelTemplateVersion.model_validate(document)


CATALOG = load_catalog()
VERSIONS = [*CATALOG, with_tuning(next(v for v in CATALOG if v.name == "tiny-demo"))]


@pytest.fixture(scope="module")
def runtimes() -> list[dict[str, Any]]:
    return render_dir(MANIFESTS / "runtimes")


def kserve_launch(version: ModelTemplateVersion, runtimes: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The argv after `python3 -m runtimes` and the literal env of the head container, as KServe composes them."""
    deployment = Deployment(template=version.name, namespace="default", name=version.name, version=None)
    predictor = render_inference_service(version, deployment, CONFIG)["spec"]["predictor"]
    model = predictor["model"]
    (container,) = one(runtimes, "ClusterServingRuntime", model["runtime"])["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python3", "-m", "runtimes"]
    argv = [*command[3:], *container.get("args", []), *model["args"]]
    env = {e["name"]: e["value"] for e in [*container.get("env", []), *model.get("env", [])] if "value" in e}
    if "workerSpec" in predictor:  # KServe's multi-node contract
        worker = predictor["workerSpec"]
        env |= {
            ENV_NODES: str(worker["pipelineParallelSize"]),
            ENV_PIPELINE: str(worker["pipelineParallelSize"]),
            ENV_TENSOR: str(worker["tensorParallelSize"]),
            ENV_GPUS: str(model["resources"]["limits"].get(CONFIG.gpu_resource, 0)),
        }
    return argv, env


def launch(version: ModelTemplateVersion, runtimes: list[dict[str, Any]]) -> tuple[LaunchPlan, RuntimeSettings, Any]:
    argv, env = kserve_launch(version, runtimes)
    options, rest = _parser().parse_known_args(argv)
    assert options.role == "head"
    settings = RuntimeSettings.from_env(env)
    plan = plan_head(rest, settings, env, executor=options.executor, on_gpu=version.spec.resources.gpus > 0, exists=lambda _: True)
    with mock.patch.dict(os.environ):  # vLLM's CLI setup writes to the environment
        return plan, settings, _parse_vllm_args(plan.vllm_argv)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name + ("+tuning" if v.spec.engine.vllm_args else ""))
def test_rendered_service_reaches_the_engine(version: ModelTemplateVersion, runtimes: list[dict[str, Any]]) -> None:
    spec, engine = version.spec, version.spec.engine
    plan, settings, args = launch(version, runtimes)

    if cache_plan(version, CONFIG).mode == "job":  # read from the model-cache volume, filled on publish
        assert args.model == cache_dir(version, CONFIG)
    else:
        assert args.model == (spec.source if spec.source_scheme == "local" else MODEL_DIR)
    assert args.served_model_name == [version.served_model_name]
    assert args.port == 8080
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (spec.parallelism.tensor, spec.parallelism.pipeline)
    assert args.max_model_len == engine.max_model_len
    assert args.dtype == engine.dtype
    assert args.quantization == engine.quantization
    assert args.max_num_seqs == engine.max_num_seqs
    assert args.enforce_eager is engine.enforce_eager
    assert args.trust_remote_code is engine.trust_remote_code
    assert args.enable_prefix_caching == engine.enable_prefix_caching
    if spec.resources.gpus:
        assert args.gpu_memory_utilization == engine.gpu_memory_utilization
    for key, value in engine.vllm_args.items():
        assert getattr(args, key) == value, key

    uses_ray = spec.resources.gpus > 0 and (spec.parallelism.tensor > 1 or spec.parallelism.nodes > 1)
    assert plan.uses_ray is uses_ray
    assert args.distributed_executor_backend == ("ray" if uses_ray else None)
    if spec.parallelism.nodes > 1:
        assert plan.topology.nodes == spec.parallelism.nodes and plan.expected_gpus == spec.total_gpus

    assert settings.task == spec.task
    if spec.task != "generate":
        assert (args.runner, args.convert) == ("pooling", "auto")  # a cross-encoder is served as the classifier it is
        assert args.override_generation_config == {} and args.chat_template is None
        return
    generation = spec.generation
    # sampling defaults: vLLM applies them where a request leaves them out; stop and max_tokens: the gate
    assert args.override_generation_config == generation_overrides(generation.sampling)
    assert args.chat_template == chat_template_for(generation)
    defaults = RequestDefaults.from_generation(settings.generation)
    assert (list(defaults.stop), defaults.max_tokens) == (generation.stop, generation.sampling.max_tokens)
