"""The CloudEvents codec: both NATS content modes, SDK interop, and every way decoding refuses."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import conversion as v1_conversion
from cloudevents.v1 import http as v1_http

from events.codec import (
    MAX_EVENT_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    NATS_MSG_ID,
    STRUCTURED_CONTENT_TYPE,
    EventDataError,
    EventDecodeError,
    Mode,
    decode,
    encode,
    nats_subject,
)
from events.types import DATA_MODELS, HASH_EXTENSION, DeploymentRequested, EventKind, TemplateVersionPublished
from tests.events.samples import sample, tiny_version

SOURCE = "/tests/codec"
MODES = ("binary", "structured")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(EventKind), ids=lambda kind: kind.value)
def test_every_kind_round_trips_in_both_modes(kind: EventKind, mode: str) -> None:
    data = sample(kind)
    headers, payload = encode(kind, data, source=SOURCE, mode=mode)  # type: ignore[arg-type]

    event = decode(headers, payload)

    assert event.kind is kind
    assert event.data == data
    assert type(event.data) is DATA_MODELS[kind]
    assert event.id == headers[NATS_MSG_ID]
    assert event.source == SOURCE
    assert event.mode == mode
    assert event.time is not None and event.time.tzinfo is not None


def test_binary_mode_puts_attributes_in_ce_headers_and_only_the_data_in_the_payload() -> None:
    version = tiny_version()
    headers, payload = encode(EventKind.VERSION_PUBLISHED, version, source=SOURCE, event_id="evt-1")

    assert headers["ce-id"] == "evt-1" == headers[NATS_MSG_ID]
    assert headers["ce-type"] == "dev.stokehold.template.version.published"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-source"] == SOURCE
    assert headers["ce-subject"] == "tiny-demo"
    assert headers[f"ce-{HASH_EXTENSION}"] == version.content_hash
    assert headers["content-type"] == "application/json"
    assert json.loads(payload) == version.to_document()


@pytest.mark.parametrize("given", [{"event_id": "id-%-1"}, {}], ids=["given id", "new id and time"])
@pytest.mark.parametrize("source", ["/plain", "/with space", '/"quoted"', "/100%", "/ünïcode/✓", "/tab\there"])
def test_binary_headers_are_byte_for_byte_what_the_sdk_binding_makes(source: str, given: dict[str, str]) -> None:
    headers, payload = encode(EventKind.VERSION_PUBLISHED, tiny_version(), source=source, **given)
    event = ce_http.from_binary(ce_http.HTTPMessage(headers=headers, body=payload), JSONFormat())

    assert event.get_source() == source
    assert {name: value for name, value in headers.items() if name != NATS_MSG_ID} == ce_http.to_binary(event, JSONFormat()).headers
    decoded = decode(headers, payload)
    assert (decoded.source, decoded.id, decoded.time) == (source, event.get_id(), event.get_time())


@pytest.mark.parametrize("kind", [EventKind.DEPLOYMENT_READY, EventKind.EVENT_REJECTED], ids=lambda kind: kind.value)
def test_a_subject_that_needs_encoding_survives(kind: EventKind) -> None:
    data = sample(kind).model_copy(update={"template": "not a name %"} if kind is EventKind.DEPLOYMENT_READY else {"subject": "a b%"})
    headers, payload = encode(kind, data, source=SOURCE, subject_template="odd subject %")

    assert headers["ce-subject"] == "odd%20subject%20%25"
    assert decode(headers, payload).subject == "odd subject %"


def test_a_published_versions_hash_is_its_content_hash() -> None:
    """The hash header is the content hash of every catalog version, and decoding agrees."""
    from templates.catalog import load_catalog
    from templates.schema import content_hash

    for loaded in load_catalog():
        version = TemplateVersionPublished.model_validate(loaded.to_document())  # nothing cached on it yet
        headers, payload = encode(EventKind.VERSION_PUBLISHED, version, source=SOURCE)
        assert headers[f"ce-{HASH_EXTENSION}"] == content_hash(version), loaded.name
        assert decode(headers, payload).content_hash == content_hash(version)


@pytest.mark.parametrize("mode", MODES)
def test_event_ids_are_random_uuids(mode: Mode) -> None:
    """Nobody can compute the next id and claim it first (JetStream's duplicate window is stream-wide)."""
    data = sample(EventKind.DEPLOYMENT_DELETED)
    ids = [encode(EventKind.DEPLOYMENT_DELETED, data, source=SOURCE, mode=mode)[0][NATS_MSG_ID] for _ in range(200)]

    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(event_id).version == 4 and str(uuid.UUID(event_id)) == event_id for event_id in ids)


def test_structured_mode_puts_the_whole_event_in_the_payload() -> None:
    version = tiny_version()
    headers, payload = encode(EventKind.VERSION_PUBLISHED, version, source=SOURCE, event_id="evt-2", mode="structured")

    assert headers == {"content-type": STRUCTURED_CONTENT_TYPE, NATS_MSG_ID: "evt-2"}
    document = json.loads(payload)
    assert document["id"] == "evt-2"
    assert document["specversion"] == "1.0"
    assert document[HASH_EXTENSION] == version.content_hash
    assert document["data"] == version.to_document()


def test_status_events_carry_their_content_hash_and_go_to_status_subjects() -> None:
    applied = sample(EventKind.DEPLOYMENT_APPLIED)
    headers, _ = encode(EventKind.DEPLOYMENT_APPLIED, applied, source=SOURCE)

    assert headers[f"ce-{HASH_EXTENSION}"] == tiny_version().content_hash
    assert nats_subject(EventKind.DEPLOYMENT_APPLIED, applied) == "stokehold.status.tiny-demo.deployment.applied"
    assert nats_subject(EventKind.DEPLOYMENT_REQUESTED, sample(EventKind.DEPLOYMENT_REQUESTED)) == (
        "stokehold.templates.tiny-demo.deployment.requested"
    )
    assert nats_subject(EventKind.EVENT_REJECTED, sample(EventKind.EVENT_REJECTED)) == "stokehold.deadletter.x"


def test_subjects_only_take_template_names() -> None:
    ready = sample(EventKind.DEPLOYMENT_READY).model_copy(update={"template": "a.b *"})
    rejected = sample(EventKind.EVENT_REJECTED).model_copy(update={"subject": "elsewhere"})

    with pytest.raises(EventDataError, match="not a template name"):
        nats_subject(EventKind.DEPLOYMENT_READY, ready)
    assert nats_subject(EventKind.EVENT_REJECTED, rejected) == "stokehold.deadletter._"


def test_header_names_are_case_insensitive() -> None:
    headers, payload = encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source=SOURCE)
    shouted = {name.upper(): value for name, value in headers.items()}

    assert decode(shouted, payload).data == sample(EventKind.DEPLOYMENT_DELETED)


def test_a_headerless_json_event_is_read_as_structured() -> None:
    """Before NATS had headers, the binding sent every event structured with no headers at all."""
    _, payload = encode(EventKind.DEPLOYMENT_STOPPED, sample(EventKind.DEPLOYMENT_STOPPED), source=SOURCE, mode="structured")

    assert decode(None, payload).kind is EventKind.DEPLOYMENT_STOPPED


# ------------------------------------------------------------- SDK interop


def _sdk_event(data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(
        {
            "id": "sdk-1",
            "source": "/other/producer",
            "type": "dev.stokehold.deployment.requested",
            "datacontenttype": "application/json",
            "time": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        },
        data,
    )


@pytest.mark.parametrize("binding", [ce_http.to_structured, ce_http.to_binary], ids=["structured", "binary"])
def test_decodes_what_the_sdk_produces(binding: object) -> None:
    data: dict[str, Any] = {"template": "gemma-7b-it", "namespace": "llm", "overrides": {"max_replicas": 3}}
    message = binding(_sdk_event(data), JSONFormat())  # type: ignore[operator]

    event = decode(message.headers, message.body)

    assert event.id == "sdk-1"
    assert event.source == "/other/producer"
    assert event.time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert event.data == DeploymentRequested.model_validate(data)


@pytest.mark.parametrize("to_http", [v1_conversion.to_structured, v1_conversion.to_binary], ids=["structured", "binary"])
def test_decodes_what_the_sdks_v1_api_produces(to_http: object) -> None:
    event = v1_http.CloudEvent(
        {"id": "v1-1", "source": "/legacy", "type": "dev.stokehold.deployment.deleted", "datacontenttype": "application/json"},
        {"template": "falcon-7b-instruct", "namespace": "team-a"},
    )
    headers, body = to_http(event)  # type: ignore[operator]

    decoded = decode(dict(headers), body)

    assert (decoded.id, decoded.kind, decoded.data.model_dump()["namespace"]) == ("v1-1", EventKind.DEPLOYMENT_DELETED, "team-a")


@pytest.mark.parametrize("mode", MODES)
def test_the_sdk_parses_what_we_produce(mode: str) -> None:
    version = tiny_version()
    headers, payload = encode(EventKind.VERSION_PUBLISHED, version, source=SOURCE, event_id="ours-1", mode=mode)  # type: ignore[arg-type]

    parsed = v1_http.from_http(headers, payload)
    attributes = v1_conversion.to_dict(parsed)
    core = ce_http.from_http(ce_http.HTTPMessage(headers=headers, body=payload), JSONFormat())

    assert attributes["id"] == core.get_id() == "ours-1"
    assert attributes["type"] == core.get_type() == EventKind.VERSION_PUBLISHED.ce_type
    assert attributes[HASH_EXTENSION] == core.get_extension(HASH_EXTENSION) == version.content_hash
    assert parsed.get_data() == core.get_data() == version.to_document()
    if mode == "structured":
        assert v1_http.from_json(payload)["id"] == "ours-1"


# --------------------------------------------------------- decode refuses


def _binary(kind: EventKind = EventKind.DEPLOYMENT_REQUESTED) -> tuple[dict[str, str], bytes]:
    return encode(kind, sample(kind), source=SOURCE, event_id="bad-1")


def _structured(**changes: object) -> tuple[dict[str, str], bytes]:
    headers, payload = encode(
        EventKind.DEPLOYMENT_REQUESTED, sample(EventKind.DEPLOYMENT_REQUESTED), source=SOURCE, event_id="bad-2", mode="structured"
    )
    document = json.loads(payload)
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    return headers, json.dumps(document).encode()


def _without(header: str) -> tuple[dict[str, str], bytes]:
    headers, payload = _binary()
    headers.pop(header)
    return headers, payload


def _with(**replaced: str) -> tuple[dict[str, str], bytes]:
    headers, payload = _binary()
    return headers | {name.replace("_", "-"): value for name, value in replaced.items()}, payload


# case -> (headers, payload, a fragment the reason must contain)
BAD_MESSAGES: dict[str, tuple[object, bytes, str]] = {
    "broken JSON": ({"content-type": STRUCTURED_CONTENT_TYPE}, b'{"id": "x", ', "not valid JSON"),
    "JSON array": ({"content-type": STRUCTURED_CONTENT_TYPE}, b"[1, 2]", "JSON object"),
    "not UTF-8": ({"content-type": STRUCTURED_CONTENT_TYPE}, b"\xff\xfe{}", "not valid JSON"),
    "missing id (binary)": (*_without("ce-id"), "'id'"),
    "missing source (binary)": (*_without("ce-source"), "'source'"),
    "missing type (binary)": (*_without("ce-type"), "'type'"),
    "missing specversion (binary)": (*_without("ce-specversion"), "'specversion'"),
    "missing id (structured)": (*_structured(id=None), "'id'"),
    "missing specversion (structured)": (*_structured(specversion=None), "'specversion'"),
    "empty source (structured)": (*_structured(source=""), "'source'"),
    "wrong specversion": (*_with(ce_specversion="0.3"), "specversion '0.3'"),
    "wrong specversion (structured)": (*_structured(specversion="2.0"), "specversion '2.0'"),
    "unknown stokehold type": (*_with(ce_type="dev.stokehold.deployment.exploded"), "unknown event type"),
    "foreign type": (*_with(ce_type="com.example.order.created"), "unknown event type"),
    "data not JSON": (*_with(content_type="text/plain"), "not JSON"),
    "xml event format": ({"content-type": "application/cloudevents+xml"}, b"<event/>", "not supported"),
    "batch": ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batched"),
    "no ce- headers": ({"content-type": "application/json"}, b'{"template": "x"}', "not a CloudEvent"),
    "not a CloudEvent at all": (None, b"hello", "not a CloudEvent"),
    "bad time": (*_with(ce_time="yesterday"), "invalid CloudEvent attributes"),
    "data not an object": (*_structured(data=[1, 2, 3]), "JSON object"),
    "no data": (*_structured(data=None), "no data"),
    "data fails the model": (*_structured(data={"template": "Not_A_Name", "namespace": "llm"}), "template: "),
    "unknown data field": (*_structured(data={"template": "x", "namespace": "llm", "replicas": 3}), "replicas: "),
    "binary body not JSON": (_binary()[0], b"{not json", "not valid JSON"),
    "extension named data": (*_with(ce_data="x"), "reserved"),
    "non-string header": ({"ce-id": 1, "ce-type": "x"}, b"{}", "strings"),
    "headers not a mapping": (["ce-id"], b"{}", "mapping"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_decode_refuses_with_one_error_type_and_says_why(case: str) -> None:
    headers, payload, fragment = BAD_MESSAGES[case]

    with pytest.raises(EventDecodeError) as caught:
        decode(headers, payload)  # type: ignore[arg-type]

    assert fragment in caught.value.reason


def test_decode_errors_name_the_event_and_the_field() -> None:
    headers, payload = _structured(data={"template": "tiny-demo", "namespace": "Bad_Namespace"})

    with pytest.raises(EventDecodeError) as caught:
        decode(headers, payload)

    error = caught.value
    assert (error.event_id, error.event_type) == ("bad-2", "dev.stokehold.deployment.requested")
    assert [path for path, _ in error.errors] == ["namespace"]
    assert "namespace" in error.reason


def test_decode_refuses_a_hash_that_does_not_match_the_version() -> None:
    headers, payload = _binary(EventKind.VERSION_PUBLISHED)
    headers[f"ce-{HASH_EXTENSION}"] = "sha256:" + "0" * 64

    with pytest.raises(EventDecodeError, match="does not match the content hash"):
        decode(headers, payload)


def test_decode_refuses_oversized_payloads() -> None:
    with pytest.raises(EventDecodeError, match="over the limit"):
        decode({"content-type": STRUCTURED_CONTENT_TYPE}, b" " * (MAX_PAYLOAD_BYTES + 1))


def test_decode_computes_the_hash_when_the_producer_left_it_out() -> None:
    headers, payload = _binary(EventKind.VERSION_PUBLISHED)
    del headers[f"ce-{HASH_EXTENSION}"]

    assert decode(headers, payload).content_hash == tiny_version().content_hash


# The ids a hostile producer sends: they must never reach a dead letter, a log line or an annotation.
HOSTILE_IDS = {
    "CR LF": "evt-1\r\nX-Injected: yes",
    "LF": "evt\n2",
    "NUL": "evt\x003",
    "space": "evt 4",
    "DEL": "evt\x7f5",
    "non-ASCII": "évènement",
    "60 KB": "x" * 60_000,
    "one over the cap": "x" * (MAX_EVENT_ID_LENGTH + 1),
}


@pytest.mark.parametrize("case", list(HOSTILE_IDS))
@pytest.mark.parametrize("carrier", ["raw header", "percent-encoded header", "structured"])
def test_decode_refuses_an_event_id_that_is_not_printable_ascii_or_too_long(case: str, carrier: str) -> None:
    hostile = HOSTILE_IDS[case]
    if carrier == "structured":
        headers, payload = _structured(id=hostile)
    else:
        headers, payload = _binary()
        headers["ce-id"] = hostile if carrier == "raw header" else quote(hostile, safe="")

    with pytest.raises(EventDecodeError) as caught:
        decode(headers, payload)

    error = caught.value
    assert error.reason.startswith("invalid event id") and "printable ASCII" in error.reason
    assert error.event_id is None, "an invalid id is never handed on to the dead letter"
    assert len(error.reason) < 200 and "\n" not in error.reason and "\x00" not in error.reason


def test_the_longest_valid_event_id_is_accepted() -> None:
    headers, payload = encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source=SOURCE, event_id="~" * 256)

    assert decode(headers, payload).id == "~" * MAX_EVENT_ID_LENGTH


# --------------------------------------------------------- encode refuses


def test_encode_refuses_invalid_data_naming_the_field() -> None:
    with pytest.raises(EventDataError) as caught:
        encode(EventKind.DEPLOYMENT_REQUESTED, {"template": "tiny-demo", "overrides": {"max_replicas": 0}}, source=SOURCE)

    assert [path for path, _ in caught.value.errors] == ["overrides.max_replicas"]


def test_encode_refuses_data_of_another_kind() -> None:
    with pytest.raises(EventDataError, match="expected DeploymentDeleted"):
        encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_STOPPED), source=SOURCE)


@pytest.mark.parametrize("event_id", ["", "two words", "line\nbreak", "trailing\n", "x" * 300])
def test_encode_refuses_ids_that_cannot_be_a_header(event_id: str) -> None:
    with pytest.raises(EventDataError, match="id"):
        encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source=SOURCE, event_id=event_id)


def test_encode_refuses_an_empty_source_and_a_naive_time() -> None:
    with pytest.raises(EventDataError, match="source"):
        encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source="")
    with pytest.raises(EventDataError, match="time zone"):
        encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source=SOURCE, time=datetime(2024, 1, 1))


@pytest.mark.parametrize("mode", MODES)
def test_a_given_time_with_any_offset_survives(mode: str) -> None:
    moment = datetime.fromisoformat("2024-06-01T12:30:00.123456+02:00")
    headers, payload = encode(EventKind.DEPLOYMENT_DELETED, sample(EventKind.DEPLOYMENT_DELETED), source=SOURCE, time=moment, mode=mode)  # type: ignore[arg-type]

    assert decode(headers, payload).time == moment


def test_encode_accepts_a_plain_template_version() -> None:
    """A `ModelTemplateVersion` (as loaded from a file) is accepted as version data."""
    from templates.catalog import CATALOG_DIR, load_file

    version = load_file(CATALOG_DIR / "tiny-demo.yaml")
    headers, payload = encode(EventKind.VERSION_PUBLISHED, version, source=SOURCE)

    assert decode(headers, payload).content_hash == version.content_hash
