"""The runtime's entrypoint: `head` serves the model, `worker` joins the head's Ray cluster.

    python -m runtimes head [--executor auto|ray|mp] [vLLM arguments...]
    python -m runtimes worker [--head-address HOST] [--ray-port 6379]

The head's own options come first; every other argument goes to vLLM's argument parser
(the controller renders them with `runtimes.engine_args.engine_cli_args`). Nothing heavy is
imported before it is needed: Ray only when the plan uses it, vLLM only to serve.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

from runtimes.api_keys import ApiKeyFileError, load_api_keys
from runtimes.compile_cache import CompileKey, KeptCompileCache, device_name, vllm_version
from runtimes.engine_args import ENV_COMPILE_CACHE, ENV_CONTENT_HASH, ENV_MODEL_SOURCE, ENV_TEMPLATE, ENV_TEMPLATE_VERSION
from runtimes.model_cache import CacheFillError, run_cache_fill
from runtimes.model_cache import add_arguments as add_cache_fill_arguments
from runtimes.plan import ENV_GPUS, ENV_HEAD_SVC, MODEL_FLAGS, LaunchPlan, PlanError, flag_value, plan_head, resolve_model
from runtimes.ray_cluster import RayClusterError
from runtimes.settings import RuntimeConfigError, RuntimeSettings
from runtimes.start_phases import ReplicaRef, StartClock, StartTracker, logging_config
from runtimes.status import StatusBus

logger = logging.getLogger("stokehold.runtime")

DEFAULT_PORT = 8080  # KServe's container port
DEFAULT_RAY_WAIT_SECONDS = 600.0
# vLLM on the CPU sizes its KV cache from the host's memory, not the pod's limit: give it a fixed size
CPU_KV_CACHE_GIB = "1"
ENV_CPU_KV_CACHE = "VLLM_CPU_KVCACHE_SPACE"
KV_CACHE_FLAGS = ("--kv-cache-memory-bytes",)


class ModelCacheError(RuntimeError):
    """The head could not fill the model cache (the download failed): exit 1, Kubernetes restarts the pod."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stokehold-runtime", description=__doc__.splitlines()[0], allow_abbrev=False)
    roles = parser.add_subparsers(dest="role", required=True)
    head = roles.add_parser("head", help="serve the model (vLLM's OpenAI server); remaining arguments go to vLLM", allow_abbrev=False)
    head.add_argument(
        "--executor", choices=("auto", "ray", "mp"), default="auto", help="auto: Ray only for tensor parallelism or several nodes"
    )
    head.add_argument("--ray-port", type=int, default=6379, help="the Ray head's GCS port")
    head.add_argument(
        "--ray-node-ip", default=os.environ.get("POD_IP"), help="this node's address for Ray (default: $POD_IP or Ray's choice)"
    )
    head.add_argument("--ray-wait-timeout", type=float, default=DEFAULT_RAY_WAIT_SECONDS, help="seconds to wait for all nodes and GPUs")
    fill = roles.add_parser("cache-fill", help="fill a version's model cache folder once (the pre-download Job)", allow_abbrev=False)
    add_cache_fill_arguments(fill)
    worker = roles.add_parser("worker", help="join the head's Ray cluster and block", allow_abbrev=False)
    worker.add_argument("--head-address", default=os.environ.get(ENV_HEAD_SVC), help="the head's host (default: $HEAD_SVC)")
    worker.add_argument("--ray-port", type=int, default=6379)
    worker.add_argument("--ray-node-ip", default=os.environ.get("POD_IP"))
    worker.add_argument("--wait-timeout", type=float, default=DEFAULT_RAY_WAIT_SECONDS, help="seconds to wait for the head")
    return parser


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [stokehold] %(message)s", datefmt="%m-%d %H:%M:%S"))
    root = logging.getLogger("stokehold")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def _process_started_at() -> float:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or /proc unreadable: the launcher's start is close enough
        return time.time() - time.process_time()


def _on_gpu() -> bool:
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()


def _parse_vllm_args(argv: Sequence[str], phase_sink: Path | None = None) -> argparse.Namespace:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()  # type: ignore[no-untyped-call]
    parser = make_arg_parser(FlexibleArgumentParser(prog="stokehold runtime head", description="vLLM arguments"))  # type: ignore[no-untyped-call]
    args: argparse.Namespace = parser.parse_args(list(argv))
    if phase_sink is not None:
        _add_phase_logging(args, phase_sink)
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    return args


def _add_phase_logging(args: argparse.Namespace, sink: Path) -> None:
    """vLLM's own logging configuration plus the start-phase handler, through its `--log-config-file` hook
    (its engine and worker processes apply it too); a configuration the user gave is left alone."""
    import vllm.envs as envs
    from vllm.config.logging import LoggingConfig
    from vllm.logger import DEFAULT_LOGGING_CONFIG

    config = getattr(args, "logging_config", None) or LoggingConfig()
    if getattr(args, "log_config_file", None) or config.pylogging_config_file or not config.configure_logging or config.formatter != "text":
        return
    level = getattr(args, "log_level", None) or config.log_level
    dict_config = logging_config(DEFAULT_LOGGING_CONFIG, sink, str(level).upper())
    for handler in dict_config["handlers"].values():
        if handler.get("class") == "logging.StreamHandler":
            handler["stream"] = envs.VLLM_LOGGING_STREAM
    path = sink.with_suffix(".logging.json")
    path.write_text(json.dumps(dict_config))
    args.log_config_file = str(path)


def build_plan(vllm_argv: Sequence[str], settings: RuntimeSettings, executor: str, on_gpu: bool) -> LaunchPlan:
    argv = list(vllm_argv)
    if flag_value(argv, ("--port",)) is None:
        argv.append(f"--port={DEFAULT_PORT}")
    return plan_head(argv, settings, os.environ, executor=executor, on_gpu=on_gpu, exists=os.path.exists)  # type: ignore[arg-type]


def cpu_kv_cache_env(vllm_argv: Sequence[str], env: Mapping[str, str], on_gpu: bool) -> dict[str, str]:
    """A fixed KV cache size on the CPU unless one is given (flag or variable)."""
    if on_gpu or ENV_CPU_KV_CACHE in env or flag_value(vllm_argv, KV_CACHE_FLAGS) is not None:
        return {}
    return {ENV_CPU_KV_CACHE: CPU_KV_CACHE_GIB}


def _interrupt_start(*_: object) -> None:
    raise KeyboardInterrupt("SIGTERM while starting")


def fill_model_cache(vllm_argv: Sequence[str], env: Mapping[str, str], clock: StartClock) -> None:
    """A cached version whose folder is not complete yet (the pre-download Job has not run or not finished):
    fill it now, with the same code and lock as the Job. Nothing to do without STOKEHOLD_MODEL_SOURCE."""
    source = env.get(ENV_MODEL_SOURCE, "").strip()
    model = flag_value(vllm_argv, MODEL_FLAGS)
    if not source or model is None:
        return
    content_hash = env.get(ENV_CONTENT_HASH, "").strip()
    template = env.get(ENV_TEMPLATE, "").strip()
    version = env.get(ENV_TEMPLATE_VERSION, "").strip()
    if not content_hash or not template or not version.isdigit():
        raise PlanError(f"${ENV_MODEL_SOURCE} needs ${ENV_CONTENT_HASH}, ${ENV_TEMPLATE} and a numeric ${ENV_TEMPLATE_VERSION}")
    from runtimes.model_cache import CacheRefused, fill_with_status, is_cached

    if is_cached(Path(model), content_hash):
        return
    logger.info("model cache %s is not complete: filling it from %s", model, source)
    try:
        fill_with_status(source, Path(model), content_hash=content_hash, template=template, version=int(version), env=env)
    except CacheRefused as exc:
        raise PlanError(str(exc)) from None
    clock.mark("download")


def compile_cache_for(plan: LaunchPlan, env: Mapping[str, str], on_gpu: bool) -> KeptCompileCache | None:
    """The kept compile cache for this version and layout, when the controller mounted one."""
    root = env.get(ENV_COMPILE_CACHE, "").strip()
    content_hash = env.get(ENV_CONTENT_HASH, "").strip()
    if not root or not content_hash:
        return None
    key = CompileKey(
        content_hash=content_hash,
        vllm_version=vllm_version(),
        device=device_name(on_gpu),
        tensor_parallel=plan.topology.tensor,
        pipeline_parallel=plan.topology.pipeline,
    )
    cache = KeptCompileCache.open(Path(root), key, env, on_gpu)
    logger.info("compile cache %s (%s)", cache.lease.folder, cache.lease.found.value)
    return cache


def run_head(options: argparse.Namespace, vllm_argv: Sequence[str]) -> int:
    # what the user set, before importing vLLM: that import fills in TORCHINDUCTOR_CACHE_DIR (torch's /tmp default)
    user_env = dict(os.environ)
    started_at = _process_started_at()
    clock = StartClock(started_at)
    settings = RuntimeSettings.from_env(os.environ)
    api_keys = load_api_keys(settings.api_key.get_secret_value() if settings.api_key else None, settings.api_key_file)
    try:
        fill_model_cache(vllm_argv, os.environ, clock)
    except (CacheFillError, OSError) as exc:
        raise ModelCacheError(f"cannot fill the model cache: {exc}") from None
    resolve_model(flag_value(vllm_argv, MODEL_FLAGS), os.path.exists)  # fail fast, before vLLM is imported
    on_gpu = _on_gpu()
    plan = build_plan(vllm_argv, settings, options.executor, on_gpu)
    os.environ.update(cpu_kv_cache_env(plan.vllm_argv, os.environ, on_gpu))
    compile_cache = compile_cache_for(plan, user_env, on_gpu)
    if compile_cache is not None:
        os.environ.update(compile_cache.env())
    with ExitStack() as stack:
        # the engine and worker processes write their phases here; removed once they are gone
        phase_sink = (
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stokehold-start-", ignore_cleanup_errors=True)))
            / "engine-phases.jsonl"
        )
        start = StartTracker(
            clock,
            sink=phase_sink,
            compile_cache=compile_cache,
            replica=ReplicaRef.from_env(os.environ, socket.gethostname()),
            bus=StatusBus.from_env(os.environ),
        )
        logger.info(
            "model %s, task %s, executor %s (tensor %d x pipeline %d on %d node(s))",
            plan.model,
            settings.task,
            plan.executor,
            plan.topology.tensor,
            plan.topology.pipeline,
            plan.topology.nodes,
        )
        args = _parse_vllm_args(plan.vllm_argv, phase_sink)
        # nothing is in flight before the server runs (it installs the drain): stop at once, Ray head included
        signal.signal(signal.SIGTERM, _interrupt_start)
        if plan.uses_ray:
            from runtimes.ray_cluster import RayHead, disconnect, wait_for_cluster

            head = stack.enter_context(RayHead(options.ray_port, node_ip=options.ray_node_ip, num_gpus=plan.topology.gpus_per_node))
            os.environ["RAY_ADDRESS"] = head.address
            stack.callback(disconnect)  # runs before the head stops
            wait_for_cluster(head.address, nodes=plan.topology.nodes, gpus=plan.expected_gpus, timeout=options.ray_wait_timeout)
        import uvloop

        from runtimes.server import serve

        return uvloop.run(serve(args, settings, api_keys, started_at=started_at, start=start))


def run_worker(options: argparse.Namespace) -> int:
    from runtimes.ray_cluster import run_worker as join

    if not options.head_address:
        raise PlanError(f"the worker needs the head's address: --head-address or ${ENV_HEAD_SVC}")
    gpus = os.environ.get(ENV_GPUS)
    join(
        f"{options.head_address}:{options.ray_port}",
        timeout=options.wait_timeout,
        node_ip=options.ray_node_ip,
        num_gpus=int(gpus) if gpus else None,
    )
    return 0  # not reached: the worker becomes `ray start --block`


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    options, rest = parser.parse_known_args(argv)
    if options.role in ("worker", "cache-fill") and rest:
        parser.error(f"unknown {options.role} arguments: {' '.join(rest)}")
    if options.role == "cache-fill":
        return run_cache_fill(options, os.environ)
    try:
        if options.role == "worker":
            return run_worker(options)
        return run_head(options, rest)
    except (PlanError, RuntimeConfigError, ApiKeyFileError) as exc:
        print(f"stokehold runtime: error: {exc}", file=sys.stderr)
        return 2
    except (RayClusterError, ModelCacheError) as exc:
        print(f"stokehold runtime: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logger.info("stopped while starting")
        return 0
