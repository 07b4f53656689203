"""Against a real nats-server: the stream, the publisher, readers, deduplication and ordering."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType

import events
from events.codec import EventDataError, encode, nats_subject
from events.local_server import LocalNatsServer
from events.options import NatsOptions
from events.publisher import Publisher, PublishError
from events.reader import ReceivedEvent, follow, replay, status_subjects
from events.stream import ProvisionOutcome, StreamConfigMismatch, StreamSettings, provision_stream
from events.types import STREAM_NAME, DeploymentRequested, EventKind, stream_for
from tests.events.samples import sample, version_of
from tests.fixtures.nats import nats_client

INBOUND = [kind for kind in EventKind if kind.inbound]


async def _all(options: NatsOptions, subject_filter: str | None = None) -> list[ReceivedEvent]:
    async with nats_client(options) as client, contextlib.aclosing(replay(client, subject_filter)) as items:
        return [item async for item in items]


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_every_event_round_trips_through_jetstream(nats_options: NatsOptions, clean_stream: StreamSettings, mode: str) -> None:
    async with nats_client(nats_options) as client:
        publisher = Publisher(client, mode=mode, source="/tests/jetstream")  # type: ignore[arg-type]
        results = [await publisher.publish(kind, sample(kind)) for kind in EventKind]

    stored = {item.event.id: item for item in await _all(nats_options) if item.event is not None}

    assert len(stored) == len(EventKind)
    for kind, result in zip(EventKind, results, strict=True):
        item = stored[result.event_id]
        assert item.event is not None and (item.event.kind, item.event.mode) == (kind, mode)
        assert item.event.data == sample(kind)
        assert item.subject == result.subject == nats_subject(kind, sample(kind))
        assert (result.stream, result.sequence) == (stream_for(kind), item.sequence)


async def test_an_event_made_by_the_cloudevents_sdk_is_read_from_the_stream(
    nats_options: NatsOptions, clean_stream: StreamSettings
) -> None:
    event = CloudEvent(
        {
            "id": "from-sdk",
            "source": "/another/tool",
            "type": EventKind.DEPLOYMENT_REQUESTED.ce_type,
            "datacontenttype": "application/json",
        },
        {"template": "gemma-7b-it", "namespace": "llm"},
    )
    message = ce_http.to_structured(event, JSONFormat())
    async with nats_client(nats_options) as client:
        await client.jetstream().publish("stokehold.templates.gemma-7b-it.deployment.requested", message.body, headers=message.headers)

    [item] = await _all(nats_options)

    assert item.event is not None
    assert (item.event.id, item.event.mode, item.event.source) == ("from-sdk", "structured", "/another/tool")
    assert item.event.data == DeploymentRequested(template="gemma-7b-it", namespace="llm")


async def test_the_same_event_published_twice_is_stored_once(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    version = version_of("dedup", 1)
    async with nats_client(nats_options) as client:
        publisher = Publisher(client)
        first = await publisher.publish_version(version, event_id="same-id")
        second = await publisher.publish_version(version, event_id="same-id")
        info = await client.jetstream().stream_info(STREAM_NAME)

    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.sequence == second.sequence
    assert info.state.messages == 1


async def test_each_template_keeps_its_order(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    templates = ["alpha", "beta", "gamma"]

    async def publish_versions(client_publisher: Publisher, template: str) -> None:
        for number in range(1, 11):
            await client_publisher.publish_version(version_of(template, number))

    async with nats_client(nats_options) as client:
        publisher = Publisher(client)
        await asyncio.gather(*(publish_versions(publisher, template) for template in templates))

    for template in templates:
        stored = await _all(nats_options, f"stokehold.templates.{template}.>")
        numbers = [item.event.data.version for item in stored if item.event]  # type: ignore[attr-defined]
        sequences = [item.sequence or 0 for item in stored]
        assert numbers == list(range(1, 11))
        assert sequences == sorted(sequences)


async def test_provisioning_is_idempotent_and_updates_what_changed(nats_options: NatsOptions) -> None:
    settings = StreamSettings(name="PROVISION", subject_root="provision")
    async with nats_client(nats_options) as client:
        js = client.jetstream()
        created = await provision_stream(js, settings)
        again = await provision_stream(js, settings)
        updated = await provision_stream(js, settings.model_copy(update={"max_age_seconds": 3600.0, "duplicate_window_seconds": 60.0}))
        infos = {name: (await js.stream_info(name)).config for name in settings.names}
        for name in settings.names:
            await js.delete_stream(name)

    assert (created.outcome, again.outcome, updated.outcome) == (
        ProvisionOutcome.CREATED,
        ProvisionOutcome.UNCHANGED,
        ProvisionOutcome.UPDATED,
    )
    assert again.changed == {}
    assert set(updated.changed) == {
        "PROVISION.duplicate_window",
        "PROVISION_STATUS.max_age",
        "PROVISION_STATUS.duplicate_window",
        "PROVISION_DEADLETTER.max_age",
        "PROVISION_DEADLETTER.duplicate_window",
    }
    desired, status, deadletter = (infos[name] for name in settings.names)
    assert desired.subjects == ["provision.templates.>"] and status.subjects == ["provision.status.>"]
    assert deadletter.subjects == ["provision.deadletter.>"]
    assert (desired.max_age, desired.discard, desired.duplicate_window) == (0.0, DiscardPolicy.NEW, 60.0), "never aged out, never dropped"
    for side in (status, deadletter):
        assert (side.max_age, side.discard) == (3600.0, DiscardPolicy.OLD), "informational: the oldest go first"


async def test_a_stream_of_the_one_stream_layout_is_split(nats_options: NatsOptions) -> None:
    """The old layout bound status events and dead letters to the desired-state stream, aged out and discarded old."""
    settings = StreamSettings(name="SPLIT", subject_root="split")
    old = settings.config().evolve(
        subjects=["split.templates.>", "split.status.>", "split.deadletter.>"], discard=DiscardPolicy.OLD, max_age=365 * 86400.0
    )
    async with nats_client(nats_options) as client:
        js = client.jetstream()
        await js.add_stream(old)
        for subject in ("split.templates.a.deployment.requested", "split.status.a.deployment.applied", "split.deadletter.a"):
            await js.publish(subject, b"{}")
        result = await provision_stream(js, settings)
        desired = await js.stream_info("SPLIT")
        status_stream = await js.publish("split.status.a.deployment.applied", b"{}")
        for name in settings.names:
            await js.delete_stream(name)

    assert [(r.name, r.outcome) for r in result.streams] == [
        ("SPLIT", ProvisionOutcome.UPDATED),
        ("SPLIT_STATUS", ProvisionOutcome.CREATED),
        ("SPLIT_DEADLETTER", ProvisionOutcome.CREATED),
    ]
    assert {"subjects", "discard", "max_age"} <= set(result.streams[0].changed)
    assert desired.state.messages == 1, "the old status event and dead letter were purged; the inbound event stays"
    assert status_stream.stream == "SPLIT_STATUS"


async def test_a_stream_that_cannot_be_updated_is_reported_with_its_fields(nats_options: NatsOptions) -> None:
    settings = StreamSettings(name="MISMATCH", subject_root="mismatch")
    async with nats_client(nats_options) as client:
        js = client.jetstream()
        await js.add_stream(settings.config().evolve(storage=StorageType.MEMORY))
        try:
            with pytest.raises(StreamConfigMismatch) as caught:
                await provision_stream(js, settings)
        finally:
            await js.delete_stream("MISMATCH")

    assert set(caught.value.fields) == {"storage"}
    assert "storage: 'memory' (wanted 'file')" in str(caught.value)


async def test_overlapping_subjects_are_reported(nats_options: NatsOptions) -> None:
    async with nats_client(nats_options) as client:
        js = client.jetstream()
        await provision_stream(js, StreamSettings(name="FIRST", subject_root="overlap"))
        try:
            with pytest.raises(StreamConfigMismatch, match="refused to create"):
                await provision_stream(js, StreamSettings(name="SECOND", subject_root="overlap"))
        finally:
            await js.delete_stream("FIRST")


async def test_invalid_data_is_refused_before_sending(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    document = version_of("refused", 1).to_document()
    document["spec"]["resources"] = {"gpus": 2}  # 2 GPUs but tensor x pipeline = 1
    async with nats_client(nats_options) as client:
        publisher = Publisher(client)
        with pytest.raises(EventDataError) as caught:
            await publisher.publish_version(document)
        with pytest.raises(EventDataError, match="namespace"):
            await publisher.request_deployment("refused", namespace="Not A Namespace")
        info = await client.jetstream().stream_info(STREAM_NAME)

    assert [path for path, _ in caught.value.errors] == ["spec"]
    assert "parallelism" in str(caught.value)
    assert info.state.messages == 0


async def test_publishing_without_a_stream_says_to_provision(nats_options: NatsOptions) -> None:
    async with nats_client(nats_options) as client:
        publisher = Publisher(client, subject_root="nostream", stream="NOSTREAM")
        with pytest.raises(PublishError, match="stokehold stream provision"):
            await publisher.request_deployment("tiny-demo")


async def test_the_publisher_helpers_send_the_right_events(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    async with await Publisher.connect(nats_options) as publisher:
        await publisher.request_deployment("tiny-demo", version=2, namespace="llm", name="tiny", overrides={"priority": 2})
        await publisher.stop_deployment("tiny-demo", namespace="llm", name="tiny")
        await publisher.resume_deployment("tiny-demo", namespace="llm", name="tiny")
        await publisher.delete_deployment("tiny-demo", namespace="llm", name="tiny")
        await publisher.delete_version("tiny-demo", 2)

    stored = [item.event for item in await _all(nats_options)]

    assert [event.kind for event in stored if event] == [
        EventKind.DEPLOYMENT_REQUESTED,
        EventKind.DEPLOYMENT_STOPPED,
        EventKind.DEPLOYMENT_RESUMED,
        EventKind.DEPLOYMENT_DELETED,
        EventKind.VERSION_DELETED,
    ]
    requested = stored[0]
    assert requested is not None and isinstance(requested.data, DeploymentRequested)
    assert (requested.data.version, requested.data.key, requested.data.overrides.priority) == (2, ("llm", "tiny"), 2)


async def test_follow_sees_status_events_and_dead_letters_but_not_inbound_ones(
    nats_options: NatsOptions, clean_stream: StreamSettings
) -> None:
    ready = asyncio.Event()
    async with nats_client(nats_options) as client:

        async def collect() -> list[ReceivedEvent]:
            items = follow(client, status_subjects(), count=2, stop_after=10, on_ready=ready.set)
            return [item async for item in items]

        collecting = asyncio.create_task(collect())
        await ready.wait()
        publisher = Publisher(client, source="/controller")
        await publisher.request_deployment("tiny-demo")  # inbound: not followed
        await publisher.publish(EventKind.DEPLOYMENT_READY, sample(EventKind.DEPLOYMENT_READY))
        await publisher.publish(EventKind.EVENT_REJECTED, sample(EventKind.EVENT_REJECTED))
        received = await collecting

    assert [item.event.kind for item in received if item.event] == [EventKind.DEPLOYMENT_READY, EventKind.EVENT_REJECTED]
    assert [item.subject for item in received] == ["stokehold.status.tiny-demo.deployment.ready", "stokehold.deadletter.x"]


async def test_replay_reports_undecodable_messages_without_stopping(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    headers, payload = encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source="/t")
    async with nats_client(nats_options) as client:
        js = client.jetstream()
        await js.publish("stokehold.templates.tiny-demo.deployment.deleted", b"garbage", headers={"content-type": "text/plain"})
        await js.publish("stokehold.templates.tiny-demo.deployment.deleted", payload, headers=headers)

    first, second = await _all(nats_options)

    assert first.event is None and first.error is not None and "not a CloudEvent" in first.error.reason
    assert second.event is not None and second.event.kind is EventKind.DEPLOYMENT_DELETED


async def test_a_restarted_server_keeps_the_stream(tmp_path: Path) -> None:
    async with LocalNatsServer(store_dir=tmp_path / "store") as server:
        async with await Publisher.connect(server.options()) as publisher:
            await provision_stream(publisher.client.jetstream())
            await publisher.request_deployment("tiny-demo", event_id="before-restart")
        port = server.port
        await asyncio.to_thread(server.restart)

        async with nats_client(server.options()) as client:
            info = await client.jetstream().stream_info(STREAM_NAME)

    assert server.port == port
    assert info.state.messages == 1


async def test_the_one_shot_publish_function(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    result = await events.publish(EventKind.DEPLOYMENT_STOPPED, {"template": "tiny-demo", "namespace": "llm"}, options=nats_options)

    [item] = await _all(nats_options)
    assert item.event is not None and (item.event.id, item.event.kind) == (result.event_id, EventKind.DEPLOYMENT_STOPPED)


async def test_an_event_for_a_subject_of_another_stream_is_refused_and_not_stored(
    nats_options: NatsOptions, clean_stream: StreamSettings
) -> None:
    async with nats_client(nats_options) as client:
        publisher = Publisher(client, stream="SOMEWHERE_ELSE")
        with pytest.raises(PublishError, match="stored by another stream than SOMEWHERE_ELSE"):
            await publisher.request_deployment("tiny-demo")
        info = await client.jetstream().stream_info(STREAM_NAME)

    assert info.state.messages == 0


async def test_a_refusal_by_the_stream_is_a_publish_error_naming_the_reason(nats_options: NatsOptions) -> None:
    small = StreamSettings(name="SMALL", subject_root="small", max_msg_size=4096)
    async with nats_client(nats_options) as client:
        await provision_stream(client.jetstream(), small)
        publisher = Publisher(client, stream="SMALL", subject_root="small")
        doc = version_of("big", 1).to_document()
        doc["spec"]["generation"] = {"chat_template": "{{ messages }}" + " " * 8000}  # valid, but over the stream's 4 KiB
        with pytest.raises(PublishError, match=r"JetStream refused the event on small\.templates\.big\..*size"):
            await publisher.publish_version(doc)
        assert (await client.jetstream().stream_info("SMALL")).state.messages == 0


ANSWERS = [b"", b"not json", b"[1, 2]", b'"error"', b"null", b'{"stream": "S"}', b'{"seq": 3}', b'{"error": "no code"}']


async def test_an_answer_that_is_not_a_jetstream_acknowledgement_is_an_error(nats_options: NatsOptions) -> None:
    """Something other than a stream answers on the subject (a plain responder): no acknowledgement, a clear error."""
    answers = iter(ANSWERS)

    async def impostor(msg: Msg) -> None:
        await msg.respond(next(answers))

    async with nats_client(nats_options) as client:
        await client.subscribe("impostor.templates.>", cb=impostor)
        publisher = Publisher(client, subject_root="impostor", stream="IMPOSTOR")
        messages = []
        for _ in ANSWERS:
            with pytest.raises(PublishError) as caught:
                await publisher.request_deployment("tiny-demo")
            messages.append(str(caught.value))

    assert all(message.startswith("impostor.templates.tiny-demo.deployment.requested was answered, but not") for message in messages[:-1])
    assert "refused" in messages[-1] or "not by a JetStream stream" in messages[-1]


async def test_a_retried_publish_with_the_same_id_is_a_duplicate(nats_options: NatsOptions, clean_stream: StreamSettings) -> None:
    async with nats_client(nats_options) as client:
        publisher = Publisher(client)
        first = await publisher.request_deployment("tiny-demo")
        retried = await publisher.request_deployment("tiny-demo", event_id=first.event_id)
        fresh = await publisher.request_deployment("tiny-demo")

    assert (first.duplicate, retried.duplicate, fresh.duplicate) == (False, True, False)
    assert retried.sequence == first.sequence and fresh.sequence == first.sequence + 1


async def test_local_server_takes_more_stream_reservations_than_the_free_disk() -> None:
    """Stream max_bytes are reservations: by default JetStream refuses them past 75 % of the disk free at its
    start, which made test modules that provision several times fail on a fuller disk."""
    with LocalNatsServer() as server:
        free = shutil.disk_usage(server.store_dir.parent).free
        settings = StreamSettings()
        per_provisioning = settings.max_bytes + 2 * settings.status_max_bytes
        provisionings = free // per_provisioning + 2
        async with nats_client(server.options()) as client:
            js = client.jetstream()
            for n in range(provisionings):
                await provision_stream(js, settings.model_copy(update={"name": f"S{n}", "subject_root": f"r{n}"}))
            assert len(await js.streams_info()) == 3 * provisionings
