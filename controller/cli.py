"""`stokehold controller run`: the controller process (flags override `STOKEHOLD_*` variables).

The connection flags of the root command count too: `stokehold --nats-url URL --nats-user U
controller run …` connects as they say (`run --nats-url` wins over the root's). Everything it
writes is a JSON log line, fatal errors included: one object per line, never wrapped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from controller.config import ControllerConfig
from controller.logs import configure_logging
from events.options import NatsConnectError, NatsOptions
from events.stream import StreamConfigMismatch
from templates.schema import error_text

app = typer.Typer(help="The stokehold controller: JetStream events in, KServe InferenceServices out.", no_args_is_help=True)


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
    ctx: typer.Context,
    nats_url: Annotated[str | None, typer.Option(help="NATS server URL(s), comma-separated [env STOKEHOLD_NATS_URL]")] = None,
    sink: Annotated[str | None, typer.Option(help="where InferenceServices go: kube or dir [env STOKEHOLD_SINK]")] = None,
    dir: Annotated[Path | None, typer.Option("--dir", help="GitOps directory of the dir sink [env STOKEHOLD_DIR]")] = None,
    namespace: Annotated[
        list[str] | None,
        typer.Option(help="a namespace to serve (repeat; at least one: none is served unless listed) [env STOKEHOLD_NAMESPACES]"),
    ] = None,
    allow_trust_remote_code: Annotated[
        bool | None,
        typer.Option("--allow-trust-remote-code/--no-allow-trust-remote-code", help="let versions run their model repository's code"),
    ] = None,
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
        "allow_trust_remote_code": allow_trust_remote_code,
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
    log = logging.getLogger("controller")
    configure_logging("INFO")  # every line is JSON, the refusal of a bad configuration included
    try:
        flags = _root_connection(ctx) | {key: value for key, value in flags.items() if value is not None}  # run's own flags win
        config = build_config(flags)
        if gpu_product:
            products = {**config.render.gpu_products, **_pairs(gpu_product, "--gpu-product")}
            config = build_config(flags | {"render.gpu_products": products})
    except ValidationError as exc:
        log.error("invalid configuration: %s", error_text(exc))
        raise typer.Exit(2) from None
    configure_logging(config.log_level)
    log.info(
        "starting the controller",
        extra={
            "nats": config.nats.servers,  # without any user or password in the URL
            "sink": config.sink,
            "dir": str(config.dir) if config.dir is not None else None,
            "namespaces": ",".join(config.namespaces),
            "stream": config.stream,
            "leader_election": config.leader_election,
        },
    )
    try:
        api_client = _kubernetes_client(config)
        asyncio.run(_run(config, api_client))
    except StartupError as exc:
        log.error("cannot start the controller: %s", exc)
        raise typer.Exit(1) from None
    except (NatsConnectError, StreamConfigMismatch) as exc:
        log.error("cannot start the controller: %s", exc)
        raise typer.Exit(1) from None
    except StoppedBeforeConnecting:
        log.info("controller stopped before it connected to NATS")
    except Exception:
        log.exception("the controller stopped on an unexpected error")
        raise typer.Exit(1) from None


class StartupError(Exception):
    """The controller cannot start as configured; the message is one line meant for people."""


# the root command's connection flags (`stokehold --nats-url … controller run`) → NatsOptions fields
_ROOT_CONNECTION = ("url", "user", "password", "token", "creds", "tls_ca", "tls_cert", "tls_key", "inbox_prefix")


def _root_connection(ctx: typer.Context) -> dict[str, Any]:
    """The connection flags given to `stokehold` before `controller run` (they lose to `run`'s own --nats-url)."""
    given = getattr(ctx.find_root().obj, "connection", None) or {}
    return {f"nats.{key}": value for key, value in given.items() if key in _ROOT_CONNECTION and value is not None}


def _kubernetes_client(config: ControllerConfig) -> Any:
    """The Kubernetes API client the kube sink and leader election need (None for the dir sink alone), checked before NATS."""
    if config.sink != "kube" and not config.leader_election:
        return None
    from controller.app import build_api_client

    try:
        return build_api_client(config)
    except Exception as exc:  # kubernetes' ConfigException, an unreadable or malformed file: all mean the same to the user
        reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        problem = (
            f"cannot use the kubeconfig {config.kubeconfig} ({reason})"
            if config.kubeconfig is not None
            else f"no Kubernetes configuration: not running in a cluster, and ~/.kube/config ($KUBECONFIG) gives none ({reason})"
        )
        raise StartupError(f"{problem}; the kube sink needs one: give --kubeconfig FILE, or use --sink dir --dir DIR") from None


class StoppedBeforeConnecting(Exception):
    """SIGTERM or SIGINT came while the controller was still connecting to NATS: a clean stop."""


async def _run(config: ControllerConfig, api_client: Any) -> None:
    from controller.app import Controller

    controller = Controller(config, api_client=api_client)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        signalled = True
        controller.stop()  # also ends connection attempts after the one in progress (`give_up`)
        if controller.nc is None and main is not None:  # still connecting (perhaps retrying for minutes): stop that now
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):  # before connecting: a controller always obeys SIGTERM
        loop.add_signal_handler(sig, on_signal)
    try:
        await controller.run()
    except (asyncio.CancelledError, NatsConnectError):
        if signalled and controller.nc is None:
            raise StoppedBeforeConnecting from None
        raise


def main() -> None:
    app()
