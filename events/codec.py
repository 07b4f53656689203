"""CloudEvents ⇄ NATS messages (pure, no I/O).

The NATS protocol binding has two content modes and we accept both:

- binary: each attribute in a NATS header `ce-<attribute>` (values percent-encoded as in
  the HTTP binding), `datacontenttype` in `content-type`, the data alone as payload;
- structured: `content-type: application/cloudevents+json` and the whole event as JSON.
  A message with no headers at all whose payload is a JSON object is read as structured
  too: that is all the binding allowed before NATS had headers.

The cloudevents SDK builds, serialises, parses and validates the events; it has no NATS
binding, so its HTTP binding does the work and NATS headers stand in for HTTP headers.
Every message also carries the CloudEvent id as `Nats-Msg-Id`, so JetStream stores a
republished event once (within the stream's duplicate window).

`decode` raises `EventDecodeError` and nothing else, whatever it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import quote, unquote

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ValidationError

from events.types import (
    DATA_MODELS,
    HASH_EXTENSION,
    SUBJECT_ROOT,
    EventKind,
    EventRejected,
    InboundEnvelope,
    TemplateVersionPublished,
    deadletter_subject,
    status_subject,
    template_of_subject,
    template_subject,
)
from templates.naming import is_dns1123_label
from templates.schema import ModelTemplateVersion, errors_from

Mode = Literal["binary", "structured"]

SPEC_VERSION: Final = "1.0"
NATS_MSG_ID: Final = "Nats-Msg-Id"
CONTENT_TYPE: Final = "content-type"
DATA_CONTENT_TYPE: Final = "application/json"
STRUCTURED_CONTENT_TYPE: Final = JSONFormat.CONTENT_TYPE  # application/cloudevents+json
CE_PREFIX: Final = "ce-"
REQUIRED_ATTRIBUTES: Final = ("id", "source", "type", "specversion")
# The stream's max message size is 1 MiB for headers and payload together.
MAX_PAYLOAD_BYTES: Final = 960 * 1024
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_EVENT_ID_LENGTH: Final = 256

_FORMAT: Final = JSONFormat()
_JSON_MEDIA_TYPE: Final = JSONFormat.JSON_CONTENT_TYPE_PATTERN
# Event ids become the raw Nats-Msg-Id header: printable ASCII only, no spaces.
_EVENT_ID_RE: Final = re.compile(r"[\x21-\x7e]+")
# What the HTTP binding leaves unencoded in header values: printable ASCII but space, '"' and '%'.
_HEADER_SAFE_CHARS: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_HEADER_SAFE: Final = re.compile(r"[\x21\x23\x24\x26-\x7e]*")


class EventDecodeError(ValueError):
    """A NATS message is not a valid stokehold CloudEvent. The one error `decode` raises.

    `event_id` and `event_type` are filled in when the message got far enough to say them,
    so a dead letter can name the event; `errors` lists (field path, message) pairs when
    the data did not match its model.
    """

    def __init__(
        self,
        reason: str,
        event_id: str | None = None,
        event_type: str | None = None,
        errors: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.event_type = event_type
        self.errors = errors or []


class EventDataError(ValueError):
    """Event data (or an attribute such as the id) is invalid; raised before anything is sent."""

    def __init__(self, kind: EventKind, errors: list[tuple[str, str]]) -> None:
        self.kind = kind
        self.errors = errors
        details = "; ".join(f"{path or '<root>'}: {message}" for path, message in errors)
        super().__init__(f"invalid {kind.value} event: {details}")


class DecodedEvent(NamedTuple):  # one per consumed message: a tuple is the cheapest immutable record to build
    """A validated stokehold CloudEvent."""

    id: str
    kind: EventKind
    source: str
    time: datetime | None
    content_hash: str | None
    data: BaseModel  # an instance of DATA_MODELS[kind]
    subject: str | None = None  # the CloudEvent `subject` attribute: the template
    mode: Mode = "binary"

    @property
    def type(self) -> str:
        return self.kind.ce_type

    def envelope(self, nats_subject: str) -> InboundEnvelope:
        """The controller's view of an inbound event received on `nats_subject`."""
        return InboundEnvelope(
            id=self.id, kind=self.kind, source=self.source, subject=nats_subject, data=self.data, content_hash=self.content_hash
        )


# ---------------------------------------------------------------------- data


def validate_data(kind: EventKind, data: BaseModel | Mapping[str, Any]) -> BaseModel:
    """The data as an instance of the kind's model; already-validated instances pass through."""
    model_type = DATA_MODELS[kind]
    if isinstance(data, model_type):
        return data
    if kind is EventKind.VERSION_PUBLISHED and isinstance(data, ModelTemplateVersion):
        # already validated (the models are frozen): re-type it without a second validation pass
        fields = {name: getattr(data, name) for name in ModelTemplateVersion.model_fields}
        return model_type.model_construct(_fields_set=data.model_fields_set, **fields)
    if isinstance(data, BaseModel):
        raise EventDataError(kind, [("", f"expected {model_type.__name__} data, got {type(data).__name__}")])
    if not isinstance(data, Mapping):
        raise EventDataError(kind, [("", f"expected a mapping, got {type(data).__name__}")])
    try:
        model: BaseModel = model_type.__pydantic_validator__.validate_python(data)  # model_validate without its Python frame
    except ValidationError as exc:
        raise EventDataError(kind, errors_from(exc)) from None
    return model


def template_of(kind: EventKind, data: BaseModel) -> str | None:
    """The template an event concerns (its CloudEvent subject and NATS subject token)."""
    if isinstance(data, EventRejected):
        return template_of_subject(data.subject)
    field = _template_field(type(data))
    if field is None:
        return None
    template = getattr(data, field)
    return template if isinstance(template, str) else None


def nats_subject(kind: EventKind, data: BaseModel, root: str = SUBJECT_ROOT) -> str:
    """Where an event goes: its template's inbound subject, a status subject or the dead letters."""
    return subject_for(kind, template_of(kind, data), root)


@lru_cache(maxsize=4096)  # pure, and a publisher or the controller names the same few templates over and over
def subject_for(kind: EventKind, template: str | None, root: str = SUBJECT_ROOT) -> str:
    """`nats_subject` for a template already known (it becomes a subject token, so it must be a name)."""
    valid = template is not None and is_dns1123_label(template)
    if kind is EventKind.EVENT_REJECTED:
        return deadletter_subject(template if valid else None, root)
    if template is None or not valid:  # status models take any string; a subject token cannot
        raise EventDataError(kind, [("template", f"{template!r} is not a template name (DNS-1123 label)")])
    return template_subject(template, kind, root) if kind.inbound else status_subject(template, kind, root)


def _content_hash_of(data: BaseModel) -> str | None:
    if isinstance(data, TemplateVersionPublished):
        return data.content_hash
    if _has_field(type(data), "content_hash"):  # status events repeat the hash they concern
        value = data.content_hash  # type: ignore[attr-defined]
        return value if isinstance(value, str) else None
    return None


# Looked up once per model class: attribute misses on pydantic instances, and even
# `model_fields`, cost microseconds on every event.
@cache
def _has_field(model_type: type[BaseModel], name: str) -> bool:
    return name in model_type.model_fields


@cache
def _template_field(model_type: type[BaseModel]) -> str | None:
    if hasattr(model_type, "template_name"):
        return "template_name"
    return "template" if _has_field(model_type, "template") else None


# -------------------------------------------------------------------- encode


def new_event_id() -> str:
    """128 random bits in hex: unique per event, safe as a header value."""
    while True:
        try:
            return _event_ids.pop()
        except IndexError:  # drawn in batches: one system call per 256 events, not one per event
            random = os.urandom(16 * _EVENT_ID_BATCH).hex()
            _event_ids.extend(random[start : start + 32] for start in range(0, len(random), 32))


_EVENT_ID_BATCH: Final = 256
_event_ids: list[str] = []
os.register_at_fork(after_in_child=_event_ids.clear)  # a forked child must never reuse its parent's ids


def encode(
    kind: EventKind,
    data: BaseModel | dict[str, Any],
    *,
    source: str,
    subject_template: str | None = None,
    event_id: str | None = None,
    mode: Mode = "binary",
    time: datetime | None = None,
) -> tuple[dict[str, str], bytes]:
    """NATS headers (with `Nats-Msg-Id`) and payload for one event.

    `subject_template` is the CloudEvent `subject`; it defaults to the template the data
    names. The version's content hash (or a status event's) goes into `stokeholdhash`.
    Raises `EventDataError` for invalid data, id, source or time.
    """
    model = validate_data(kind, data)  # an instance of the kind's model passes through: the publisher validates once
    if event_id is None:
        event_id = new_event_id()
        _check_source(kind, source)
        header_id = event_id  # hex: nothing to encode
    else:
        _check_attributes(kind, event_id, source)
        header_id = _header_value(event_id)
    if time is not None and time.tzinfo is None:
        raise EventDataError(kind, [("time", "the event time must carry a time zone")])
    subject = subject_template or template_of(kind, model)

    if mode == "binary":
        body = model.__pydantic_serializer__.to_json(model, by_alias=True)  # model_dump_json's bytes, without a str round trip
        content_hash = _version_hash(model, body) if isinstance(model, TemplateVersionPublished) else _content_hash_of(model)
        headers = _binary_headers(kind, source, header_id, time, subject, content_hash)
    elif mode == "structured":
        content_hash = _content_hash_of(model)
        attributes: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": event_id,
            "source": source,
            "type": kind.ce_type,
            "time": time or datetime.now(UTC),
            "datacontenttype": DATA_CONTENT_TYPE,
        }
        if subject:
            attributes["subject"] = subject
        if content_hash:
            attributes[HASH_EXTENSION] = content_hash
        message = http.to_structured(CloudEvent(attributes, model.model_dump(mode="json", by_alias=True)), _FORMAT)
        headers, body = dict(message.headers), message.body
    else:
        raise ValueError(f"unknown content mode {mode!r}: binary or structured")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise EventDataError(kind, [("", f"the event is {len(body)} bytes, over the limit of {MAX_PAYLOAD_BYTES}")])
    headers[NATS_MSG_ID] = event_id
    return headers, body


# A version's binary payload is its canonical document with `apiVersion` and `kind` (both
# fixed literals) in front: the content hash (templates.schema.content_hash: template,
# version and spec, compact, in declaration order) is the rest of those same bytes, so
# publishing a version serialises it once instead of twice.
_VERSION_PAYLOAD_PREFIX: Final = b'{"apiVersion":"stokehold.dev/v1alpha1","kind":"ModelTemplateVersion",'


def _version_hash(version: TemplateVersionPublished, body: bytes) -> str:
    known = version.known_content_hash
    if known is not None:
        return known
    if not body.startswith(_VERSION_PAYLOAD_PREFIX):  # pragma: no cover - only if the schema's literals change
        return version.content_hash
    return "sha256:" + hashlib.sha256(b"{" + body[len(_VERSION_PAYLOAD_PREFIX) :]).hexdigest()


# Binary mode maps the attributes to headers here rather than through the SDK's HTTP
# binding: building an SDK event and running `to_binary` (urllib's `quote` on every value)
# cost more than the rest of a publish's client-side work together. The attributes are
# valid by construction, and a test checks that the headers are byte for byte what
# `to_binary` makes of the same event and that the SDK parses them back.


@lru_cache(maxsize=256)
def _constant_headers(kind: EventKind, source: str) -> dict[str, str]:
    return {
        f"{CE_PREFIX}specversion": SPEC_VERSION,
        f"{CE_PREFIX}source": _header_value(source),
        f"{CE_PREFIX}type": kind.ce_type,
        CONTENT_TYPE: DATA_CONTENT_TYPE,
    }


def _binary_headers(
    kind: EventKind, source: str, header_id: str, time: datetime | None, subject: str | None, content_hash: str | None
) -> dict[str, str]:
    headers = _constant_headers(kind, source).copy()
    headers["ce-id"] = header_id
    if time is None:
        headers["ce-time"] = datetime.now(UTC).isoformat()[:-6] + "Z"  # isoformat of a UTC time ends in +00:00
    else:
        stamp = time.isoformat()
        headers["ce-time"] = stamp[:-6] + "Z" if stamp.endswith("+00:00") else _header_value(stamp)
    if subject:
        headers["ce-subject"] = _cached_header_value(subject)
    if content_hash:
        headers["ce-" + HASH_EXTENSION] = _header_value(content_hash)
    return headers


def _header_value(text: str) -> str:
    """Percent-encoded as the HTTP binding does it, when (rarely) needed."""
    return text if _HEADER_SAFE.fullmatch(text) else quote(text, safe=_HEADER_SAFE_CHARS)


# subjects (templates) repeat from event to event
_cached_header_value = lru_cache(maxsize=4096)(_header_value)


def _check_attributes(kind: EventKind, event_id: str, source: str) -> None:
    if len(event_id) > MAX_EVENT_ID_LENGTH or not _EVENT_ID_RE.fullmatch(event_id):
        raise EventDataError(kind, [("id", f"event ids are 1 to {MAX_EVENT_ID_LENGTH} printable ASCII characters without spaces")])
    _check_source(kind, source)


def _check_source(kind: EventKind, source: str) -> None:
    if not source:
        raise EventDataError(kind, [("source", "the event source may not be empty")])


# -------------------------------------------------------------------- decode


def decode(headers: Mapping[str, str] | None, payload: bytes) -> DecodedEvent:
    """The validated event in a NATS message (either content mode). Raises only `EventDecodeError`."""
    try:
        return _decode(headers, payload)
    except EventDecodeError:
        raise
    except Exception as exc:  # a poison message must dead-letter, never crash the consumer
        raise EventDecodeError(f"internal decode failure ({type(exc).__name__}: {exc})") from None


def _decode(headers: Mapping[str, str] | None, payload: bytes) -> DecodedEvent:
    if type(payload) is bytes:
        body = payload
    elif isinstance(payload, bytes | bytearray | memoryview):
        body = bytes(payload)
    else:
        raise EventDecodeError(f"payload must be bytes, got {type(payload).__name__}")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise EventDecodeError(f"payload is {len(body)} bytes, over the limit of {MAX_PAYLOAD_BYTES}")
    content_type, attributes = _split_headers(headers)
    media_type = _media_type(content_type)

    if media_type is not None and media_type.startswith("application/cloudevents"):
        if media_type.startswith("application/cloudevents-batch"):
            raise EventDecodeError("batched CloudEvents are not supported: send one event per message")
        if media_type != STRUCTURED_CONTENT_TYPE:
            raise EventDecodeError(f"event format {media_type!r} is not supported (only {STRUCTURED_CONTENT_TYPE})")
        return _decode_structured(body)
    if attributes:
        return _decode_binary(attributes, content_type, body)
    if media_type is None and body.lstrip()[:1] == b"{":
        return _decode_structured(body)
    raise EventDecodeError(f"not a CloudEvent: no ce- headers, and content type {media_type or '(none)'} is not {STRUCTURED_CONTENT_TYPE}")


def _split_headers(headers: Mapping[str, str] | None) -> tuple[str | None, dict[str, str]]:
    """The content type and the `ce-` attributes (name without the prefix → raw value); names are case-insensitive."""
    if headers is None:
        return None, {}
    if not isinstance(headers, Mapping):
        raise EventDecodeError(f"headers must be a mapping, got {type(headers).__name__}")
    content_type: str | None = None
    attributes: dict[str, str] = {}
    size = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise EventDecodeError("header names and values must be strings")
        size += len(name) + len(value)
        lowered = name.lower()
        if lowered.startswith(CE_PREFIX):
            attributes[lowered[3:]] = value
        elif lowered == CONTENT_TYPE:
            content_type = value
    if size > MAX_HEADER_BYTES:
        raise EventDecodeError(f"headers are {size} bytes, over the limit of {MAX_HEADER_BYTES}")
    return content_type, attributes


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    if content_type == DATA_CONTENT_TYPE:  # what every binary event we publish says
        return content_type
    return content_type.split(";", 1)[0].strip().lower()


def _check_data_content_type(content_type: str | None, event_id: str | None, event_type: str | None) -> None:
    if content_type is not None and content_type != DATA_CONTENT_TYPE and not _JSON_MEDIA_TYPE.match(content_type.strip()):
        raise EventDecodeError(f"data content type {content_type!r} is not JSON ({DATA_CONTENT_TYPE})", event_id, event_type)


def _decode_binary(attributes: dict[str, str], content_type: str | None, body: bytes) -> DecodedEvent:
    # The attributes are read straight from the headers and the data is parsed by pydantic in
    # one pass (no SDK event, no intermediate dict): this is the consumer's hot path, and the
    # SDK's `from_binary` cost more than the validation itself. Structured mode, and every
    # interop test, still go through the SDK.
    event_id = _unquoted(attributes.get("id"))
    event_type = _unquoted(attributes.get("type"))
    for name in REQUIRED_ATTRIBUTES:
        if not attributes.get(name):  # percent-decoding never empties a value
            raise EventDecodeError(f"missing required attribute {name!r} (header {CE_PREFIX}{name})", event_id, event_type)
    assert event_id is not None and event_type is not None
    _check_spec_version(_unquoted(attributes["specversion"]), event_id, event_type)
    _check_data_content_type(content_type, event_id, event_type)
    for name in attributes:
        if name not in _KNOWN_ATTRIBUTES and (name in _RESERVED_NAMES or not _ATTRIBUTE_NAME.fullmatch(name)):
            raise EventDecodeError(f"invalid CloudEvent attributes: {name!r} is reserved or not valid", event_id, event_type)
    time_text = _unquoted(attributes.get("time"))
    time = _parse_time(time_text, event_id, event_type) if time_text is not None else None
    kind = _kind_of(event_type, event_id)
    if body[:1] != b"{":
        stripped = body.lstrip()
        if not stripped:
            raise EventDecodeError("the event has no data", event_id, event_type)
        if stripped[:1] != b"{":
            raise EventDecodeError("data must be a JSON object", event_id, event_type)
    try:
        model = DATA_MODELS[kind].model_validate_json(body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors(include_url=False)):
            raise EventDecodeError("data is not valid JSON", event_id, event_type) from None
        raise _data_mismatch(exc, event_id, event_type) from None
    except RecursionError:
        raise EventDecodeError("data is nested too deeply", event_id, event_type) from None
    return _finish(
        kind,
        model,
        event_id=event_id,
        event_type=event_type,
        source=_unquoted(attributes["source"]) or "",
        time=time,
        declared_hash=_unquoted(attributes.get(HASH_EXTENSION)),
        subject=_unquoted(attributes.get("subject")),
        mode="binary",
    )


def _unquoted(value: str | None) -> str | None:
    """A binary-mode attribute value, percent-decoded as the HTTP binding encodes it."""
    return unquote(value) if value is not None and "%" in value else value


_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")
_RESERVED_NAMES = frozenset({"data", "data_base64"})
# valid attribute names seen on every event, checked without the pattern
_KNOWN_ATTRIBUTES = frozenset({"id", "source", "type", "specversion", "time", "subject", "dataschema", HASH_EXTENSION})
# every event type we know, by its CloudEvent `type`
_KINDS_BY_TYPE: Final = {kind.ce_type: kind for kind in EventKind}


def _parse_time(text: str, event_id: str, event_type: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise EventDecodeError(f"invalid CloudEvent attributes: time {text!r} is not an RFC 3339 timestamp", event_id, event_type) from None


def _kind_of(event_type: str, event_id: str) -> EventKind:
    kind = _KINDS_BY_TYPE.get(event_type)
    if kind is None:
        raise EventDecodeError(f"unknown event type {event_type!r}", event_id, event_type)
    return kind


def _data_mismatch(exc: ValidationError, event_id: str, event_type: str) -> EventDecodeError:
    errors = errors_from(exc)
    details = "; ".join(f"{path or '<root>'}: {message}" for path, message in errors)
    return EventDecodeError(f"data does not match {event_type}: {details}", event_id, event_type, errors)


def _decode_structured(body: bytes) -> DecodedEvent:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise EventDecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise EventDecodeError(f"a structured CloudEvent is a JSON object, got {type(document).__name__}")
    event_id = document.get("id") if isinstance(document.get("id"), str) else None
    event_type = document.get("type") if isinstance(document.get("type"), str) else None
    for name in REQUIRED_ATTRIBUTES:
        if not isinstance(document.get(name), str) or not document[name]:
            raise EventDecodeError(f"missing required attribute {name!r} (a non-empty string)", event_id, event_type)
    _check_spec_version(document["specversion"], event_id, event_type)
    content_type = document.get("datacontenttype")
    if content_type is not None and not isinstance(content_type, str):
        raise EventDecodeError("datacontenttype must be a string", event_id, event_type)
    _check_data_content_type(content_type, event_id, event_type)
    if "time" in document and not isinstance(document["time"], str):
        raise EventDecodeError("time must be an RFC 3339 string", event_id, event_type)
    try:
        event = _FORMAT.read(CloudEvent, body)
    except (BaseCloudEventException, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise EventDecodeError(f"invalid CloudEvent: {exc}", event_id, event_type) from None
    return _validated(event, has_time="time" in document, mode="structured")


def _check_spec_version(version: str | None, event_id: str | None, event_type: str | None) -> None:
    if version != SPEC_VERSION:
        raise EventDecodeError(f"specversion {version!r} is not supported (only {SPEC_VERSION})", event_id, event_type)


def _validated(event: BaseCloudEvent, *, has_time: bool, mode: Mode) -> DecodedEvent:
    """Type, data and hash checks of an SDK-parsed event; `event` has valid CloudEvent attributes."""
    event_id, event_type = event.get_id(), event.get_type()
    kind = _kind_of(event_type, event_id)
    data = event.get_data()
    if isinstance(data, bytes):  # data_base64 in structured mode
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            raise EventDecodeError("data is not valid JSON", event_id, event_type) from None
    if data is None:
        raise EventDecodeError("the event has no data", event_id, event_type)
    if not isinstance(data, dict):
        raise EventDecodeError(f"data must be a JSON object, got {type(data).__name__}", event_id, event_type)
    try:
        model = DATA_MODELS[kind].model_validate(data)
    except ValidationError as exc:
        raise _data_mismatch(exc, event_id, event_type) from None
    except RecursionError:
        raise EventDecodeError("data is nested too deeply", event_id, event_type) from None
    declared_hash = event.get_extension(HASH_EXTENSION)
    if declared_hash is not None and not isinstance(declared_hash, str):
        raise EventDecodeError(f"{HASH_EXTENSION} must be a string", event_id, event_type)
    subject = event.get_subject()
    return _finish(
        kind,
        model,
        event_id=event_id,
        event_type=event_type,
        source=event.get_source(),
        time=event.get_time() if has_time else None,
        declared_hash=declared_hash,
        subject=subject if isinstance(subject, str) else None,
        mode=mode,
    )


def _finish(
    kind: EventKind,
    model: BaseModel,
    *,
    event_id: str,
    event_type: str,
    source: str,
    time: datetime | None,
    declared_hash: str | None,
    subject: str | None,
    mode: Mode,
) -> DecodedEvent:
    """The content-hash check shared by both modes, then the decoded event."""
    content_hash = declared_hash
    if isinstance(model, TemplateVersionPublished):
        content_hash = model.content_hash
        if declared_hash is not None and declared_hash != content_hash:
            raise EventDecodeError(
                f"{HASH_EXTENSION} {declared_hash!r} does not match the content hash {content_hash!r} of the data", event_id, event_type
            )
    return DecodedEvent(
        id=event_id, kind=kind, source=source, time=time, content_hash=content_hash or None, data=model, subject=subject, mode=mode
    )


__all__ = [
    "MAX_PAYLOAD_BYTES",
    "NATS_MSG_ID",
    "STRUCTURED_CONTENT_TYPE",
    "DecodedEvent",
    "EventDataError",
    "EventDecodeError",
    "Mode",
    "decode",
    "encode",
    "nats_subject",
    "new_event_id",
    "subject_for",
    "template_of",
    "validate_data",
]
