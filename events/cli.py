"""The `stokehold` command (also the kubectl plugin `kubectl-stokehold`).

    stokehold publish TEMPLATE.yaml...           validate, then publish template versions
    stokehold deploy NAME[@VERSION] -n NS        the one-click deploy (latest version unless @VERSION)
    stokehold undeploy | stop | resume NAME -n NS
    stokehold unpublish NAME@VERSION
    stokehold events tail | replay               follow status events / read the stream from the start
    stokehold stream provision | info
    stokehold status                             the last known state of each deployment
    stokehold templates ...                      the catalog, offline (templates/cli.py)
    stokehold models | runtime | controller ...  mounted when those components are installed

NATS connection flags go before the command (`stokehold --nats-url … deploy …`) or come
from `STOKEHOLD_NATS_*` variables. Every failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import importlib.util
import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from events.codec import EventDataError, validate_data
from events.display import event_line, event_record, status_table
from events.options import NatsConnectError, NatsOptions
from events.publisher import Publisher, PublishError, PublishResult
from events.reader import ReceivedEvent, follow, replay, status_subjects
from events.status_view import summarize
from events.stream import ProvisionOutcome, StreamConfigMismatch, StreamSettings, provision_stream
from events.types import SOURCE_DEFAULT, STREAM_NAME, TYPE_PREFIX, EventKind, status_filter
from templates.catalog import load_catalog, load_file
from templates.cli import app as templates_app
from templates.schema import ModelTemplateVersion, TemplateValidationError, errors_from

T = TypeVar("T")

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="stokehold",
    help="Event-driven serving of open LLMs: publish templates, deploy them, follow their status.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
events_app = typer.Typer(help="Follow or replay stokehold events.", no_args_is_help=True)
stream_app = typer.Typer(help="The JetStream stream that stores the events.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
app.add_typer(events_app, name="events")
app.add_typer(stream_app, name="stream")


class ContentMode(enum.StrEnum):
    binary = "binary"
    structured = "structured"


@dataclass
class Session:
    """What the root options say; the NATS options are read only by commands that connect."""

    flags: dict[str, Any] = field(default_factory=dict)
    source: str = SOURCE_DEFAULT
    mode: ContentMode = ContentMode.binary

    def nats_options(self) -> NatsOptions:
        try:
            return NatsOptions(**self.flags)
        except ValidationError as exc:
            fail("invalid NATS options: " + "; ".join(f"{path}: {message}" for path, message in errors_from(exc)))

    async def publisher(self) -> Publisher:
        return await Publisher.connect(self.nats_options(), source=self.source, mode=self.mode.value)


def fail(message: str, code: int = 1) -> NoReturn:
    error_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one command's async part; known failures become one line on stderr."""
    try:
        return asyncio.run(coroutine)
    except (NatsConnectError, PublishError, StreamConfigMismatch, EventDataError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def session_of(ctx: typer.Context) -> Session:
    root = ctx.find_root()
    if not isinstance(root.obj, Session):
        root.obj = Session()
    return root.obj


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
    flags = {name: value for name, value in flags.items() if value is not None}
    # A command line should fail fast when NATS is not there; the controller waits longer.
    flags |= {"connect_timeout": connect_timeout, "max_reconnect_attempts": connect_attempts, "reconnect_time_wait": 0.5}
    ctx.obj = Session(flags=flags, source=source, mode=mode)


# ------------------------------------------------------------------ publishing


def _version_event_id(version: ModelTemplateVersion) -> str:
    # The same document published twice is the same event: JetStream keeps one copy.
    return f"{version.name}.v{version.version}.{version.content_hash.removeprefix('sha256:')[:32]}"


@app.command()
def publish(
    ctx: typer.Context,
    files: Annotated[list[Path] | None, typer.Argument(help="template version YAML files", show_default=False)] = None,
    catalog: Annotated[bool, typer.Option("--catalog", help="publish every template of the built-in catalog")] = False,
) -> None:
    """Validate template versions, then publish each as template.version.published."""
    versions: list[ModelTemplateVersion] = []
    problems: list[str] = []
    for path in files or []:
        try:
            versions.append(load_file(path))
        except TemplateValidationError as exc:
            problems += [f"{path}: {location or '<root>'}: {message}" for location, message in exc.errors]
    if catalog:
        try:
            versions += load_catalog()
        except TemplateValidationError as exc:
            fail(str(exc))
    if problems:
        for line in problems:
            error_console.print(f"[bold red]invalid:[/] {line}", soft_wrap=True)
        fail(f"nothing was published: {len(problems)} error(s) in the template files")
    if not versions:
        fail("give template files to publish, or --catalog")

    async def send() -> list[PublishResult]:
        async with await session_of(ctx).publisher() as publisher:
            return [await publisher.publish_version(v, event_id=_version_event_id(v)) for v in versions]

    results = run(send())
    table = Table("TEMPLATE", "VERSION", "CONTENT HASH", "STREAM SEQ", "STORED", title="published", title_justify="left")
    for version, result in zip(versions, results, strict=True):
        stored = "already (duplicate)" if result.duplicate else "yes"
        table.add_row(version.name, str(version.version), version.content_hash[:23] + "…", str(result.sequence), stored)
    console.print(table)


def _parse_ref(ref: str, *, need_version: bool = False) -> tuple[str, int | None]:
    name, _, number = ref.partition("@")
    if not name:
        fail(f"{ref!r} names no template")
    if not number:
        if need_version:
            fail(f"{ref!r} names no version: use NAME@VERSION")
        return name, None
    if not number.isdigit() or int(number) < 1:
        fail(f"version {number!r} in {ref!r} is not a number from 1")
    return name, int(number)


def _publish_one(ctx: typer.Context, kind: EventKind, data: dict[str, Any]) -> PublishResult:
    try:
        model = validate_data(kind, data)  # before connecting: a typo never waits for the network
    except EventDataError as exc:
        fail(str(exc))

    async def send() -> PublishResult:
        async with await session_of(ctx).publisher() as publisher:
            return await publisher.publish(kind, model)

    return run(send())


def _report(result: PublishResult, what: str) -> None:
    note = " (duplicate: already stored)" if result.duplicate else ""
    console.print(f"{what}: {result.kind.ce_type} {result.event_id} → {result.subject} #{result.sequence}{note}", soft_wrap=True)


Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Kubernetes namespace")]
DeploymentName = Annotated[str | None, typer.Option("--name", help="deployment name (default: the template name)")]


@app.command()
def deploy(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="template, at a version or (default) its latest")],
    namespace: Namespace = "default",
    name: DeploymentName = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas")] = None,
    target_concurrency: Annotated[int | None, typer.Option("--target-concurrency")] = None,
    keep_hot: Annotated[str | None, typer.Option("--keep-hot", help="idle time before scaling to zero, e.g. 10m, 1h")] = None,
    priority: Annotated[int | None, typer.Option("--priority", help="2 or more: always hot")] = None,
) -> None:
    """Deploy a template (one click): request an InferenceService for it."""
    template, version = _parse_ref(ref)
    overrides = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_concurrency": target_concurrency,
        "keep_hot": keep_hot,
        "priority": priority,
    }
    data = {
        "template": template,
        "version": version,
        "namespace": namespace,
        "name": name,
        "overrides": {key: value for key, value in overrides.items() if value is not None},
    }
    result = _publish_one(ctx, EventKind.DEPLOYMENT_REQUESTED, data)
    _report(result, f"requested {namespace}/{name or template} ({template}@{version or 'latest'})")


def _deployment_command(kind: EventKind, verb: str, doc: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        template: Annotated[str, typer.Argument(metavar="NAME", help="the template of the deployment")],
        namespace: Namespace = "default",
        name: DeploymentName = None,
    ) -> None:
        result = _publish_one(ctx, kind, {"template": template, "namespace": namespace, "name": name})
        _report(result, f"{verb} {namespace}/{name or template}")

    command.__doc__ = doc
    return command


app.command("undeploy")(_deployment_command(EventKind.DEPLOYMENT_DELETED, "undeploy requested for", "Delete a deployment."))
app.command("stop")(_deployment_command(EventKind.DEPLOYMENT_STOPPED, "stop requested for", "Stop serving without deleting."))
app.command("resume")(_deployment_command(EventKind.DEPLOYMENT_RESUMED, "resume requested for", "Resume a stopped deployment."))


@app.command()
def unpublish(ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="NAME@VERSION")]) -> None:
    """Delete a template version (its number is never reused)."""
    template, version = _parse_ref(ref, need_version=True)
    result = _publish_one(ctx, EventKind.VERSION_DELETED, {"template": template, "version": version})
    _report(result, f"delete requested for {template}@{version}")


# ---------------------------------------------------------------------- events


def _kinds(types: list[str] | None) -> set[EventKind] | None:
    if not types:
        return None
    kinds = set()
    for name in types:
        try:
            kinds.add(EventKind.from_ce_type(name) if name.startswith(TYPE_PREFIX) else EventKind(name))
        except ValueError:
            fail(f"unknown event type {name!r}; one of: {', '.join(kind.value for kind in EventKind)}")
    return kinds


def _show(item: ReceivedEvent, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(event_record(item)), indent=None)
    else:
        console.print(event_line(item), soft_wrap=True)


def _wanted(item: ReceivedEvent, kinds: set[EventKind] | None) -> bool:
    return kinds is None or (item.event is not None and item.event.kind in kinds)


TypeFilter = Annotated[list[str] | None, typer.Option("--type", "-t", help="only these event types (repeatable)")]
JsonFlag = Annotated[bool, typer.Option("--json", help="one JSON object per line")]


@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    types: TypeFilter = None,
    count: Annotated[int | None, typer.Option("--count", min=1, help="stop after this many events")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.0, help="stop after this many seconds")] = None,
    inbound: Annotated[bool, typer.Option("--inbound", help="also follow inbound (template and deployment) events")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Follow status events and dead letters as they arrive."""
    kinds = _kinds(types)
    subjects = status_subjects(inbound=inbound)

    async def tail() -> None:
        client = await session_of(ctx).nats_options().connect()
        try:
            shown = 0

            def ready() -> None:  # tests and scripts wait for this line before they publish
                error_console.print(f"following {', '.join(subjects)}", style="dim", soft_wrap=True)

            async with contextlib.aclosing(follow(client, subjects, stop_after=timeout, on_ready=ready)) as items:
                async for item in items:
                    if _wanted(item, kinds):
                        _show(item, as_json)
                        shown += 1
                        if count is not None and shown >= count:
                            return
        finally:
            await client.close()

    run(tail())


@events_app.command("replay")
def events_replay(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option("--subject", help="subject filter, e.g. stokehold.templates.gemma-7b-it.>")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="at most this many events")] = None,
    types: TypeFilter = None,
    as_json: JsonFlag = False,
) -> None:
    """Read the stream from its first event (oldest first)."""
    kinds = _kinds(types)

    async def read() -> int:
        client = await session_of(ctx).nats_options().connect()
        shown = 0
        try:
            async with contextlib.aclosing(replay(client, subject, limit=limit)) as items:
                async for item in items:
                    if _wanted(item, kinds):
                        _show(item, as_json)
                        shown += 1
        finally:
            await client.close()
        return shown

    if run(read()) == 0:
        error_console.print("no events", style="dim")


@app.command()
def status(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="only this namespace")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The last known state of each deployment, from its status events."""

    async def collect() -> list[ReceivedEvent]:
        client = await session_of(ctx).nats_options().connect()
        try:
            async with contextlib.aclosing(replay(client, status_filter())) as items:
                return [item async for item in items]
        finally:
            await client.close()

    summaries = [s for s in summarize(i.event for i in run(collect()) if i.event) if namespace is None or s.namespace == namespace]
    if as_json:
        console.print_json(json.dumps([s.model_dump(mode="json") for s in summaries]))
    elif summaries:
        console.print(status_table(summaries))
    else:
        error_console.print("no deployments have reported status yet", style="dim")


# ---------------------------------------------------------------------- stream

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def _seconds(value: str, what: str) -> float:
    match = _DURATION.match(value.strip())
    if not match:
        fail(f"{what} {value!r} is not a duration like 120s, 30m, 12h or 365d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _bytes(value: str, what: str) -> int:
    match = _SIZE.match(value.strip())
    if not match:
        fail(f"{what} {value!r} is not a size like 4GiB or 512MiB")
    return int(float(match.group(1)) * _BYTES[(match.group(2) or "b").lower()])


@stream_app.command("provision")
def stream_provision(
    ctx: typer.Context,
    max_age: Annotated[str, typer.Option("--max-age", help="drop events older than this")] = "365d",
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="drop the oldest events beyond this size")] = "4GiB",
    duplicate_window: Annotated[str, typer.Option("--duplicate-window", help="how long an event id is remembered")] = "2m",
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=5)] = 1,
) -> None:
    """Create or update the stream (idempotent: running it twice changes nothing)."""
    try:
        settings = StreamSettings(
            max_age_seconds=_seconds(max_age, "--max-age"),
            max_bytes=_bytes(max_bytes, "--max-bytes"),
            duplicate_window_seconds=_seconds(duplicate_window, "--duplicate-window"),
            replicas=replicas,
        )
    except ValidationError as exc:
        fail("invalid stream settings: " + "; ".join(f"{path}: {message}" for path, message in errors_from(exc)))

    async def provision() -> Any:
        client = await session_of(ctx).nats_options().connect()
        try:
            return await provision_stream(client.jetstream(), settings)
        finally:
            await client.close()

    result = run(provision())
    if result.outcome is ProvisionOutcome.UPDATED:
        changes = ", ".join(f"{name} {before!r} → {after!r}" for name, (before, after) in result.changed.items())
        console.print(f"stream {settings.name} updated: {changes}", soft_wrap=True)
    else:
        console.print(f"stream {settings.name} {result.outcome.value} (subjects {', '.join(settings.subjects)})", soft_wrap=True)


@stream_app.command("info")
def stream_info(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The stream's configuration and how much it holds."""

    async def info() -> Any:
        client = await session_of(ctx).nats_options().connect()
        try:
            return await client.jetstream().stream_info(STREAM_NAME)
        except NotFoundError:
            fail(f"stream {STREAM_NAME} does not exist: run `stokehold stream provision`")
        finally:
            await client.close()

    result = run(info())
    config, state = result.config, result.state
    summary = {
        "name": config.name,
        "subjects": config.subjects,
        "storage": getattr(config.storage, "value", config.storage),
        "max_age_seconds": config.max_age,
        "max_bytes": config.max_bytes,
        "max_msg_size": config.max_msg_size,
        "duplicate_window_seconds": config.duplicate_window,
        "replicas": config.num_replicas,
        "messages": state.messages,
        "bytes": state.bytes,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
    }
    if as_json:
        console.print_json(json.dumps(summary))
        return
    table = Table("FIELD", "VALUE", title=f"stream {config.name}", title_justify="left")
    for key, value in summary.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


# ------------------------------------------------------- other components' apps

# Sub-apps of other components, imported only when called so that `stokehold deploy`
# never pays for importing vLLM. Missing components are simply not offered.
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
        command.main(args=ctx.args, prog_name=f"{ctx.find_root().info_name} {command_name}", standalone_mode=True)

    return delegate


def _mount_optional_apps() -> None:
    for command_name, module, attribute, help_text in OPTIONAL_APPS:
        if _available(module):
            app.command(
                command_name,
                help=help_text,
                add_help_option=False,  # `--help` goes to the sub-app
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            )(_delegate(command_name, module, attribute))


_mount_optional_apps()


def main() -> None:
    app()


__all__ = ["app", "main"]
