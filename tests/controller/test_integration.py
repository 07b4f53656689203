"""The whole controller against a real nats-server and the `dir` sink.

Each test gets its own stream and subject root on the module's server, so tests do
not see each other's events. Waits are bounded polls for an eventual condition, never
assertions about how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import BaseModel

from controller.app import Controller
from controller.cli import build_config
from controller.config import ControllerConfig
from controller.consumer import EventConsumer
from controller.labels import Object
from controller.metrics import ControllerMetrics
from controller.publisher import NatsPublisher
from controller.reconciler import Reconciler
from controller.render import render_inference_service
from controller.sinks.base import ApplyAction, TransientSinkError
from controller.sinks.dir import DirSink
from controller.state import Deployment, DesiredState
from events.codec import NATS_MSG_ID, EventDecodeError, decode, encode
from events.stream import StreamSettings, provision_stream
from events.types import (
    DeploymentRequested,
    DeploymentStopped,
    EventKind,
    TemplateVersionPublished,
    template_subject,
)
from templates.catalog import load_catalog

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the loop of the module-scoped fixtures
CATALOG = load_catalog()
TINY = next(v for v in CATALOG if v.name == "tiny-demo")
_ids = itertools.count()


def tiny(number: int, max_tokens: int = 32) -> TemplateVersionPublished:
    document = TINY.to_document()
    document["version"] = number
    document["spec"]["generation"]["sampling"]["max_tokens"] = max_tokens
    return TemplateVersionPublished.model_validate(document)


async def wait_for(condition: Callable[[], Any], what: str, limit: float = 15.0) -> Any:
    """Poll until `condition()` is truthy; fail with `what` if it never becomes so."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


class FlakySink(DirSink):
    """The real dir sink whose first `failures` writes fail like an API 503."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root, fsync=False)
        self.failures = failures
        self.attempts = 0

    async def apply(self, isvc: Object) -> ApplyAction:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise TransientSinkError("503 Service Unavailable")
        return await super().apply(isvc)


class UnlistableSink(DirSink):
    """The real dir sink whose first `failures` listings fail like an API server that is down."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root, fsync=False)
        self.failures = failures
        self.listings = 0

    async def list_managed(self) -> list[Object]:
        self.listings += 1
        if self.failures > 0:
            self.failures -= 1
            raise TransientSinkError("connection refused")
        return await super().list_managed()


class Env:
    """One test's stream, subject root, GitOps directory and NATS client."""

    def __init__(self, nats_url: str, directory: Path, nc: NatsClient) -> None:
        n = next(_ids)
        self.root = f"it{n}"
        self.directory = directory
        self.nc = nc
        self.js = nc.jetstream()
        self.config = build_config(
            {
                "nats.url": nats_url,
                "stream": f"IT{n}",
                "subject_root": self.root,
                "durable": "controller",
                "sink": "dir",
                "dir": directory,
                "namespaces": ["default", "llm"],
                "metrics_host": "127.0.0.1",
                "metrics_port": 0,
                "retry_backoff_s": 0.05,
                "resync_interval_s": 0,
            }
        )
        self.dead_letters: list[Any] = []
        self.status: list[tuple[str, Any]] = []

    async def listen(self) -> None:
        """Collect the controller's dead letters and status events (junk a test puts on those subjects is skipped)."""

        async def on_dead_letter(msg: Msg) -> None:
            with contextlib.suppress(EventDecodeError):
                self.dead_letters.append(decode(msg.headers, msg.data).data)

        async def on_status(msg: Msg) -> None:
            with contextlib.suppress(EventDecodeError):
                event = decode(msg.headers, msg.data)
                self.status.append((event.kind.value, event.data))

        await self.nc.subscribe(f"{self.root}.deadletter.>", cb=on_dead_letter)
        await self.nc.subscribe(f"{self.root}.status.>", cb=on_status)

    async def publish(self, kind: EventKind, data: BaseModel, template: str, *, event_id: str | None = None) -> None:
        headers, payload = encode(kind, data, source="/tests", subject_template=template, event_id=event_id)
        await self.js.publish(template_subject(template, kind, self.root), payload, headers=headers)

    async def publish_raw(self, subject_suffix: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        await self.js.publish(f"{self.root}.templates.{subject_suffix}", payload, headers=headers)

    def file(self, name: str, namespace: str = "default") -> Path:
        return self.directory / namespace / f"{name}.yaml"

    def version_of(self, name: str, namespace: str = "default") -> str | None:
        path = self.file(name, namespace)
        if not path.exists():
            return None
        return str(yaml.safe_load(path.read_text())["metadata"]["labels"]["stokehold.dev/version"])

    @asynccontextmanager
    async def controller(self, sink: DirSink | None = None, config: ControllerConfig | None = None) -> AsyncIterator[Controller]:
        controller = Controller(config or self.config, sink=sink)
        task = asyncio.create_task(controller.run())
        started = asyncio.create_task(controller.wait_started())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raise the start-up error
        try:
            yield controller
        finally:
            controller.stop()
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def env(nats_server: Any, tmp_path: Path) -> AsyncIterator[Env]:
    nc = await nats.connect(nats_server.url)
    environment = Env(nats_server.url, tmp_path / "gitops", nc)
    await environment.listen()
    yield environment
    await nc.drain()


async def settled(controller: Controller, env: Env, predicate: Callable[[], bool] = lambda: True) -> None:
    """Wait until the durable consumer has nothing pending or unacknowledged, and `predicate` holds."""

    async def idle() -> bool:
        info = await env.js.consumer_info(env.config.stream, env.config.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline:
        if await idle() and predicate():
            return
        await asyncio.sleep(0.02)
    info = await env.js.consumer_info(env.config.stream, env.config.durable)
    pytest.fail(f"the controller did not settle: {info}")


async def test_catalog_events_become_files_with_status_events(env: Env) -> None:
    async with env.controller() as controller:
        for version in CATALOG:
            await env.publish(EventKind.VERSION_PUBLISHED, TemplateVersionPublished.model_validate(version.to_document()), version.name)
            await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template=version.name, namespace="llm"), version.name)
        await settled(controller, env, lambda: all(env.file(v.name, "llm").exists() for v in CATALOG))
        for version in CATALOG:
            expected = render_inference_service(version, Deployment(version.name, "llm", version.name, None), env.config.render)
            written = yaml.safe_load(env.file(version.name, "llm").read_text())
            del written["metadata"]["annotations"]["stokehold.dev/source-event-id"]
            assert written == expected, f"{version.name} is the pure rendering of its version"
        applied = [data for kind, data in await wait_for(lambda: len(env.status) >= 3 * len(CATALOG) and env.status, "status events")]
        created = {d.name for d in applied if getattr(d, "action", None) == "created"}
        assert created == {v.name for v in CATALOG}
        multinode = next(d for d in applied if getattr(d, "name", "") == "llama-3-3-70b-instruct-multinode" and hasattr(d, "action"))
        assert multinode.scale_to_zero is False and "cannot scale a multi-pod service to zero" in multinode.note
        loading = {d.name for d in applied if getattr(d, "status", None) == "LOADING"}
        assert loading == created
        assert env.dead_letters == []


async def test_duplicates_identical_content_and_older_versions_cause_no_regression(env: Env) -> None:
    async with env.controller() as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(3, max_tokens=64), "tiny-demo")
        await settled(controller, env, lambda: env.version_of("tiny-demo") == "3")
        mtime = env.file("tiny-demo").stat().st_mtime_ns
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=16), "tiny-demo")  # older, after newer
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(3, max_tokens=64), "tiny-demo")  # identical duplicate, new id
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")  # the same request
        await settled(controller, env)
        assert env.version_of("tiny-demo") == "3"
        assert env.file("tiny-demo").stat().st_mtime_ns == mtime, "identical content: not rewritten"
        assert controller.state.versions.latest("tiny-demo").version == 3  # type: ignore[union-attr]
        unchanged = await wait_for(
            lambda: [d for k, d in env.status if k == "deployment.applied" and d.action == "unchanged"], "the unchanged status"
        )
        assert unchanged[0].version == 3
        assert env.dead_letters == []


async def test_bad_events_are_dead_lettered_with_a_reason_and_lose_nothing(env: Env) -> None:
    async with env.controller() as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        bad_spec = tiny(2).to_document()
        bad_spec["spec"]["resources"] = {"gpus": 1}
        bad_spec["spec"]["parallelism"] = {"tensor": 2}
        headers, _ = encode(EventKind.VERSION_PUBLISHED, tiny(9), source="/tests", subject_template="tiny-demo")
        for event_id, payload in (("bad-spec", json.dumps(bad_spec).encode()), ("not-json", b"{not json")):
            await env.publish_raw("tiny-demo.template.version.published", payload, headers | {"ce-id": event_id, NATS_MSG_ID: event_id})
        await env.publish_raw("tiny-demo.template.version.published", b"{}", {"content-type": "application/json"})
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1, max_tokens=99), "tiny-demo", event_id="immutable")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="nope"), "nope", event_id="unknown-template")
        await env.publish(
            EventKind.DEPLOYMENT_STOPPED, DeploymentStopped(template="tiny-demo", name="ghost"), "tiny-demo", event_id="ghost"
        )
        wrong_subject = tiny(5)
        headers, payload = encode(
            EventKind.VERSION_PUBLISHED, wrong_subject, source="/tests", subject_template="other", event_id="wrong-subject"
        )
        await env.publish_raw("other.template.version.published", payload, headers)
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await settled(controller, env, lambda: len(env.dead_letters) >= 7 and env.file("tiny-demo").exists())
        reasons = {d.original_id: d.reason for d in env.dead_letters}
        assert "parallelism" in reasons["bad-spec"]
        assert reasons["not-json"]
        assert "immutable" in reasons["immutable"]
        assert "unknown template 'nope'" in reasons["unknown-template"]
        assert "no deployment default/ghost" in reasons["ghost"]
        assert "'other'" in reasons["wrong-subject"] and "'tiny-demo'" in reasons["wrong-subject"]
        assert len(env.dead_letters) == 7 and all(d.stream_sequence for d in env.dead_letters), "each names the original in the stream"
        assert controller.state.versions.get("tiny-demo", 1).spec.generation.sampling.max_tokens == 32  # type: ignore[union-attr]
        assert env.version_of("tiny-demo") == "1", "the controller kept working after the bad events"
        stream = await env.js.stream_info(env.config.stream)
        assert (stream.state.messages, stream.state.num_deleted) == (2, 7), "valid events stay; rejected ones hold no capacity"


async def test_transient_sink_failures_are_retried_until_applied(env: Env) -> None:
    sink = FlakySink(env.directory, failures=3)
    async with env.controller(sink=sink) as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await settled(controller, env, lambda: env.file("tiny-demo").exists())
        assert sink.attempts == 4
        assert controller.metrics.events.labels(EventKind.DEPLOYMENT_REQUESTED.ce_type, "retried")._value.get() >= 1
        assert env.dead_letters == []


async def test_restart_rebuilds_state_from_the_stream_and_repairs_drift(env: Env) -> None:
    async with env.controller() as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=48), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="pinned", version=1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="latest"), "tiny-demo")
        await settled(controller, env, lambda: env.file("pinned").exists() and env.file("latest").exists())
    kept = env.file("latest").stat().st_mtime_ns
    env.file("pinned").unlink()  # drift while the controller is down

    sink = FlakySink(env.directory, failures=0)
    async with env.controller(sink=sink) as restarted:
        assert len(restarted.state.versions) == 2 and set(restarted.state.deployments) == {("default", "pinned"), ("default", "latest")}
        await settled(restarted, env, lambda: env.file("pinned").exists())
        assert sink.attempts == 1, "only the missing object is written"
        assert env.file("latest").stat().st_mtime_ns == kept
        assert env.version_of("pinned") == "1" and env.version_of("latest") == "2"
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="third", version=2), "tiny-demo")
        await settled(restarted, env, lambda: env.file("third").exists())
        assert env.dead_letters == []


async def test_a_sink_that_is_down_at_start_is_retried_without_new_events(env: Env) -> None:
    async with env.controller() as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await settled(controller, env, lambda: env.file("tiny-demo").exists())
    env.file("tiny-demo").unlink()
    sink = UnlistableSink(env.directory, failures=2)
    async with env.controller(sink=sink) as restarted:
        assert restarted.readiness().ready, "the controller consumes although the sink could not be listed"
        await wait_for(lambda: env.file("tiny-demo").exists(), "the resync loop to repair the missing object")
        assert sink.listings == 3


async def test_the_cli_process_serves_and_stops_gracefully_on_sigterm(env: Env, tmp_path: Path) -> None:
    log = tmp_path / "controller.log"

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]

    with log.open("wb") as handle:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "controller", "run", "--sink", "dir", "--dir", str(env.directory), "--metrics-port", "0"),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "STOKEHOLD_NATS_URL": ",".join(env.config.nats.url),
                "STOKEHOLD_STREAM": env.config.stream,
                "STOKEHOLD_SUBJECT_ROOT": env.root,
                "STOKEHOLD_METRICS_HOST": "127.0.0.1",
                "STOKEHOLD_NAMESPACES": '["default"]',
            },
        )
    try:
        await wait_for(lambda: any(entry["message"] == "initial reconciliation" for entry in lines()), "the controller to start")
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await wait_for(lambda: env.file("tiny-demo").exists(), "the file written by the controller process")
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 30)
    assert returncode == 0
    messages = [entry["message"] for entry in lines()]
    assert messages[-1] == "controller stopped", "graceful: the consumer finished and NATS was drained"
    assert all(entry["level"] in {"info", "warning"} for entry in lines())


async def test_overlapping_batches_keep_each_templates_events_in_order(env: Env) -> None:
    """A batch's group may wait (here: publishing a dead letter) before it reduces its later events;
    the next batch's group of the same template must not overtake it, or those events would look
    like redeliveries and be skipped."""
    await provision_stream(env.js, StreamSettings(name=env.config.stream, subject_root=env.root))
    state, metrics = DesiredState(allowed_namespaces=frozenset({"default"})), ControllerMetrics()
    publisher = NatsPublisher(env.js, "/tests", env.root, metrics)
    reconciler = Reconciler(state, DirSink(env.directory, fsync=False), env.config.render, publisher, metrics)
    consumer = EventConsumer(env.js, env.config, state, reconciler, publisher, metrics)
    subscription = await consumer.subscribe()
    await env.publish_raw("tiny-demo.template.version.published", b"{not json", {"ce-id": "bad", "ce-type": "x"})
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
    await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
    first = await subscription.fetch(3, timeout=5)
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=64), "tiny-demo")
    second = await subscription.fetch(1, timeout=5)
    await asyncio.gather(consumer.handle(first), consumer.handle(second))
    assert ("default", "tiny-demo") in state.deployments, "the deployment of the first batch was reduced"
    assert [v.version for v in state.versions.versions("tiny-demo")] == [1, 2]
    assert env.version_of("tiny-demo") == "2"
    await wait_for(lambda: len(env.dead_letters) == 1, "the dead letter")
    await publisher.flush()
    await subscription.unsubscribe()


async def test_ops_endpoints(env: Env) -> None:
    async with env.controller() as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await settled(controller, env)
        base = f"http://127.0.0.1:{controller.ops.port}"
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{base}/healthz")).status_code == 200
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"ready": True, "nats_connected": True, "state_rebuilt": True, "role": "leader"}
            metrics = (await client.get(f"{base}/metrics")).text
        assert 'stokehold_controller_events_total{outcome="unchanged",type="dev.stokehold.template.version.published"} 1.0' in metrics
        assert "stokehold_controller_consumer_pending 0.0" in metrics
        assert "stokehold_controller_template_versions 1.0" in metrics
