"""Each replica converges on its deployment's LoRA adapters by following the bus.

The replica reads its template's subject in the desired-state stream from the start (an
ordered consumer), reduces the adapter events with the same pure book as the controller
(`events.adapters`), and reconciles what its engine serves through vLLM's own in-process
adapter API. It catches up before the server listens, so a replica started after an
attach serves the adapter on its first request. Detached adapters are unloaded before
anything is loaded, so a detached adapter is never served. Each load reports
LOADING → SUCCEEDED | FAILED (with the reason) on the status subject (the controller
reports REQUESTED when it accepts the attach). While a load runs the replica repeats
LOADING every `report_every_s`: a replica killed mid-load stops repeating it, and
`stokehold status` shows its LOADING as FAILED once it is older than a few intervals
(events/status_view.py), so no status stays LOADING forever. A replica restarted under
the same name reports again, superseding its last LOADING.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from events.adapters import AdapterBook, AdapterError, Target, check_files
from events.codec import EventDecodeError, decode
from events.options import NatsOptions
from events.types import (
    ADAPTER_KINDS,
    SUBJECT_ROOT,
    AdapterLoadStatusData,
    AdapterVersionPublished,
    DeploymentDeleted,
    DeploymentRequested,
    EventKind,
    LoadStatus,
)
from runtimes.engine_args import ENV_ADAPTER_CACHE, ENV_DEPLOYMENT, ENV_TEMPLATE, ENV_TEMPLATE_VERSION
from runtimes.status import publish_status
from templates.schema import LoraLimits

logger = logging.getLogger("stokehold.runtime")

ENV_REPLICA = "STOKEHOLD_REPLICA"
DEFAULT_ADAPTER_CACHE = "/mnt/models-cache/adapters"
DEFAULT_REPORT_EVERY_S = 30.0
FOLLOWED_KINDS = ADAPTER_KINDS | {EventKind.DEPLOYMENT_REQUESTED, EventKind.DEPLOYMENT_DELETED}


@dataclass(frozen=True)
class AdapterSettings:
    namespace: str
    deployment: str
    template: str
    version: int
    cache: Path
    replica: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdapterSettings | None:
        raw = env.get(ENV_DEPLOYMENT, "").strip()
        if not raw:
            return None
        namespace, _, name = raw.rpartition("/")
        return cls(
            namespace=namespace or "default",
            deployment=name,
            template=env[ENV_TEMPLATE],
            version=int(env[ENV_TEMPLATE_VERSION]),
            cache=Path(env.get(ENV_ADAPTER_CACHE, DEFAULT_ADAPTER_CACHE)),
            replica=env.get(ENV_REPLICA) or socket.gethostname(),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.deployment)


class Engine(Protocol):
    """What the follower needs of the serving engine (vLLM's OpenAIServingModels, or a stand-in)."""

    async def load(self, name: str, path: str) -> str | None:
        """None, or why it failed."""

    async def unload(self, name: str) -> None: ...


class VllmEngine:
    def __init__(self, serving_models: Any) -> None:
        self.models = serving_models

    async def load(self, name: str, path: str) -> str | None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await self.models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=path, load_inplace=True))
        return result.error.message if isinstance(result, ErrorResponse) else None

    async def unload(self, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        await self.models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))


def resolve_local(source: str, cache: Path) -> Path:
    """A relative source or pvc://claim/path as a directory inside the cache (never outside it)."""
    relative = source.removeprefix("pvc://")
    path = (cache / relative).resolve()
    if not path.is_relative_to(cache.resolve()):
        raise AdapterError(f"source {source!r} leaves the model cache")
    return path


def fetch(doc: AdapterVersionPublished, cache: Path) -> Path:
    """The adapter's files on local disk: downloaded with huggingface_hub or kserve-storage, then checked."""
    if doc.source.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo, _, revision = doc.source.removeprefix("hf://").partition("@")
        target = Path(
            snapshot_download(repo, revision=revision or None, cache_dir=str(cache / "hf"), allow_patterns=["*.json", "*.safetensors"])
        )
    elif doc.source.startswith("s3://"):
        from kserve_storage import Storage

        out = cache / "s3" / doc.template / doc.name / str(doc.version)
        target = Path(Storage.download(doc.source, str(out)))
    else:
        target = resolve_local(doc.source, cache)
    if not target.is_dir():
        raise AdapterError(f"adapter {doc.ref}: {doc.source} is not a directory")
    check_files(sorted(p.name for p in target.iterdir()))
    return target


def lora_limits(args: Any) -> LoraLimits | None:
    if not getattr(args, "enable_lora", False):
        return None
    return LoraLimits(max_loras=args.max_loras, max_rank=args.max_lora_rank)


Publish = Callable[[EventKind, AdapterLoadStatusData], Awaitable[None]]


class AdapterFollower:
    """Reduces the template's adapter events and keeps the engine's adapters equal to the deployment's set."""

    def __init__(
        self, settings: AdapterSettings, target: Target, engine: Engine, publish: Publish, report_every_s: float = DEFAULT_REPORT_EVERY_S
    ) -> None:
        self.settings = settings
        self.report_every_s = report_every_s
        self.target = target
        self.engine = engine
        self.publish = publish
        self.book = AdapterBook()
        self.loaded: dict[str, AdapterVersionPublished] = {}
        self.failed: dict[str, str] = {}  # adapter ref → reason: not retried until it changes

    def apply(self, kind: EventKind, data: Any) -> None:
        if kind not in FOLLOWED_KINDS:
            return
        if isinstance(data, DeploymentDeleted):
            if data.key == self.settings.key:
                self.book.forget(data.key)
            return
        key = getattr(data, "key", None)
        if kind not in {EventKind.ADAPTER_PUBLISHED, EventKind.ADAPTER_DELETED} and key != self.settings.key:
            return
        if isinstance(data, DeploymentRequested) and data.adapters is None:
            return
        try:
            self.book.apply(data, self.target)
        except AdapterError as exc:  # the controller dead-letters it; a replica only skips it
            logger.info("adapter event skipped: %s", exc)

    async def reconcile(self) -> None:
        desired = self.book.desired(self.settings.key, self.target)
        for name, doc in list(self.loaded.items()):  # unload first: a detached adapter is never served
            if desired.get(name) != doc:
                await self.engine.unload(name)
                del self.loaded[name]
                logger.info("adapter %s unloaded", doc.ref)
        for name, doc in desired.items():
            if name in self.loaded or doc.ref in self.failed:
                continue
            await self._load(doc)

    async def _load(self, doc: AdapterVersionPublished) -> None:
        await self._status(doc, LoadStatus.LOADING)
        beat = asyncio.get_running_loop().create_task(self._keep_reporting(doc))
        try:
            path = await asyncio.to_thread(fetch, doc, self.settings.cache)
            reason = await self.engine.load(doc.name, str(path))
        except Exception as exc:  # any fetch failure is this adapter's, never the replica's
            reason = str(exc) if isinstance(exc, AdapterError) else f"{type(exc).__name__}: {exc}"
        finally:
            beat.cancel()
        if reason is None:
            self.loaded[doc.name] = doc
            logger.info("adapter %s loaded", doc.ref)
            await self._status(doc, LoadStatus.SUCCEEDED)
        else:
            self.failed[doc.ref] = reason
            logger.warning("adapter %s failed: %s", doc.ref, reason)
            await self._status(doc, LoadStatus.FAILED, reason)

    async def _keep_reporting(self, doc: AdapterVersionPublished) -> None:
        while True:  # still alive, still loading: what tells a slow download from a replica that died
            await asyncio.sleep(self.report_every_s)
            await self._status(doc, LoadStatus.LOADING)

    async def _status(self, doc: AdapterVersionPublished, status: LoadStatus, reason: str | None = None) -> None:
        s = self.settings
        data = AdapterLoadStatusData(
            template=s.template,
            version=s.version,
            namespace=s.namespace,
            name=s.deployment,
            adapter=doc.name,
            adapter_version=doc.version,
            replica=s.replica,
            status=status,
            reason=reason,
            report_every_s=self.report_every_s if status is LoadStatus.LOADING else None,
        )
        try:
            await self.publish(EventKind.ADAPTER_LOAD_STATUS, data)
        except Exception as exc:  # status is information: a bus hiccup never stops serving
            logger.warning("could not publish the status of %s: %s", doc.ref, exc)


async def follow(follower: AdapterFollower, options: NatsOptions, root: str = SUBJECT_ROOT) -> tuple[Any, asyncio.Task[None]]:
    """Catch up with the template's subject, reconcile, then follow it in a task. Returns (client, task)."""
    from nats.js.api import DeliverPolicy

    client = await options.connect()
    js = client.jetstream()
    template = follower.settings.template

    async def publish(kind: EventKind, data: AdapterLoadStatusData) -> None:
        await publish_status(js, template, kind, data, root)

    follower.publish = publish
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        await queue.put(msg)

    sub = await js.subscribe(f"{root}.templates.{template}.>", cb=on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    info = await sub.consumer_info()
    if info.num_pending or (info.delivered is not None and info.delivered.consumer_seq):
        while True:  # catch up before serving: the first request already sees the set
            msg = await queue.get()
            _apply_message(follower, msg)
            if not msg.metadata.num_pending:
                break
    await follower.reconcile()

    async def run() -> None:
        while True:
            msg = await queue.get()
            _apply_message(follower, msg)
            if queue.empty():
                await follower.reconcile()

    return client, asyncio.get_running_loop().create_task(run())


def _apply_message(follower: AdapterFollower, msg: Any) -> None:
    try:
        event = decode(msg.headers, msg.data)
    except EventDecodeError:
        return
    follower.apply(event.kind, event.data)


def settings_from_env() -> AdapterSettings | None:
    return AdapterSettings.from_env(os.environ)
