"""The `stokehold` commands that talk to NATS: publish, deploy and the lifecycle verbs, status,
`events tail | replay` and `stream provision | info`.

`events/cli.py` mounts them under the root command, whose NATS flags become the `Session`.
Each command that connects runs its async part through `run_connected`: connect, run, close,
and every known failure is one line on stderr with exit status 1.

What the CLI can check is checked before anything is sent: the event's data, and, from the
stream, that a deployed template and version were published and that a version number is not
reused. What only the controller knows (the namespaces it serves, its policies) comes back as
its answer, which `--wait` follows (`events/outcome.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import nats.errors
import typer
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from events.codec import EventDataError, validate_data
from events.display import REJECTION_COLUMNS, STATUS_COLUMNS, event_line, event_record, rejection_rows, status_rows
from events.options import NatsConnectError, NatsOptions, nats_client
from events.outcome import Expected, Verdict, Waiter, answer_feed
from events.publisher import Publisher, PublishError, PublishResult
from events.reader import ReceivedEvent, StreamMissingError, follow, received, replay, status_subjects
from events.status_view import DeploymentSummary, rejections, summarize
from events.stream import ProvisionOutcome, StreamConfigMismatch, StreamSettings, provision_stream
from events.types import (
    SOURCE_DEFAULT,
    SUBJECT_ROOT,
    TYPE_PREFIX,
    EventKind,
    StreamRole,
    TemplateVersionDeleted,
    TemplateVersionPublished,
    deadletter_filter,
    status_filter,
    stream_name,
)
from templates.catalog import load_catalog, load_file
from templates.cli import parse_ref, problem_line, template_files
from templates.schema import ModelTemplateVersion, TemplateValidationError, error_text
from templates.tables import print_table

T = TypeVar("T")

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

commands_app = typer.Typer()  # merged into the root command: `stokehold publish`, `stokehold deploy`, …
events_app = typer.Typer(help="Follow or replay stokehold events.", no_args_is_help=True)
stream_app = typer.Typer(help="The JetStream streams that store the events.", no_args_is_help=True)


class ContentMode(enum.StrEnum):
    binary = "binary"
    structured = "structured"


def fail(message: str, code: int = 1) -> NoReturn:
    error_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A hint for people, on stderr: never in the way of what a pipe reads."""
    error_console.print(escape(message), style="dim", soft_wrap=True)


def url_problem(url: str) -> str | None:
    """Why a server URL cannot be connected to, or None (what nats-py parses, checked before it does)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        return str(exc)
    return None if parts.hostname else "it names no host"


@dataclass
class Session:
    """What the root options say; the NATS options are read only by commands that connect.

    `connection` holds the connection flags given (URL, credentials, TLS); `stokehold controller run`
    takes them too. The timeouts are the command line's own: it fails fast when NATS is not there.
    """

    connection: dict[str, Any] = field(default_factory=dict)
    connect_timeout: float = 5.0
    connect_attempts: int = 2
    source: str = SOURCE_DEFAULT
    mode: ContentMode = ContentMode.binary

    def nats_options(self) -> NatsOptions:
        tuning: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "max_reconnect_attempts": self.connect_attempts,
            "reconnect_time_wait": 0.5,
        }
        try:
            options = NatsOptions(**self.connection, **tuning)
        except ValidationError as exc:
            fail(f"invalid NATS options: {error_text(exc)}")
        for url in options.url:
            problem = url_problem(url)
            if problem:
                fail(f"invalid NATS server URL {url[:200]!r}: {problem}")
        return options


def session_of(ctx: typer.Context) -> Session:
    root = ctx.find_root()
    if not isinstance(root.obj, Session):
        root.obj = Session()
    return root.obj


def run_connected(ctx: typer.Context, work: Callable[[NatsClient], Awaitable[T]]) -> T:
    """Connect with the session's options, run `work`, close; known failures become one line on stderr."""
    options = session_of(ctx).nats_options()  # bad options fail here, before any connection attempt

    async def connected() -> T:
        async with nats_client(options) as client:
            return await work(client)

    try:
        return asyncio.run(connected())
    except (NatsConnectError, PublishError, StreamConfigMismatch, EventDataError, StreamMissingError) as exc:
        fail(str(exc))
    except nats.errors.Error as exc:  # a JetStream API error, a permissions violation, a timeout
        fail(f"NATS: {str(exc) or type(exc).__name__}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def publisher_for(ctx: typer.Context, client: NatsClient) -> Publisher:
    session = session_of(ctx)
    return Publisher(client, source=session.source, mode=session.mode.value)


# ------------------------------------------------------------ what the stream says

# How long a check against the stream waits for the JetStream API before publishing without it: a
# publisher locked down as docs/security.md recommends may not call that API at all, and is only slowed by this.
CHECK_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class VersionHistory:
    """A template's versions as the desired-state stream holds them."""

    published: dict[int, str]  # version → content hash
    deleted: frozenset[int]

    @property
    def live(self) -> list[int]:
        return sorted(set(self.published) - self.deleted)

    @property
    def next_number(self) -> int:
        return max([*self.published, *self.deleted, 0]) + 1


async def version_history(client: NatsClient, template: str, root: str = SUBJECT_ROOT) -> VersionHistory | None:
    """What the stream holds of `template`'s versions; None when it cannot say (no stream, no permission)."""
    subject = f"{root}.templates.{template}.template.version.>"
    try:
        stream = await client.jetstream(timeout=CHECK_TIMEOUT_S).find_stream_name_by_subject(subject)
    except (nats.errors.Error, NotFoundError):
        return None
    published: dict[int, str] = {}
    deleted: set[int] = set()
    async with contextlib.aclosing(replay(client, subject, stream=stream, root=root)) as items:
        async for item in items:
            data = item.event.data if item.event is not None else None
            if isinstance(data, TemplateVersionPublished):
                published.setdefault(data.version, data.content_hash)
            elif isinstance(data, TemplateVersionDeleted):
                deleted.add(data.version)
    return VersionHistory(published, frozenset(deleted))


async def published_versions(client: NatsClient, template: str, root: str = SUBJECT_ROOT) -> set[int] | None:
    """The version numbers of `template` that the stream holds a publish event for; None when it cannot say."""
    history = await version_history(client, template, root)
    return None if history is None else set(history.published)


def version_problem(version: ModelTemplateVersion, history: VersionHistory | None) -> str | None:
    """Why the controller would refuse to publish `version`, as far as the stream tells (pure)."""
    if history is None:
        return None
    number, later = version.version, f"publish it as version {history.next_number}"
    if number in history.deleted:
        return f"{version.ref} was deleted, and a version number is never reused: {later}"
    stored = history.published.get(number)
    if stored is not None and stored != version.content_hash:
        return f"{version.ref} is already published with other content ({stored[:19]}): versions are immutable, {later}"
    return None


def deploy_problem(template: str, version: int | None, history: VersionHistory | None) -> str | None:
    """Why the controller would refuse to deploy `template[@version]`, as far as the stream tells (pure)."""
    if history is None:
        return None
    live = ", ".join(map(str, history.live)) or "none"
    if not history.live:
        return f"{template} has no published version (published versions: {live}): publish it first (`stokehold publish FILE`)"
    if version is not None and version not in history.live:
        return f"{template}@{version} is not published (published versions: {live})"
    return None


# ------------------------------------------------------------------ the answer


WaitFlag = Annotated[bool, typer.Option("--wait", help="wait for the controller's answer; exit 1 if it refuses the event")]
WaitTimeout = Annotated[
    float | None, typer.Option("--timeout", min=1.0, help="seconds to wait with --wait (default 60; 1800 with --wait-ready)")
]
WAIT_S = 60.0
WAIT_READY_S = 1800.0  # a cold GPU start: node scale-up, image pull, model download and load


async def await_answers(client: NatsClient, waiter: Waiter, feed: asyncio.Queue[Msg], seconds: float) -> None:
    """Feed the waiter the answers as they arrive, until every event has its verdict or `seconds` pass."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while not waiter.done:
                item = received(await feed.get())
                if item.event is None:
                    continue
                for entry in waiter.feed(item.event):
                    if entry.awaits_load:
                        waiter.settle_from(entry, await _summary(client, entry))


async def _summary(client: NatsClient, entry: Expected) -> DeploymentSummary | None:
    """The status stream's latest word on the deployment an event named."""
    try:
        async with contextlib.aclosing(replay(client, f"{SUBJECT_ROOT}.status.{entry.template}.>")) as items:
            summaries = summarize([item.event async for item in items if item.event is not None])
    except StreamMissingError:
        return None
    return next((summary for summary in summaries if summary.key == entry.key), None)


def verdict_failure(entry: Expected, timeout: float, sequence: int) -> str | None:
    """The one line to fail with, or None when the event was applied (or its service became ready)."""
    if entry.verdict is Verdict.REJECTED:
        return f"the controller rejected it: {entry.detail}"
    if entry.verdict is Verdict.FAILED:
        return f"applied, then the service failed: {entry.detail}"
    if entry.verdict is not None:
        return None
    if entry.accepted is not None:
        return f"applied, but not ready within {timeout:g} s; follow it with `stokehold status` or `stokehold events tail`"
    return (
        f"no answer from the controller within {timeout:g} s (is it running, and connected to this NATS?); "
        f"the event is stored (#{sequence}) and `stokehold status` shows the answer once it comes"
    )


def _not_yet_applied() -> None:
    note("sent: the controller applies it asynchronously; --wait follows its answer, `stokehold status` shows it")


# ------------------------------------------------------------------ publishing

JsonFlag = Annotated[bool, typer.Option("--json", help="one JSON object per line")]


@commands_app.command()
def publish(
    ctx: typer.Context,
    files: Annotated[list[Path] | None, typer.Argument(help="template version YAML files", show_default=False)] = None,
    catalog: Annotated[bool, typer.Option("--catalog", help="publish every template of the built-in catalog")] = False,
    wait: WaitFlag = False,
    timeout: WaitTimeout = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate template versions, then publish each as template.version.published."""
    versions: list[ModelTemplateVersion] = []
    problems: list[str] = []
    for path in template_files(files or []):
        try:
            versions.append(load_file(path))
        except TemplateValidationError as exc:
            problems.append(problem_line(exc))
    if catalog:
        try:
            versions += load_catalog()
        except TemplateValidationError as exc:
            fail(str(exc))
    if problems:
        for line in problems:
            error_console.print(f"[bold red]invalid:[/] {escape(line)}", soft_wrap=True)
        fail(f"nothing was published: {len(problems)} invalid template file(s)")
    if not versions:
        fail("give template files to publish, or --catalog")
    waiter = Waiter()
    known: list[str] = []  # versions the stream holds already, with the same content

    async def send(client: NatsClient) -> list[PublishResult]:
        histories = {name: await version_history(client, name) for name in sorted({v.name for v in versions})}
        known.extend(v.ref for v in versions if (h := histories[v.name]) is not None and h.published.get(v.version) == v.content_hash)
        refused = [problem for v in versions if (problem := version_problem(v, histories[v.name]))]
        if refused:
            for line in refused:
                error_console.print(f"[bold red]refused:[/] {escape(line)}", soft_wrap=True)
            fail(f"nothing was published: {len(refused)} version(s) the controller would refuse")
        async with answer_feed(client, histories) if wait else _no_feed() as feed:
            publisher = publisher_for(ctx, client)
            results = [await publisher.publish_version(v) for v in versions]  # random ids: a guessable id could be claimed first
            for version, result in zip(versions, results, strict=True):
                waiter.expect(result.event_id, version.name)
            if feed is not None:
                await await_answers(client, waiter, feed, timeout or WAIT_S)
        return results

    results = run_connected(ctx, send)
    entries = waiter.expected if wait else [None] * len(results)
    records = []
    for version, result, entry in zip(versions, results, entries, strict=True):
        record: dict[str, Any] = {
            "template": version.name,
            "version": version.version,
            "content_hash": version.content_hash,
            "event_id": result.event_id,
            "stream_sequence": result.sequence,
            "duplicate": result.duplicate,
        }
        if entry is not None:
            record |= {"outcome": entry.verdict.value if entry.verdict else "no answer", "detail": entry.detail}
        records.append(record)
    if as_json:
        for record in records:
            typer.echo(json.dumps(record))
    else:
        columns = ["TEMPLATE", "VERSION", "CONTENT HASH", "STREAM SEQ"] + (["OUTCOME"] if wait else [])
        rows = [
            [r["template"], str(r["version"]), r["content_hash"][:19], str(r["stream_sequence"])]
            + ([r["outcome"] + (f": {r['detail']}" if r["detail"] and r["outcome"] == "rejected" else "")] if wait else [])
            for r in records
        ]
        print_table(console, columns, rows, title="published")
    if known:
        note(f"published before with the same content, so nothing changes: {', '.join(known)}")
    if not wait:
        _not_yet_applied()
        return
    failures = [
        verdict_failure(entry, timeout or WAIT_S, result.sequence)
        for entry, result in zip(waiter.expected, results, strict=True)
        if entry.verdict is not Verdict.APPLIED
    ]
    if failures:
        fail(f"{len(failures)} of {len(results)} version(s) not applied; the first: {failures[0]}")


@contextlib.asynccontextmanager
async def _no_feed() -> AsyncIterator[None]:
    yield None


def _parse_ref(ref: str, *, need_version: bool = False) -> tuple[str, int | None]:
    try:
        return parse_ref(ref, need_version=need_version)
    except ValueError as exc:
        fail(str(exc))


def _checked(kind: EventKind, data: dict[str, Any]) -> Any:
    try:
        return validate_data(kind, data)  # before connecting: a typo never waits for the network
    except EventDataError as exc:
        fail(str(exc))


@dataclass
class _Sent:
    result: PublishResult
    entry: Expected | None


def _publish_one(
    ctx: typer.Context,
    kind: EventKind,
    data: dict[str, Any],
    *,
    wait: bool = False,
    until_ready: bool = False,
    timeout: float = WAIT_S,
    check: Callable[[NatsClient, Any], Awaitable[None]] | None = None,
) -> _Sent:
    """Publish one event (after `check`, which may fail), and with `wait` follow the controller's answer to it."""
    model = _checked(kind, data)
    template: str = model.template_name
    key = getattr(model, "key", None)

    async def send(client: NatsClient) -> _Sent:
        if check is not None:
            await check(client, model)
        async with answer_feed(client, [template]) if wait else _no_feed() as feed:
            result = await publisher_for(ctx, client).publish(kind, model)
            if feed is None:
                return _Sent(result, None)
            waiter = Waiter()
            entry = waiter.expect(result.event_id, template, key, until_ready=until_ready)
            await await_answers(client, waiter, feed, timeout)
            return _Sent(result, entry)

    return run_connected(ctx, send)


def _report(sent: _Sent, what: str, timeout: float = WAIT_S) -> None:
    result = sent.result
    note_text = " (duplicate: already stored)" if result.duplicate else ""
    console.print(f"{what}: {result.kind.ce_type} {result.event_id} → {result.subject} #{result.sequence}{note_text}", soft_wrap=True)
    entry = sent.entry
    if entry is None:
        _not_yet_applied()
        return
    failure = verdict_failure(entry, timeout, result.sequence)
    if failure is not None:
        fail(failure)
    console.print(f"{entry.verdict.value if entry.verdict else ''}: {entry.detail}", soft_wrap=True)


Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Kubernetes namespace")]
DeploymentName = Annotated[str | None, typer.Option("--name", help="deployment name (default: the template name)")]


@commands_app.command()
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
    wait: WaitFlag = False,
    wait_ready: Annotated[bool, typer.Option("--wait-ready", help="--wait, then until the service is ready (or failed)")] = False,
    timeout: WaitTimeout = None,
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

    async def check(client: NatsClient, _: Any) -> None:
        problem = deploy_problem(template, version, await version_history(client, template))
        if problem:
            fail(problem)

    seconds = timeout or (WAIT_READY_S if wait_ready else WAIT_S)
    sent = _publish_one(
        ctx, EventKind.DEPLOYMENT_REQUESTED, data, wait=wait or wait_ready, until_ready=wait_ready, timeout=seconds, check=check
    )
    _report(sent, f"requested {namespace}/{name or template} ({template}@{version or 'latest'})", seconds)


def _deployment_command(kind: EventKind, verb: str, doc: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        template: Annotated[str, typer.Argument(metavar="NAME", help="the template of the deployment")],
        namespace: Namespace = "default",
        name: DeploymentName = None,
        wait: WaitFlag = False,
        timeout: WaitTimeout = None,
    ) -> None:
        data = {"template": template, "namespace": namespace, "name": name}
        sent = _publish_one(ctx, kind, data, wait=wait, timeout=timeout or WAIT_S)
        _report(sent, f"{verb} {namespace}/{name or template}", timeout or WAIT_S)

    command.__doc__ = doc
    return command


commands_app.command("undeploy")(_deployment_command(EventKind.DEPLOYMENT_DELETED, "undeploy requested for", "Delete a deployment."))
commands_app.command("stop")(_deployment_command(EventKind.DEPLOYMENT_STOPPED, "stop requested for", "Stop serving without deleting."))
commands_app.command("resume")(_deployment_command(EventKind.DEPLOYMENT_RESUMED, "resume requested for", "Resume a stopped deployment."))


@commands_app.command()
def unpublish(
    ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="NAME@VERSION")], wait: WaitFlag = False, timeout: WaitTimeout = None
) -> None:
    """Delete a template version (its number is never reused). A version never published is refused."""
    template, version = _parse_ref(ref, need_version=True)

    async def check(client: NatsClient, model: TemplateVersionDeleted) -> None:
        published = await published_versions(client, template)
        if published is not None and model.version not in published:
            known = ", ".join(map(str, sorted(published))) or "none"
            fail(f"{template}@{version} was never published (published versions: {known}): nothing to delete")

    sent = _publish_one(
        ctx, EventKind.VERSION_DELETED, {"template": template, "version": version}, wait=wait, timeout=timeout or WAIT_S, check=check
    )
    _report(sent, f"delete requested for {template}@{version}", timeout or WAIT_S)


# ---------------------------------------------------------------------- events


def _kinds(types: list[str] | None) -> set[EventKind] | None:
    if not types:
        return None
    kinds = set()
    for name in types:
        try:
            kinds.add(EventKind.from_ce_type(name) if name.startswith(TYPE_PREFIX) else EventKind(name))
        except ValueError:
            fail(f"unknown event type {name[:80]!r}; one of: {', '.join(kind.value for kind in EventKind)}")
    return kinds


def _show(item: ReceivedEvent, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(event_record(item)))
    else:
        console.print(event_line(item), soft_wrap=True)


def _wanted(item: ReceivedEvent, kinds: set[EventKind] | None) -> bool:
    return kinds is None or (item.event is not None and item.event.kind in kinds)


TypeFilter = Annotated[list[str] | None, typer.Option("--type", "-t", help="only these event types (repeatable)")]


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

    def ready() -> None:  # tests and scripts wait for this line before they publish
        note(f"following {', '.join(subjects)}")

    async def tail(client: NatsClient) -> None:
        shown = 0
        async with contextlib.aclosing(follow(client, subjects, stop_after=timeout, on_ready=ready)) as items:
            async for item in items:
                if _wanted(item, kinds):
                    _show(item, as_json)
                    shown += 1
                    if count is not None and shown >= count:
                        return

    run_connected(ctx, tail)


@events_app.command("replay")
def events_replay(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option("--subject", help="subject filter, e.g. stokehold.templates.gemma-7b-it.>")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="at most this many events")] = None,
    types: TypeFilter = None,
    as_json: JsonFlag = False,
) -> None:
    """Read the streams from their first event (oldest first); `--subject 'stokehold.deadletter.>'`: every rejection."""
    kinds = _kinds(types)

    async def read(client: NatsClient) -> int:
        shown = 0
        async with contextlib.aclosing(replay(client, subject, limit=limit)) as items:
            async for item in items:
                if _wanted(item, kinds):
                    _show(item, as_json)
                    shown += 1
        return shown

    if run_connected(ctx, read) == 0:
        note("no events")


@commands_app.command()
def status(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="only this namespace")] = None,
    recent: Annotated[int, typer.Option("--rejections", min=0, help="how many of the newest rejections to show (0: none)")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line: each deployment, then each rejection")] = False,
) -> None:
    """The last known state of each deployment, from its status events, and the newest rejections."""

    async def collect(client: NatsClient) -> tuple[list[ReceivedEvent], list[ReceivedEvent]]:
        async with contextlib.aclosing(replay(client, status_filter())) as items:
            statuses = [item async for item in items]
        if recent == 0:
            return statuses, []
        try:
            async with contextlib.aclosing(replay(client, deadletter_filter(), last=recent)) as items:
                return statuses, [item async for item in items]
        except StreamMissingError:  # a stream of the one-stream layout: no dead-letter stream yet
            return statuses, []

    statuses, dead = run_connected(ctx, collect)
    summaries = [s for s in summarize(_decoded(statuses), now=datetime.now(UTC)) if namespace is None or s.namespace == namespace]
    refused = rejections(_decoded(dead))
    if as_json:
        for summary in summaries:
            typer.echo(json.dumps({"kind": "deployment"} | summary.model_dump(mode="json")))
        for rejection in refused:
            typer.echo(json.dumps({"kind": "rejection"} | rejection.model_dump(mode="json")))
        return
    if summaries:
        print_table(console, STATUS_COLUMNS, status_rows(summaries), title="stokehold deployments")
    else:
        note("no deployments have reported status yet")
    if refused:
        if summaries:
            console.out("")
        print_table(
            console,
            REJECTION_COLUMNS,
            rejection_rows(refused),
            title="recent rejections (all of them: stokehold events replay --subject 'stokehold.deadletter.>')",
        )


def _decoded(items: Iterable[ReceivedEvent]) -> list[Any]:
    return [item.event for item in items if item.event is not None]


# ---------------------------------------------------------------------- stream

_DURATION = re.compile(r"^(\d{1,9}(?:\.\d{1,9})?)(s|m|h|d)$")
_SIZE = re.compile(r"^(\d{1,15}(?:\.\d{1,9})?)\s*(B|KiB|MiB|GiB|TiB)?$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def _seconds(value: str, what: str) -> float:
    match = _DURATION.match(value.strip())
    if not match:
        fail(f"{what} {value[:80]!r} is not a duration like 120s, 30m, 12h or 365d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _bytes(value: str, what: str) -> int:
    match = _SIZE.match(value.strip())
    if not match:
        fail(f"{what} {value[:80]!r} is not a size like 4GiB or 512MiB")
    return int(float(match.group(1)) * _BYTES[(match.group(2) or "b").lower()])


@stream_app.command("provision")
def stream_provision(
    ctx: typer.Context,
    max_age: Annotated[str, typer.Option("--max-age", help="drop status events and dead letters older than this")] = "30d",
    max_bytes: Annotated[
        str, typer.Option("--max-bytes", help="desired state (inbound events): refuse new events beyond this size; never drops any")
    ] = "4GiB",
    status_max_bytes: Annotated[
        str, typer.Option("--status-max-bytes", help="status events, and dead letters: drop the oldest beyond this size (each)")
    ] = "1GiB",
    duplicate_window: Annotated[str, typer.Option("--duplicate-window", help="how long an event id is remembered")] = "2m",
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=5)] = 1,
) -> None:
    """Create or update the streams: desired state, status, dead letters (idempotent: running it twice changes nothing)."""
    try:
        settings = StreamSettings(
            max_age_seconds=_seconds(max_age, "--max-age"),
            max_bytes=_bytes(max_bytes, "--max-bytes"),
            status_max_bytes=_bytes(status_max_bytes, "--status-max-bytes"),
            duplicate_window_seconds=_seconds(duplicate_window, "--duplicate-window"),
            replicas=replicas,
        )
    except ValidationError as exc:
        fail(f"invalid stream settings: {error_text(exc)}")

    async def provision(client: NatsClient) -> Any:
        return await provision_stream(client.jetstream(), settings)

    for stream in run_connected(ctx, provision).streams:
        if stream.outcome is ProvisionOutcome.UPDATED:
            changes = ", ".join(f"{name} {before!r} → {after!r}" for name, (before, after) in stream.changed.items())
            console.print(f"stream {stream.name} updated: {changes}", soft_wrap=True)
        else:
            console.print(f"stream {stream.name} {stream.outcome.value} (subjects {', '.join(stream.subjects)})", soft_wrap=True)


@stream_app.command("info")
def stream_info(
    ctx: typer.Context,
    role: Annotated[StreamRole, typer.Option("--stream", help="which stream: the desired state, status events or dead letters")] = (
        StreamRole.DESIRED
    ),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """A stream's configuration and how much it holds."""
    name = stream_name(role)

    async def info(client: NatsClient) -> Any:
        try:
            return await client.jetstream().stream_info(name)
        except NotFoundError:
            raise StreamMissingError([name]) from None

    result = run_connected(ctx, info)
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
        typer.echo(json.dumps(summary))
        return
    rows = [[key, ", ".join(value) if isinstance(value, list) else str(value)] for key, value in summary.items()]
    print_table(console, ["FIELD", "VALUE"], rows, title=f"stream {config.name}")


@stream_app.command("delete")
def stream_delete(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="really delete: every event, the desired state included, is gone")] = False,
) -> None:
    """Delete the three streams and everything in them (uninstalling; the controller's consumer goes with them)."""
    if not yes:
        fail("this deletes every stored event, the desired state included: add --yes to do it")
    names = [stream_name(role) for role in StreamRole]

    async def delete(client: NatsClient) -> list[str]:
        js, deleted = client.jetstream(), []
        for name in names:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
                deleted.append(name)
        return deleted

    deleted = run_connected(ctx, delete)
    console.print(f"deleted: {', '.join(deleted)}" if deleted else f"none of {', '.join(names)} existed", soft_wrap=True)


__all__ = [
    "ContentMode",
    "Session",
    "VersionHistory",
    "commands_app",
    "deploy_problem",
    "events_app",
    "fail",
    "nats_client",
    "published_versions",
    "run_connected",
    "session_of",
    "stream_app",
    "url_problem",
    "version_history",
    "version_problem",
]
