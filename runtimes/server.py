"""Serve vLLM's own OpenAI app behind the runtime gate, with readiness, metrics and a SIGTERM drain.

The engine, the FastAPI app and its state come from vLLM's launcher functions unchanged;
this module only adds `/ready`, OpenAI-style bodies for routing errors, the gate, and its
own serve loop so that SIGTERM drains in-flight requests before the engine stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from argparse import Namespace
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtimes.api_keys import ApiKeys
from runtimes.defaults import RequestDefaults
from runtimes.gate import RuntimeGate, served_paths
from runtimes.grammar import guard_structured_outputs
from runtimes.metrics import RuntimeMetrics
from runtimes.readiness import ReadinessProbe, engine_probe
from runtimes.settings import RuntimeSettings
from runtimes.start_phases import StartClock, StartTracker

logger = logging.getLogger("stokehold.runtime")
# after the drain, uvicorn only closes idle keep-alive connections
SHUTDOWN_SECONDS_AFTER_DRAIN = 2


def runtime_router(gate: RuntimeGate, probe: ReadinessProbe) -> APIRouter:
    router = APIRouter()

    @router.get("/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        if gate.draining:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        result = await probe.check()
        return JSONResponse({"ready": result.ready, "reason": result.reason}, status_code=200 if result.ready else 503)

    return router


def install_routes(app: FastAPI, gate: RuntimeGate, probe: ReadinessProbe) -> None:
    from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler

    app.include_router(runtime_router(gate, probe))
    # vLLM handles FastAPI's HTTPException; routing 404/405 and body-parse errors raise Starlette's
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)  # type: ignore[arg-type]
    app.middleware_stack = None  # vLLM's SageMaker bootstrap built it already: rebuild with the handler


async def drain(server: uvicorn.Server, gate: RuntimeGate, grace_seconds: float) -> None:
    gate.start_draining()
    logger.info("SIGTERM: refusing new requests, waiting up to %.0f s for %d in flight", grace_seconds, gate.in_flight)
    try:
        async with asyncio.timeout(grace_seconds):
            await gate.wait_idle()
        logger.info("drained: no request in flight; stopping")
    except TimeoutError:
        logger.warning("%d requests still in flight after %.0f s; stopping anyway", gate.in_flight, grace_seconds)
        server.force_exit = True
    server.should_exit = True


def _uvicorn_config(app: Any, args: Namespace) -> uvicorn.Config:
    import vllm.envs as envs
    from vllm.entrypoints.launchers.utils.server_utils import get_uvicorn_log_config

    kwargs: dict[str, Any] = {}
    if (log_config := get_uvicorn_log_config(args)) is not None:
        kwargs["log_config"] = log_config
    return uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS_AFTER_DRAIN,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs,
        ssl_ciphers=args.ssl_ciphers,
        h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
        **kwargs,
    )


async def _build(
    engine_client: Any,
    args: Namespace,
    settings: RuntimeSettings,
    api_keys: ApiKeys | None,
    metrics: RuntimeMetrics,
    on_first_ready: Callable[[], None] | None = None,
) -> tuple[FastAPI, RuntimeGate]:
    """vLLM's app and state, unchanged, behind the gate, plus /ready."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app

    guard_structured_outputs(engine_client)
    supported_tasks = await engine_client.get_supported_tasks()
    app = build_app(args, supported_tasks, engine_client.model_config)
    await init_app_state(engine_client, app.state, args, supported_tasks)
    gate = RuntimeGate(
        app,
        metrics=metrics,
        max_concurrency=settings.max_concurrency,
        api_keys=api_keys,
        defaults=RequestDefaults.from_generation(settings.generation),
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
        served=served_paths(settings.task),
    )
    probe = ReadinessProbe(
        engine_probe(engine_client, settings.task),
        metrics=metrics,
        cache_seconds=settings.ready_cache_seconds,
        on_first_ready=on_first_ready,
    )
    install_routes(app, gate, probe)
    return app, gate


async def _serve_until_stopped(
    server: uvicorn.Server, gate: RuntimeGate, sock: socket.socket, engine_client: Any, drain_seconds: float
) -> None:
    """SIGTERM/SIGINT start the drain, a second one stops at once; the watchdog stops on engine death."""
    from vllm.entrypoints.launchers.launcher import watchdog_loop

    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if draining:
            server.force_exit = server.should_exit = True
            return
        draining.append(loop.create_task(drain(server, gate, drain_seconds)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    watchdog = loop.create_task(watchdog_loop(server, engine_client))
    try:
        await server.serve(sockets=[sock])
    finally:
        watchdog.cancel()
        for task in draining:
            task.cancel()


async def _follow_adapters(args: Namespace, app: FastAPI) -> tuple[Any, asyncio.Task[None]] | None:
    """With LoRA on and a deployment named, catch up with its adapters before serving (runtimes.adapters)."""
    import os

    from events.adapters import Target
    from events.options import NatsOptions
    from runtimes.adapters import AdapterFollower, AdapterSettings, VllmEngine, follow, lora_limits

    adapter_settings = AdapterSettings.from_env(os.environ)
    limits = lora_limits(args)
    if adapter_settings is None or limits is None:
        return None
    served = args.served_model_name[0] if args.served_model_name else args.model
    target = Target(adapter_settings.template, adapter_settings.version, limits, served)

    async def no_publish(*_: object) -> None:
        return None

    follower = AdapterFollower(adapter_settings, target, VllmEngine(app.state.openai_serving_models), no_publish)
    return await follow(follower, NatsOptions())


async def _start_engine(stack: AsyncExitStack, args: Namespace, start: StartTracker) -> Any:
    """vLLM's engine client; a start that fails on the kept compile cache is retried once without it."""
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client

    start.mark("imports")
    try:
        return await stack.enter_async_context(build_async_engine_client(args))
    except Exception as exc:
        if not start.engine_failed():
            start.engine_gone()
            raise
        logger.warning("the engine failed to start on the kept compile cache (%s): set it aside, compiling again", exc)
    try:
        return await stack.enter_async_context(build_async_engine_client(args))
    except BaseException:
        start.engine_gone()
        raise


async def serve(
    args: Namespace, settings: RuntimeSettings, api_keys: ApiKeys | None, *, started_at: float, start: StartTracker | None = None
) -> int:
    """Load the engine, serve until SIGTERM/SIGINT, drain, stop; the exit code (1: the engine died).
    `api_keys`: None serves without a key. `started_at`: process start (epoch seconds). `start`: the start's
    phases, compile cache and ready report (default: phases only)."""
    from vllm.entrypoints.launchers.launcher import NoSignalServer, setup_server

    start = start or StartTracker(StartClock(started_at))
    _, sock = setup_server(args, reuse_port=False)
    metrics = RuntimeMetrics()
    start.attach(metrics)
    try:
        async with AsyncExitStack() as stack:
            engine_client = await _start_engine(stack, args, start)
            start.engine_ready()
            app, gate = await _build(engine_client, args, settings, api_keys, metrics, on_first_ready=start.first_generation)
            server = NoSignalServer(_uvicorn_config(gate, args))
            app.state.server = server  # vLLM's error handlers stop it when the engine dies
            following = await _follow_adapters(args, app)
            cold_start = time.time() - start.clock.started_at
            metrics.cold_start.set(cold_start)
            logger.info("serving %s on %s:%s (cold start %.1f s)", args.served_model_name, args.host, args.port, cold_start)
            try:
                await _serve_until_stopped(server, gate, sock, engine_client, settings.drain_seconds)
            finally:
                if following is not None:
                    following[1].cancel()
                    await following[0].close()
            if engine_client.errored:  # let Kubernetes restart the pod
                logger.error("the engine died; exiting with 1")
                return 1
            return 0
    finally:
        sock.close()
