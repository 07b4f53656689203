"""Hypothesis fuzzes raw messages on the inbound subjects of a running controller process.

Every generated message is broken on purpose, one way per example: broken JSON, wrong types,
unknown fields, huge payloads, missing CloudEvents attributes, bad attribute values, non-JSON
content types, broken structured envelopes, no CloudEvent at all, a subject that does not
match the data, a subject that names no valid template, values whose quoted echo grows
(control and escaping characters, up to 150,000 of them), an invalid `ce-id` (CR/LF, NUL,
over-long), or stream confusion (status events and dead letters on inbound subjects, subjects
with a stream's tokens where the template goes). Each is published to JetStream as raw bytes;
the test waits for the `event.rejected` carrying that message's stream sequence and a reason,
which must be bounded. Afterwards the same controller process is still alive and still
applies a valid event.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from controller.consumer import MAX_REASON_CHARS
from events.codec import MAX_PAYLOAD_BYTES, decode, encode
from events.local_server import LocalNatsServer
from events.stream import StreamSettings, provision_stream
from events.types import DeploymentRequested, EventKind, EventRejected, deadletter_subject, template_subject
from tests.events.samples import sample
from tests.fixtures.controller_process import ControllerProcess, wait_until
from tests.fixtures.figures import FiguresRecorder
from tests.k8s_emulator import KubernetesEmulator
from tests.reliability.settings import SIZES, kube_controller
from tests.reliability.workload import SOURCE, build_workload

ROOT, NAMESPACE, TEMPLATE, OTHER = "fuzz", "fuzz", "fuzz-000", "fuzz-001"
STREAM_MESSAGE_LIMIT = StreamSettings().max_msg_size
FREE_MAPS = {"labels", "vllm_args"}  # free-form maps: their entries may hold anything of the right type
T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a thread, so that synchronous hypothesis examples can use one NATS connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class FuzzTarget:
    """The running controller, a NATS connection, and the dead letters seen so far (by stream sequence)."""

    def __init__(self, loop: LoopThread, nc: NatsClient, controller: ControllerProcess, emulator: KubernetesEmulator) -> None:
        self.loop, self.nc, self.controller, self.emulator = loop, nc, controller, emulator
        self.dead_letters: dict[int, str] = {}
        self.largest_dead_letter = 0
        self.published: Counter[str] = Counter()
        self.missing: list[str] = []
        self._lock = threading.Lock()

    async def on_dead_letter(self, msg: Msg) -> None:
        event = decode(msg.headers, msg.data)
        assert isinstance(event.data, EventRejected)
        if event.data.stream_sequence is not None:
            with self._lock:
                self.dead_letters[event.data.stream_sequence] = event.data.reason
                self.largest_dead_letter = max(self.largest_dead_letter, len(msg.data))

    def publish(self, subject: str, headers: dict[str, str], payload: bytes) -> int:
        async def go() -> int:
            ack = await self.nc.jetstream().publish(subject, payload, headers=headers or None, timeout=10.0)
            return ack.seq

        return self.loop.run(go())

    def reason_for(self, sequence: int, limit: float = 20.0) -> str | None:
        try:
            wait_until(lambda: sequence in self.dead_letters, "waiting for a dead letter", limit, alive=self.controller.alive)
        except TimeoutError:
            return None
        with self._lock:
            return self.dead_letters[sequence]


@pytest.fixture(scope="module")
def target(
    k8s_emulator: KubernetesEmulator, nats_server: LocalNatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzTarget]:
    loop = LoopThread()
    log = tmp_path_factory.mktemp("fuzz") / "controller.log"
    controller = kube_controller(k8s_emulator, nats_server.url, root=ROOT, namespace=NAMESPACE, log=log)

    async def connect() -> NatsClient:
        nc = await nats_server.options().connect()
        await provision_stream(nc.jetstream(), StreamSettings(name=ROOT.upper(), subject_root=ROOT))
        return nc

    nc = loop.run(connect())
    fuzz = FuzzTarget(loop, nc, controller, k8s_emulator)
    loop.run(nc.subscribe(deadletter_subject("*", ROOT), cb=fuzz.on_dead_letter))
    controller.start()
    controller.wait_ready()
    try:
        yield fuzz
    finally:
        controller.stop()
        loop.run(nc.close())
        loop.close()


# ------------------------------------------------------------------ what a valid event looks like

VALID = build_workload(events=2, templates=1, seed=0, namespace=NAMESPACE, root=ROOT).events
VERSION, REQUEST = VALID[0], VALID[1]
assert VERSION.kind is EventKind.VERSION_PUBLISHED and REQUEST.kind is EventKind.DEPLOYMENT_REQUESTED
CE_REQUIRED = ("ce-id", "ce-source", "ce-type", "ce-specversion")
NOT_JSON_TYPES = ["text/plain", "application/xml", "application/octet-stream", "image/png", "application/cloudevents+xml"]
NOT_JSON_TYPES += ["application/cloudevents-batch+json", "multipart/form-data"]
# characters whose quoted echo (repr, then JSON) grows: one byte became five in a dead letter
ESCAPING = ["\x7f", "\x00", "\x1b", '"', "\\", "'", "\u2028", "\ufeff"]
BAD_IDS = ["%0D%0Ainjected: yes", "a%00b", "%0A", "with%20space", "caf%C3%A9", "%7F"]
OUTBOUND = [kind for kind in EventKind if not kind.inbound]
CATEGORIES = [
    "broken_json",
    "wrong_type",
    "unknown_field",
    "huge_payload",
    "huge_field",
    "missing_attribute",
    "bad_attribute",
    "wrong_content_type",
    "broken_structured",
    "not_a_cloudevent",
    "subject_mismatch",
    "bad_subject",
    "escaping_echo",
    "bad_event_id",
    "stream_confusion",
]


def fresh_headers(headers: dict[str, str]) -> dict[str, str]:
    """The same headers under a new message id, so that JetStream does not drop the example as a duplicate."""
    return {**headers, "Nats-Msg-Id": uuid.uuid4().hex}


def json_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every place in a JSON document that a wrong value can go (not inside free-form maps)."""
    if path:
        yield path
    if isinstance(value, dict) and (not path or path[-1] not in FREE_MAPS):
        for key, item in value.items():
            yield from json_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_paths(item, (*path, index))


def replaced(document: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


def wrong_value_for(original: Any) -> st.SearchStrategy[Any]:
    """A value no schema type coerces from: a list where a mapping was, a mapping anywhere else."""
    if isinstance(original, dict):
        return st.lists(st.integers(), min_size=1, max_size=3)
    return st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), min_size=1, max_size=2)


Message = tuple[str, str, dict[str, str], bytes]  # category, subject, headers, payload


@st.composite
def bad_messages(draw: st.DrawFn) -> Message:
    base = draw(st.sampled_from([VERSION, REQUEST]))
    headers, payload, subject = fresh_headers(base.headers), base.payload, base.subject
    data = json.loads(payload)
    category = draw(st.sampled_from(CATEGORIES))
    if category == "broken_json":
        cut = draw(st.integers(min_value=0, max_value=len(payload) - 1))
        payload = payload[:cut] + draw(st.sampled_from([b"", b",", b"\x00", b"\xff\xfe", b"'"]))  # an object never closed
    elif category == "wrong_type":
        path = draw(st.sampled_from(list(json_paths(data))))
        original: Any = data
        for step in path:
            original = original[step]
        payload = json.dumps(replaced(data, path, draw(wrong_value_for(original)))).encode()
    elif category == "unknown_field":
        containers = [p for p in json_paths(data) if isinstance(_at(data, p), dict) and p[-1] not in FREE_MAPS]
        path = draw(st.sampled_from([(), *containers]))
        key = draw(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=3, max_size=12))
        container = dict(_at(data, path))
        if key in container:
            key += "_unknown"
        container[key] = draw(st.one_of(st.integers(), st.text(max_size=20), st.booleans()))
        payload = json.dumps(replaced(data, path, container)).encode()
    elif category == "huge_payload":
        size = draw(st.integers(min_value=MAX_PAYLOAD_BYTES + 1, max_value=STREAM_MESSAGE_LIMIT - 4096))
        payload = (payload[:-1] + b',"padding":"' + b"x" * size)[:size] + b'"}'
    elif category == "huge_field":
        field = "namespace" if base is REQUEST else "description"
        text = "x" * draw(st.integers(min_value=4096, max_value=200_000))
        payload = json.dumps(replaced(data, (field,) if base is REQUEST else ("template", "description"), text)).encode()
    elif category == "missing_attribute":
        dropped = draw(st.sampled_from(CE_REQUIRED))
        headers = {k: v for k, v in headers.items() if k != dropped}
    elif category == "bad_attribute":
        name, value = draw(
            st.sampled_from(
                [
                    ("ce-specversion", "0.3"),
                    ("ce-specversion", "2.0"),
                    ("ce-type", "dev.stokehold.no.such.event"),
                    ("ce-type", "com.example.template.version.published"),
                    ("ce-time", "yesterday"),
                    ("ce-time", "2026-13-45T99:00:00Z"),
                    ("ce-data", "smuggled"),
                    ("ce-bad.name", "x"),
                ]
            )
        )
        headers[name] = value
    elif category == "wrong_content_type":
        headers["content-type"] = draw(st.sampled_from(NOT_JSON_TYPES))
    elif category == "broken_structured":
        envelope = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": SOURCE, "type": headers["ce-type"], "data": data}
        missing: str | None = draw(st.sampled_from(["specversion", "id", "source", "type", "data", None]))
        if missing is not None:
            envelope.pop(missing)
        else:
            envelope["data"] = draw(st.one_of(st.text(max_size=30), st.integers(), st.lists(st.integers(), max_size=3)))
        headers = {"content-type": "application/cloudevents+json", "Nats-Msg-Id": uuid.uuid4().hex}
        payload = json.dumps(envelope).encode()
    elif category == "not_a_cloudevent":
        headers = {"Nats-Msg-Id": uuid.uuid4().hex}
        payload = draw(st.one_of(st.binary(max_size=300), st.just(b'{"hello": "world"}'), st.just(payload)))
    elif category == "subject_mismatch":
        subject = template_subject(OTHER, base.kind, ROOT)
    elif category == "bad_subject":
        token = draw(
            st.one_of(
                st.from_regex(r"[A-Z_][A-Za-z0-9_]{0,20}", fullmatch=True),
                st.from_regex(r"[a-z][a-z0-9]{63,70}", fullmatch=True),
            )
        )
        subject = draw(st.sampled_from([f"{ROOT}.templates.{token}.{base.kind.value}", f"{ROOT}.templates.{TEMPLATE}.{token.lower()}"]))
    elif category == "escaping_echo":
        text = draw(st.sampled_from(ESCAPING)) * draw(st.integers(min_value=1_000, max_value=150_000))
        if base is REQUEST:
            data[draw(st.sampled_from(["namespace", "name"]))] = text
        elif draw(st.booleans()):
            data["spec"]["engine"]["vllm_args"] = {text: 1}
        else:
            data["template"]["labels"] = draw(st.sampled_from([{text: "v"}, {"team": text}]))
        payload = json.dumps(data, ensure_ascii=False).encode()
    elif category == "bad_event_id":
        headers["ce-id"] = draw(st.one_of(st.sampled_from(BAD_IDS), st.integers(257, 60_000).map(lambda n: "x" * n)))
    elif category == "stream_confusion":
        variant = draw(st.sampled_from(["outbound_type", "stream_token", "extra_tokens"]))
        if variant == "outbound_type":  # a status event or a dead letter, well formed, on an inbound subject
            kind = draw(st.sampled_from(OUTBOUND))
            headers, payload = encode(kind, sample(kind), source=SOURCE, subject_template=TEMPLATE)
            headers = fresh_headers(headers)
            subject = f"{ROOT}.templates.{TEMPLATE}.{kind.value}"
        elif variant == "stream_token":  # where the template goes: a token of the other streams' subjects
            token = draw(st.sampled_from(["status", "deadletter", "templates", ROOT]))
            subject = f"{ROOT}.templates.{token}.{base.kind.value}"
        else:
            subject = draw(st.sampled_from([f"{base.subject}.extra", f"{ROOT}.templates.{ROOT}.templates.{TEMPLATE}.{base.kind.value}"]))
    return category, subject, headers, payload


def _at(document: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


def test_every_broken_inbound_message_is_dead_lettered_with_a_reason(target: FuzzTarget, figures: FiguresRecorder) -> None:
    # the template exists, so that a broken message fails on its own fault and not for want of a template
    target.publish(VERSION.subject, VERSION.headers, VERSION.payload)

    @settings(
        max_examples=SIZES.fuzz_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(message=bad_messages())
    def one_broken_message(message: Message) -> None:
        category, subject, headers, payload = message
        sequence = target.publish(subject, headers, payload)
        target.published[category] += 1
        reason = target.reason_for(sequence)
        if reason is None:
            target.missing.append(f"{category}: sequence {sequence} on {subject} has no dead letter")
        assert reason, f"{category}: no dead letter for the message at stream sequence {sequence} on {subject}"
        assert len(reason) <= MAX_REASON_CHARS, f"{category}: a reason of {len(reason)} characters"

    try:
        one_broken_message()
    finally:
        alive = target.controller.alive() and target.controller.probe("/healthz") == 200
        # still working: a valid deployment request after the storm is applied
        headers, payload = encode(
            EventKind.DEPLOYMENT_REQUESTED, DeploymentRequested(template=TEMPLATE, namespace=NAMESPACE), source=SOURCE
        )
        target.publish(REQUEST.subject, headers, payload)
        applied = 1
        try:
            wait_until(lambda: target.emulator.get("isvc", NAMESPACE, TEMPLATE), "applying a valid event after the fuzzing", 30)
        except TimeoutError:
            applied = 0
        published = sum(target.published.values())
        figures.report(
            published=published,
            applied=applied,
            dead_lettered=published - len(target.missing),
            lost=len(target.missing),
            trials=1,
            categories=len(target.published),
            largest_dead_letter_bytes=target.largest_dead_letter,
        )
    print("examples by category:", dict(sorted(target.published.items())))
    assert alive, target.controller.log_tail()
    assert applied == 1, target.controller.log_tail()
    assert len(target.published) == len(CATEGORIES), target.published  # every kind of breakage was tried
