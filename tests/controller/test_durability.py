"""Nothing lost: a full stream, a missing history, poison events, an unusable or hostile GitOps directory, SIGKILL.

The whole controller (in process, or as its own process) against a real nats-server and the
`dir` sink, each test on its own streams (see `Env` in test_integration.py). Root ignores
permission bits, so an unusable directory is made with what binds root too: a file where the
namespace directory should be (ENOTDIR/EEXIST from the kernel), or `chattr +i` (EPERM) where
the file system and the capability allow it.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from controller.consumer import MAX_REASON_CHARS, EventConsumer, RebuildIncomplete
from controller.metrics import ControllerMetrics
from controller.publisher import NatsPublisher
from controller.reconciler import Reconciler
from controller.sinks.dir import DirSink
from controller.state import Change, DesiredState, InboundEvent
from events.codec import encode
from events.publisher import Publisher, PublishError
from events.stream import StreamSettings, provision_stream
from events.types import (
    DeploymentApplied,
    DeploymentDeleted,
    DeploymentRequested,
    DeploymentStopped,
    EventKind,
    EventRejected,
    StreamRole,
    TemplateVersionPublished,
    stream_name,
    template_subject,
)
from tests.controller.test_dir_sink import FILE_IN_THE_WAY, IMMUTABLE, block, hostile_directory, unblock
from tests.controller.test_integration import CATALOG, Env, env, settled, tiny, wait_for
from tests.fixtures.controller_process import ControllerProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")
MIB = 1024 * 1024
JUNK = b"x" * 60_000
__all__ = ["env"]  # the fixture, imported for this module's tests


def settings_of(env: Env, **limits: Any) -> StreamSettings:
    return StreamSettings(name=env.config.stream, subject_root=env.root, **limits)


async def publish(env: Env, kind: EventKind, data: Any, template: str) -> int:
    headers, payload = encode(kind, data, source="/tests", subject_template=template)
    return (await env.js.publish(template_subject(template, kind, env.root), payload, headers=headers)).seq


def kept(env: Env) -> list[DeploymentApplied]:
    return [data for kind, data in env.status if isinstance(data, DeploymentApplied) and data.action == "kept"]


# ---------------------------------------------------------------- finding 1: the desired state is never evicted


async def test_a_full_desired_state_stream_refuses_new_events_and_a_restart_keeps_every_deployment(env: Env) -> None:
    """The finding's repro: 2 MiB, the catalog, two deployments, then 60 x 60 KB of junk on another template's
    subject and status/dead-letter traffic beyond their limits, then a restart. Before: both services deleted."""
    await provision_stream(env.js, settings_of(env, max_bytes=2 * MIB, status_max_bytes=MIB))
    deployed = ["tiny-demo", next(v.name for v in CATALOG if v.name != "tiny-demo")]
    async with env.controller() as controller:
        for version in CATALOG:
            await publish(env, EventKind.VERSION_PUBLISHED, TemplateVersionPublished.model_validate(version.to_document()), version.name)
        for name in deployed:
            await publish(env, EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template=name), name)
        await settled(controller, env, lambda: all(env.file(name).exists() for name in deployed) or bool(env.dead_letters))
        assert env.dead_letters == []
    desired = stream_name(StreamRole.DESIRED, env.config.stream)
    before = (await env.js.stream_info(desired)).state

    refusals: list[str] = []
    for _ in range(60):
        try:
            await env.js.publish(f"{env.root}.templates.junk.template.version.published", JUNK)
        except nats.js.errors.APIError as exc:
            refusals.append(str(exc.description))
    for size in (1000, 100, 1):  # and smaller junk into what is left, until even that is refused
        for _ in range(100):
            try:
                await env.js.publish(f"{env.root}.templates.junk.template.version.published", JUNK[:size])
            except nats.js.errors.APIError:
                break
    for subject in (f"{env.root}.status.junk.deployment.applied", f"{env.root}.deadletter.junk"):
        for _ in range(40):  # 2.4 MB into streams of 1 MiB: the oldest go
            await env.js.publish(subject, JUNK)
    async with Publisher(env.nc, stream=desired, subject_root=env.root) as publisher:
        with pytest.raises(PublishError, match="maximum bytes"):
            await publisher.request_deployment("tiny-demo", name="third")

    full = (await env.js.stream_info(desired)).state
    assert refusals and set(refusals) == {"maximum bytes exceeded"}, "a full stream refuses new events"
    assert full.first_seq == 1 and full.messages == full.last_seq, "and drops nothing it holds"
    for role in (StreamRole.STATUS, StreamRole.DEADLETTER):
        side = (await env.js.stream_info(stream_name(role, env.config.stream))).state
        assert side.bytes <= MIB and side.first_seq > 1, f"the {role} stream dropped its oldest events"

    async with env.controller() as restarted:
        await settled(restarted, env)
        assert all(env.file(name).exists() for name in deployed), "the restart deleted nothing"
        assert set(restarted.state.deployments) == {("default", name) for name in deployed}
        after = (await env.js.stream_info(desired)).state
        assert after.messages == before.messages, "the dead-lettered junk was deleted from the desired state"
        await publish(env, EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="third"), "tiny-demo")
        await settled(restarted, env, lambda: env.file("third").exists())


async def test_objects_whose_history_is_missing_are_kept_until_an_explicit_delete(env: Env) -> None:
    """Events deleted from the stream (by hand, a purge, a recreated stream): a rebuild lacks them, and the
    objects they asked for stay, reported, until a deployment.deleted names them."""
    async with env.controller() as controller:
        await publish(env, EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        lost = await publish(env, EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="lost"), "tiny-demo")
        await publish(env, EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="known"), "tiny-demo")
        await settled(controller, env, lambda: env.file("lost").exists() and env.file("known").exists())
    await env.js.delete_msg(env.config.stream, lost)

    async with env.controller() as restarted:
        await settled(restarted, env)
        assert ("default", "lost") not in restarted.state.deployments
        assert env.file("lost").exists() and env.file("known").exists()
        assert restarted.metrics.kept_objects._value.get() == 1
        report = (await wait_for(lambda: kept(env), "the kept status event"))[0]
        assert (report.name, report.version) == ("lost", 1) and "deployment.deleted" in (report.note or "")

        await publish(env, EventKind.DEPLOYMENT_DELETED, DeploymentDeleted(template="tiny-demo", name="lost"), "tiny-demo")
        await settled(restarted, env, lambda: not env.file("lost").exists())
        assert env.file("known").exists() and restarted.metrics.kept_objects._value.get() == 0
        assert env.dead_letters == []


# ------------------------------------------------------------------------- finding 2: poison ends


async def test_a_poison_event_gets_one_bounded_dead_letter_and_leaves_the_stream(env: Env) -> None:
    """250 KB of DEL characters as a vllm_args key: its repr grew five-fold into a 1.25 MB dead letter, over
    the message size cap, so the event was retried forever."""
    letters: list[Msg] = []

    async def on_letter(msg: Msg) -> None:
        letters.append(msg)

    await env.nc.subscribe(f"{env.root}.deadletter.>", cb=on_letter)
    document = tiny(2).to_document()
    document["spec"]["engine"]["vllm_args"] = {"\x7f" * 250_000: 1}
    headers, _ = encode(EventKind.VERSION_PUBLISHED, tiny(2), source="/tests", subject_template="tiny-demo")
    payload = json.dumps(document, ensure_ascii=False).encode()
    async with env.controller() as controller:
        await publish(env, EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        ack = await env.js.publish(template_subject("tiny-demo", EventKind.VERSION_PUBLISHED, env.root), payload, headers=headers)
        await publish(env, EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await settled(controller, env, lambda: env.file("tiny-demo").exists() and len(letters) == 1)
    [letter] = letters
    size = len(letter.data) + sum(len(k) + len(v) for k, v in (letter.headers or {}).items())
    [rejected] = env.dead_letters
    assert isinstance(rejected, EventRejected) and rejected.stream_sequence == ack.seq
    assert size < 16 * 1024 and len(rejected.reason) <= MAX_REASON_CHARS, f"a dead letter of {size} bytes"
    assert "vllm_args key" in rejected.reason and "250000 characters" in rejected.reason
    with pytest.raises(nats.js.errors.NotFoundError):
        await env.js.get_msg(env.config.stream, ack.seq)  # junk holds no capacity


class RefusedDeadLetters:
    """A dead-letter stream that refuses everything (e.g. full and discard new, or gone)."""

    def __init__(self) -> None:
        self.attempts = 0

    async def dead_letter(self, data: EventRejected, template: str | None) -> None:
        self.attempts += 1
        raise RuntimeError("nats: maximum payload exceeded")


async def test_an_event_whose_dead_letter_never_fits_ends_after_its_last_delivery(env: Env) -> None:
    config = env.config.model_copy(update={"max_deliveries": 3, "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05})
    await provision_stream(env.js, settings_of(env))
    state, metrics, refused = DesiredState(allowed_namespaces=frozenset({"default"})), ControllerMetrics(), RefusedDeadLetters()
    publisher = NatsPublisher(env.js, "/tests", env.root, metrics)
    reconciler = Reconciler(state, DirSink(env.directory, fsync=False), config.render, publisher, metrics)
    consumer = EventConsumer(env.js, config, state, reconciler, refused, metrics)
    await env.publish_raw("tiny-demo.template.version.published", b"{not json", {"ce-id": "poison", "ce-type": "x"})
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
    await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: metrics.gave_up.labels("dead_letter")._value.get() == 1, "giving up on the poison event")
        await wait_for(lambda: env.file("tiny-demo").exists(), "the valid events behind it")
        for _ in range(500):
            info = await env.js.consumer_info(config.stream, config.durable)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.02)
        assert info.num_ack_pending == 0 and info.num_pending == 0 and info.ack_floor.stream_seq == 3, info
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)
        await publisher.flush()
    assert refused.attempts == 3, "delivered exactly max_deliveries times"
    totals = [s for m in metrics.events.collect() for s in m.samples if s.name.endswith("_total")]
    poison = {s.labels["outcome"]: s.value for s in totals if s.labels.get("type") == "x"}
    assert poison == {"retried": 2.0, "gave_up": 1.0}


async def consumer_alone(env: Env) -> tuple[DesiredState, ControllerMetrics, NatsPublisher, EventConsumer]:
    """The consumer without the controller's fetch loop: a test hands it the batches, in the order it chooses."""
    await provision_stream(env.js, settings_of(env))
    state, metrics = DesiredState(allowed_namespaces=frozenset({"default"})), ControllerMetrics()
    publisher = NatsPublisher(env.js, "/tests", env.root, metrics)
    reconciler = Reconciler(state, DirSink(env.directory, fsync=False), env.config.render, publisher, metrics)
    return state, metrics, publisher, EventConsumer(env.js, env.config, state, reconciler, publisher, metrics, client=env.nc)


async def test_a_delivery_lost_on_the_way_is_applied_in_order_when_it_comes_back(env: Env) -> None:
    """Found by the poison storm at soak size: the server cut the controller off as a slow consumer, deliveries
    were lost, later events of their templates were handled first (a deployment request rejected for a version
    not seen yet, a stop for a deployment not seen yet), and the lost ones, back after their ack wait, were
    taken for redeliveries (below the template's high-water mark) and skipped."""
    state, metrics, publisher, consumer = await consumer_alone(env)
    subscription = await consumer.subscribe()
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
    await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=64), "tiny-demo")
    await env.publish(EventKind.DEPLOYMENT_STOPPED, DeploymentStopped(template="tiny-demo"), "tiny-demo")
    batch = await subscription.fetch(4, timeout=5)
    lost = [msg for msg in batch if msg.metadata.sequence.stream == 3]
    await consumer.handle([msg for msg in batch if msg not in lost])  # version 2 lost on the way: a gap in the deliveries
    assert env.version_of("tiny-demo") == "2" and state.deployments[("default", "tiny-demo")].stopped, "all reduced in stream order"
    await consumer.handle(lost)  # back after its ack wait: a redelivery by then
    await publisher.flush()
    await subscription.unsubscribe()
    assert env.version_of("tiny-demo") == "2" and state.deployments[("default", "tiny-demo")].stopped
    assert metrics.order_rebuilds._value.get() == 1
    assert [v.version for v in state.versions.versions("tiny-demo")] == [1, 2] and env.dead_letters == []


@pytest.mark.parametrize("later", ["in the next batch", "in a batch already in flight"])
async def test_an_event_retried_unreduced_is_not_overtaken_by_a_later_one(env: Env, monkeypatch: pytest.MonkeyPatch, later: str) -> None:
    """Found by the poison storm under load: handling a template's group failed (a rebuild cut short by the
    server) after some of its events were reduced and before others; those were retried, and a later event
    of the template, in the next batch, was reduced first: a deployment pinned to a version not reduced yet
    was dead-lettered. Here reducing version 2 fails once, as an unexpected error would."""
    state, metrics, publisher, consumer = await consumer_alone(env)
    subscription = await consumer.subscribe()
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
    failing = await publish(env, EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=64), "tiny-demo")
    await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", version=2), "tiny-demo")
    reduce, failed = state.apply, list[int]()

    def apply_failing_once(event: InboundEvent) -> Change:
        if event.sequence == failing and not failed:
            failed.append(event.sequence)
            raise RuntimeError("an unexpected error while reducing")
        return reduce(event)

    monkeypatch.setattr(state, "apply", apply_failing_once)
    first, second = await subscription.fetch(2, timeout=5), await subscription.fetch(1, timeout=5)
    if later == "in the next batch":
        await consumer.handle(first)  # version 1 reduced, version 2 not: both retried
        await consumer.handle(second)  # the deployment of version 2, next in the deliveries (no gap): a rebuild first
    else:
        await asyncio.gather(consumer.handle(first), consumer.handle(second))  # the second waits for the first's group
        assert ("default", "tiny-demo") not in state.deployments, "retried with the events it must follow"
        redelivered: list[Msg] = []
        while len(redelivered) < 3:
            redelivered += await subscription.fetch(3 - len(redelivered), timeout=10)
        await consumer.handle(redelivered)  # back after their nak delay: a rebuild first
    assert failed == [failing] and metrics.dead_letters._value.get() == 0, "the pinned deployment waited for its version"
    assert state.deployments[("default", "tiny-demo")].version == 2 and env.version_of("tiny-demo") == "2"
    assert metrics.order_rebuilds._value.get() == 1
    await publisher.flush()
    await subscription.unsubscribe()


async def test_the_very_first_deliveries_lost_are_a_gap_too(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the poison storm under load: the count of deliveries started at the first one received, so
    losing the first deliveries of a subscription (the durable's after a start, or a rebuild's own) showed no
    gap. The rebuild then gave a state without those events (the junk deleted ahead of them, they were the
    legitimate versions), and the next deployment requests and stops were dead-lettered."""
    state, metrics, publisher, consumer = await consumer_alone(env)
    subscription = await consumer.subscribe()
    await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
    await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
    batch = await subscription.fetch(2, timeout=5)
    await consumer.handle(batch[1:])  # the first delivery of the durable lost on the way
    assert metrics.dead_letters._value.get() == 0 and env.version_of("tiny-demo") == "1"
    assert metrics.order_rebuilds._value.get() == 1
    await publisher.flush()
    await subscription.unsubscribe()

    subscribe, dropped = env.js.pull_subscribe, list[int]()

    async def losing_the_first_delivery(*args: Any, **kwargs: Any) -> Any:
        sub = await subscribe(*args, **kwargs)
        fetch = sub.fetch

        async def fetch_losing_the_first(*fetch_args: Any, **fetch_kwargs: Any) -> list[Msg]:
            msgs: list[Msg] = await fetch(*fetch_args, **fetch_kwargs)
            if not dropped:
                dropped.append(msgs[0].metadata.sequence.stream)
                return msgs[1:]
            return msgs

        sub.fetch = fetch_losing_the_first
        return sub

    monkeypatch.setattr(env.js, "pull_subscribe", losing_the_first_delivery)
    with pytest.raises(RebuildIncomplete, match="lost on the way"):
        await consumer.rebuild(into=state.cleared())
    fresh = state.cleared()
    assert await consumer.rebuild(into=fresh) == 2 and fresh.versions.latest("tiny-demo") is not None, "read whole the next time"


# ------------------------------------------------------- finding 5: sink I/O errors are transient


@pytest.mark.parametrize("how", [FILE_IN_THE_WAY, IMMUTABLE])
async def test_an_unusable_directory_loses_no_update_and_is_written_as_soon_as_it_recovers(env: Env, how: str) -> None:
    """Finding 5: EPERM dead-lettered a deployment and acknowledged a version update that was then lost; nothing was
    retried until the 10-minute resync. Here the resync is off and no event follows the repair."""
    config = env.config.model_copy(update={"resync_interval_s": 0, "retry_backoff_max_s": 1.0})
    directory = env.directory / "default"
    async with env.controller(config=config) as controller:
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await settled(controller, env, lambda: env.version_of("tiny-demo") == "1")
        how = block(directory, how)
        try:
            await env.publish(EventKind.VERSION_PUBLISHED, tiny(2, max_tokens=64), "tiny-demo")
            await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="second"), "tiny-demo")
            retried = controller.metrics.events.labels
            await wait_for(
                lambda: (
                    retried(EventKind.VERSION_PUBLISHED.ce_type, "retried")._value.get() >= 1
                    and retried(EventKind.DEPLOYMENT_REQUESTED.ce_type, "retried")._value.get() >= 1
                ),
                "both events to meet the unusable directory",
            )
            assert controller.reconciler is not None and controller.reconciler.unsettled == {"tiny-demo"}
        finally:
            unblock(directory, how)
        await settled(controller, env, lambda: env.version_of("tiny-demo") == "2" and env.version_of("second") == "2")
        assert env.dead_letters == [] and controller.metrics.gave_up.labels("sink")._value.get() == 0
        assert controller.reconciler.unsettled == set()


# ---------------------------------------------------------- finding 6: hostile files, SIGKILL leftovers


async def test_hostile_files_in_the_directory_do_not_stop_the_controller(env: Env, tmp_path: Path) -> None:
    """A 5,000-digit number made the controller exit at start (and crash-loop)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = hostile_directory(env.directory, outside, namespace="default")
    async with env.controller() as controller:
        assert controller.metrics.unreadable_files._value.get() == len(hostile) - 1, "all but the symlinked namespace (not served)"
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo"), "tiny-demo")
        await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name="link"), "tiny-demo")
        await settled(controller, env, lambda: env.file("tiny-demo").exists() and len(env.dead_letters) == 1)
        assert "symbolic link" in env.dead_letters[0].reason, "never written through the link"
    assert (outside / "shadow").read_text().startswith("root:$6$")


async def test_sigkill_leaves_no_temporary_files(env: Env, tmp_path: Path) -> None:
    """A write killed between creating its temporary file and renaming it leaves `.<name>.yaml.<random>.tmp`;
    one is planted as such a kill leaves it, and the controller is killed at random moments while writing."""
    (env.directory / "default").mkdir(parents=True)
    planted = env.directory / "default" / ".tiny-demo.yaml.z8k2_qm1.tmp"
    planted.write_text("half an Infer")
    await provision_stream(env.js, settings_of(env))
    process = ControllerProcess(
        ["--sink", "dir", "--dir", str(env.directory)],
        tmp_path / "controller.log",
        {
            "STOKEHOLD_NATS_URL": ",".join(env.config.nats.url),
            "STOKEHOLD_STREAM": env.config.stream,
            "STOKEHOLD_SUBJECT_ROOT": env.root,
            "STOKEHOLD_METRICS_HOST": "127.0.0.1",
            "STOKEHOLD_NAMESPACES": '["default"]',
            "STOKEHOLD_ACK_WAIT_S": "2",
        },
    )
    names = [f"d{index}" for index in range(5)]
    rng = random.Random(17)
    last = 60
    try:
        process.start()
        await asyncio.to_thread(process.wait_ready)
        await env.publish(EventKind.VERSION_PUBLISHED, tiny(1), "tiny-demo")
        for name in names:
            await env.publish(EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template="tiny-demo", name=name), "tiny-demo")
        for number in range(2, last + 1):
            await env.publish(EventKind.VERSION_PUBLISHED, tiny(number, max_tokens=number), "tiny-demo")
            if number % 20 == 0:
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                process.kill()
                process.start()
        await wait_for(lambda: all(env.version_of(name) == str(last) for name in names), "the last version everywhere", limit=60)
    finally:
        process.stop()
    leftovers = sorted(
        str(path.relative_to(env.directory)) for path in env.directory.rglob("*") if path.is_file() and path.suffix != ".yaml"
    )
    assert leftovers == [], process.log_tail()
