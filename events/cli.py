"""The `stokehold` command (also the kubectl plugin `kubectl-stokehold`): the root options and
where every sub-command comes from.

    stokehold publish TEMPLATE.yaml...           validate, then publish template versions   events/commands.py
    stokehold deploy NAME[@VERSION] -n NS        the one-click deploy (latest unless @VERSION)
    stokehold undeploy | stop | resume NAME -n NS
    stokehold unpublish NAME@VERSION
    stokehold status                             the last known state of each deployment
    stokehold events tail | replay               follow status events / read the stream
    stokehold stream provision | info
    stokehold templates ...                      the catalog, offline                       templates/cli.py
    stokehold controller run                     the controller                             controller/cli.py
    stokehold models | runtime ...               the serving runtime                        runtimes/cli.py

NATS connection flags go before the command (`stokehold --nats-url … deploy …`, also
`stokehold --nats-url … controller run`) or come from `STOKEHOLD_NATS_*` variables. Every failure is one line on stderr and exit status 1.
The controller's and the runtime's apps are imported only when called, so that
`stokehold deploy` never pays for importing them, and are not offered where they are not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from events.adapters_cli import app as adapters_app
from events.commands import ContentMode, Session, commands_app, console, events_app, fail, stream_app
from events.types import SOURCE_DEFAULT
from templates.cli import app as templates_app

app = typer.Typer(
    name="stokehold",
    help="Event-driven serving of open LLMs: publish templates, deploy them, follow their status.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(commands_app)  # no name: its commands are the root's own (publish, deploy, …)
app.add_typer(templates_app, name="templates")
app.add_typer(events_app, name="events")
app.add_typer(stream_app, name="stream")
app.add_typer(adapters_app, name="adapters")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"stokehold {version('stokehold')}")
        except PackageNotFoundError:
            console.print("stokehold (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS server URLs, comma-separated [STOKEHOLD_NATS_URL]")] = None,
    nats_user: Annotated[str | None, typer.Option("--nats-user", help="[STOKEHOLD_NATS_USER]")] = None,
    nats_password: Annotated[str | None, typer.Option("--nats-password", help="[STOKEHOLD_NATS_PASSWORD]")] = None,
    nats_token: Annotated[str | None, typer.Option("--nats-token", help="[STOKEHOLD_NATS_TOKEN]")] = None,
    nats_creds: Annotated[Path | None, typer.Option("--nats-creds", help="NKEYS/JWT credentials file [STOKEHOLD_NATS_CREDS]")] = None,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="CA bundle [STOKEHOLD_NATS_TLS_CA]")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="client certificate [STOKEHOLD_NATS_TLS_CERT]")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="client key [STOKEHOLD_NATS_TLS_KEY]")] = None,
    inbox_prefix: Annotated[
        str | None, typer.Option("--nats-inbox-prefix", help="this publisher's reply inbox prefix [STOKEHOLD_NATS_INBOX_PREFIX]")
    ] = None,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", min=0.1, help="seconds per connection attempt")] = 5.0,
    connect_attempts: Annotated[int, typer.Option("--connect-attempts", min=1, help="attempts per server before giving up")] = 2,
    source: Annotated[str, typer.Option("--source", help="CloudEvents source of published events")] = SOURCE_DEFAULT,
    mode: Annotated[ContentMode, typer.Option("--mode", help="CloudEvents content mode for publishing")] = ContentMode.binary,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    flags: dict[str, Any] = {
        "url": nats_url,
        "user": nats_user,
        "password": nats_password,
        "token": nats_token,
        "creds": nats_creds,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "inbox_prefix": inbox_prefix,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    # A command line fails fast when NATS is not there; `controller run` takes only the connection flags and waits longer.
    ctx.obj = Session(connection=given, connect_timeout=connect_timeout, connect_attempts=connect_attempts, source=source, mode=mode)


# ------------------------------------------------------- other components' apps

OPTIONAL_APPS = (
    ("models", "runtimes.cli", "app", "Build and inspect models for the runtime."),
    ("runtime", "runtimes.cli", "serve_app", "Run the serving runtime (vLLM on Ray)."),
    ("controller", "controller.cli", "app", "Run the controller."),
)


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _delegate(command_name: str, module: str, attribute: str) -> Callable[[typer.Context], None]:
    def delegate(ctx: typer.Context) -> None:
        try:
            sub_app = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            fail(f"`stokehold {command_name}` is not available here: {exc}")
        command = typer.main.get_command(sub_app)
        # the root's Session goes along: `stokehold --nats-url … controller run` connects where the flags say
        command.main(args=ctx.args, prog_name=f"{ctx.find_root().info_name} {command_name}", standalone_mode=True, obj=ctx.find_root().obj)

    return delegate


def _mount_optional_apps(target: typer.Typer) -> None:
    for command_name, module, attribute, help_text in OPTIONAL_APPS:
        if _available(module):
            target.command(
                command_name,
                help=help_text,
                add_help_option=False,  # `--help` goes to the sub-app
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            )(_delegate(command_name, module, attribute))


components_app = typer.Typer()
_mount_optional_apps(components_app)
app.add_typer(components_app)  # listed after the event commands


def main() -> None:
    app()


__all__ = ["app", "main"]
