"""`stokehold controller run`: the controller process (flags override `STOKEHOLD_*` variables)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from controller.config import ControllerConfig
from controller.logs import configure_logging
from events.options import NatsConnectError, NatsOptions
from events.stream import StreamConfigMismatch
from templates.schema import errors_from

app = typer.Typer(help="The stokehold controller: JetStream events in, KServe InferenceServices out.", no_args_is_help=True)
err = Console(stderr=True)


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        pairs[key] = value
    return pairs


def build_config(flags: dict[str, Any]) -> ControllerConfig:
    """The environment's configuration with the given flags (dotted names, None = not given) on top."""
    data: dict[str, Any] = {}  # pydantic-settings merges these with STOKEHOLD_* (flags win, nested fields too)
    nats: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        if dotted.startswith("nats."):
            nats[dotted.removeprefix("nats.")] = value
        else:
            _set(data, dotted, value)
    # NatsOptions reads its own STOKEHOLD_NATS_* variables only when constructed, so construct it here
    return ControllerConfig(**data, nats=NatsOptions(**nats))


@app.callback()
def controller() -> None:
    """The stokehold controller."""


@app.command()
def run(
    nats_url: Annotated[str | None, typer.Option(help="NATS server URL(s), comma-separated [env STOKEHOLD_NATS_URL]")] = None,
    sink: Annotated[str | None, typer.Option(help="where InferenceServices go: kube or dir [env STOKEHOLD_SINK]")] = None,
    dir: Annotated[Path | None, typer.Option("--dir", help="GitOps directory of the dir sink [env STOKEHOLD_DIR]")] = None,
    namespace: Annotated[list[str] | None, typer.Option(help="a namespace to manage (repeat); default all")] = None,
    kubeconfig: Annotated[Path | None, typer.Option(help="kubeconfig file; default in-cluster, then ~/.kube/config")] = None,
    stream: Annotated[str | None, typer.Option(help="JetStream stream name")] = None,
    durable: Annotated[str | None, typer.Option(help="durable consumer name")] = None,
    runtime: Annotated[str | None, typer.Option(help="ClusterServingRuntime of single-node services")] = None,
    multinode_runtime: Annotated[str | None, typer.Option(help="ClusterServingRuntime of multi-node services")] = None,
    gpu_product: Annotated[list[str] | None, typer.Option(help="gpu_type=node-label-value (repeat), e.g. nvidia-l4=NVIDIA-L4")] = None,
    leader_election: Annotated[
        bool | None, typer.Option("--leader-election/--no-leader-election", help="Lease-based leader election")
    ] = None,
    lease_namespace: Annotated[str | None, typer.Option(help="namespace of the leader Lease")] = None,
    lease_name: Annotated[str | None, typer.Option(help="name of the leader Lease")] = None,
    identity: Annotated[str | None, typer.Option(help="this instance's identity in the Lease (default: host name)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="port of /healthz, /readyz and /metrics (0: any free port)")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = None,
) -> None:
    """Run the controller until SIGTERM or SIGINT."""
    flags: dict[str, Any] = {
        "nats.url": nats_url,
        "sink": sink,
        "dir": dir,
        "namespaces": namespace or None,
        "kubeconfig": kubeconfig,
        "stream": stream,
        "durable": durable,
        "render.runtime": runtime,
        "render.multinode_runtime": multinode_runtime,
        "leader_election": leader_election,
        "lease_namespace": lease_namespace,
        "lease_name": lease_name,
        "identity": identity,
        "metrics_port": metrics_port,
        "log_level": log_level.upper() if log_level else None,
    }
    try:
        config = build_config(flags)
        if gpu_product:
            products = {**config.render.gpu_products, **_pairs(gpu_product, "--gpu-product")}
            config = build_config(flags | {"render.gpu_products": products})
    except ValidationError as exc:
        for location, message in errors_from(exc):
            err.print(f"[red]invalid configuration[/red] {location or '<root>'}: {message}")
        raise typer.Exit(2) from None
    configure_logging(config.log_level)
    try:
        asyncio.run(_run(config))
    except (NatsConnectError, StreamConfigMismatch) as exc:
        err.print(f"[red]cannot start the controller:[/red] {exc}")
        raise typer.Exit(1) from None
    except Exception:
        logging.getLogger("controller").exception("the controller stopped on an unexpected error")
        raise typer.Exit(1) from None


async def _run(config: ControllerConfig) -> None:
    from controller.app import Controller
    from controller.memory import freeze_long_lived, tune_garbage_collection

    tune_garbage_collection()
    controller = Controller(config, after_rebuild=freeze_long_lived)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    await controller.run()


def main() -> None:
    app()
