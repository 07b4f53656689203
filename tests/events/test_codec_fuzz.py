"""Fuzzing `decode`: whatever arrives on the wire, it returns an event or raises `EventDecodeError`.

The codec's last-resort guard turns unexpected exceptions into an `EventDecodeError` whose
reason starts with "internal"; these tests also fail if that guard is ever reached.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.codec import STRUCTURED_CONTENT_TYPE, DecodedEvent, EventDecodeError, decode, encode
from events.types import EventKind
from tests.events.samples import sample

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CE_HEADERS = ["ce-id", "ce-source", "ce-type", "ce-specversion", "ce-time", "ce-subject", "ce-stokeholdhash", "content-type"]

header_names = st.one_of(st.sampled_from(CE_HEADERS), st.text(max_size=20))
header_values = st.one_of(
    st.sampled_from(
        ["1.0", "0.3", "", "dev.stokehold.deployment.requested", "application/json", STRUCTURED_CONTENT_TYPE, "2024-13-45T99:99:99Z"]
    ),
    st.text(max_size=40),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _outcome(headers: Any, payload: Any) -> DecodedEvent | EventDecodeError:
    try:
        return decode(headers, payload)
    except EventDecodeError as exc:
        assert not exc.reason.startswith("internal"), exc.reason
        return exc


@FUZZ
@given(headers=st.none() | st.dictionaries(header_names, header_values, max_size=8), payload=st.binary(max_size=512))
def test_arbitrary_headers_and_bytes(headers: dict[str, str] | None, payload: bytes) -> None:
    _outcome(headers, payload)


@FUZZ
@given(
    attributes=st.dictionaries(
        st.sampled_from(
            ["id", "source", "type", "specversion", "time", "subject", "datacontenttype", "data", "data_base64", "stokeholdhash"]
        ),
        json_values,
    ),
    data=json_values,
)
def test_arbitrary_structured_documents(attributes: dict[str, Any], data: Any) -> None:
    document = {"id": "f", "source": "/f", "type": "dev.stokehold.deployment.requested", "specversion": "1.0", "data": data} | attributes
    _outcome({"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(document).encode())


@FUZZ
@given(
    kind=st.sampled_from(list(EventKind)),
    mode=st.sampled_from(["binary", "structured"]),
    position=st.integers(min_value=0),
    replacement=st.binary(min_size=0, max_size=8),
    dropped=st.sets(st.sampled_from(CE_HEADERS)),
)
def test_mutated_valid_events(kind: EventKind, mode: str, position: int, replacement: bytes, dropped: set[str]) -> None:
    headers, payload = encode(kind, sample(kind), source="/fuzz", mode=mode)  # type: ignore[arg-type]
    cut = position % (len(payload) + 1)
    mutated = payload[:cut] + replacement + payload[cut + len(replacement) :]
    outcome = _outcome({k: v for k, v in headers.items() if k not in dropped}, mutated)
    if isinstance(outcome, DecodedEvent):  # a mutation that still decodes is a valid event of a known kind
        assert outcome.kind in EventKind


@FUZZ
@given(value=st.text(max_size=30), header=st.sampled_from(CE_HEADERS))
def test_any_single_header_value(value: str, header: str) -> None:
    headers, payload = encode(EventKind.DEPLOYMENT_REQUESTED, sample(EventKind.DEPLOYMENT_REQUESTED), source="/fuzz")
    _outcome(headers | {header: value}, payload)


def test_deeply_nested_data_is_refused_cleanly() -> None:
    nested = "[" * 100_000 + "]" * 100_000
    payload = ('{"id":"n","source":"/n","type":"dev.stokehold.deployment.requested","specversion":"1.0","data":' + nested + "}").encode()
    assert isinstance(_outcome({"content-type": STRUCTURED_CONTENT_TYPE}, payload), EventDecodeError)
    headers, _ = encode(EventKind.DEPLOYMENT_REQUESTED, sample(EventKind.DEPLOYMENT_REQUESTED), source="/n")
    assert isinstance(_outcome(headers, nested.encode()), EventDecodeError)
