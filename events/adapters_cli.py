"""`stokehold adapters publish|list|attach|detach`: LoRA adapters as events (see events/adapters.py).

Every event goes on the base template's subject, so the controller and each replica see it
in order with the deployments it concerns; the controller refuses what does not fit with a
dead letter, which `stokehold status` lists.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError
from rich.table import Table

from events.adapters import AdapterBook
from events.commands import console, fail, publisher_for, run_connected
from events.reader import replay
from events.types import (
    SUBJECT_ROOT,
    AdapterVersionDeleted,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentAdapterDetached,
    EventKind,
)
from templates.schema import error_text

app = typer.Typer(help="LoRA adapters: publish immutable adapter versions, attach them to running deployments", no_args_is_help=True)

Template = Annotated[str, typer.Option("--template", "-t", help="the base template")]
Namespace = Annotated[str, typer.Option("--namespace", "-n")]
Deployment = Annotated[str | None, typer.Option("--deployment", "-d", help="default: the template's name")]


def _send(ctx: typer.Context, kind: EventKind, build: type, **fields: object) -> None:
    try:
        data = build(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid {kind.value}: {error_text(exc)}")

    async def send(client: NatsClient) -> None:
        result = await publisher_for(ctx, client).publish(kind, data)
        console.print(f"published {kind.value} ({result.event_id}) to {result.subject}")

    run_connected(ctx, send)


@app.command()
def publish(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the adapter's name (what clients send as `model`)")],
    template: Template,
    version: Annotated[int, typer.Option("--version", "-v", help="the adapter version (immutable)")],
    source: Annotated[
        str, typer.Option("--source", "-s", help="hf://org/repo, s3://bucket/path, pvc://claim/path or a path in the model cache")
    ],
    rank: Annotated[int, typer.Option("--rank", "-r", help="the adapter's LoRA rank")],
    base_version: Annotated[
        list[int] | None, typer.Option("--base-version", help="a base template version it fits (repeat; default: all)")
    ] = None,
) -> None:
    """Publish an adapter version (adapter.version.published)."""
    _send(
        ctx,
        EventKind.ADAPTER_PUBLISHED,
        AdapterVersionPublished,
        template=template,
        name=name,
        version=version,
        source=source,
        rank=rank,
        base_versions=base_version or None,
    )


@app.command()
def delete(
    ctx: typer.Context,
    name: str,
    template: Template,
    version: Annotated[int, typer.Option("--version", "-v")],
) -> None:
    """Delete an adapter version (adapter.version.deleted); its number is never reused."""
    _send(ctx, EventKind.ADAPTER_DELETED, AdapterVersionDeleted, template=template, name=name, version=version)


@app.command()
def attach(
    ctx: typer.Context,
    name: str,
    template: Template,
    namespace: Namespace = "default",
    deployment: Deployment = None,
    version: Annotated[int | None, typer.Option("--version", "-v", help="pin a version (default: follow the latest)")] = None,
) -> None:
    """Serve an adapter on a running deployment, no restart (deployment.adapter.attached)."""
    _send(
        ctx,
        EventKind.ADAPTER_ATTACHED,
        DeploymentAdapterAttached,
        template=template,
        namespace=namespace,
        name=deployment,
        adapter=name,
        version=version,
    )


@app.command()
def detach(ctx: typer.Context, name: str, template: Template, namespace: Namespace = "default", deployment: Deployment = None) -> None:
    """Stop serving an adapter on a deployment (deployment.adapter.detached)."""
    _send(ctx, EventKind.ADAPTER_DETACHED, DeploymentAdapterDetached, template=template, namespace=namespace, name=deployment, adapter=name)


@app.command("list")
def list_(ctx: typer.Context, template: Annotated[str | None, typer.Option("--template", "-t")] = None) -> None:
    """Adapter versions and the deployments they are attached to, as the desired-state stream holds them."""
    book = AdapterBook()
    attached: dict[tuple[str, str], set[str]] = {}  # (template, adapter) → deployments

    async def read(client: NatsClient) -> None:
        subject = f"{SUBJECT_ROOT}.templates.{template or '*'}.>"
        async with contextlib.aclosing(replay(client, subject)) as items:
            async for item in items:
                data = item.event.data if item.event is not None else None
                if isinstance(data, AdapterVersionPublished | AdapterVersionDeleted):
                    with contextlib.suppress(ValueError):
                        book.apply(data, None)
                elif isinstance(data, DeploymentAdapterAttached):
                    attached.setdefault((data.template, data.adapter), set()).add(f"{data.namespace}/{data.deployment_name}")
                elif isinstance(data, DeploymentAdapterDetached):
                    attached.get((data.template, data.adapter), set()).discard(f"{data.namespace}/{data.deployment_name}")

    run_connected(ctx, read)
    table = Table("TEMPLATE", "ADAPTER", "VERSION", "RANK", "SOURCE", "ATTACHED TO")
    for doc in book.all_versions():
        table.add_row(
            doc.template,
            doc.name,
            str(doc.version),
            str(doc.rank),
            doc.source,
            ", ".join(sorted(attached.get((doc.template, doc.name), ()))),
        )
    console.print(table)
