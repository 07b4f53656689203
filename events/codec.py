"""CloudEvents ⇄ NATS messages (pure, no I/O).

The NATS protocol binding has two content modes and we accept both:

- binary: each attribute in a NATS header `ce-<attribute>` (values percent-encoded as in
  the HTTP binding), `datacontenttype` in `content-type`, the data alone as payload;
- structured: `content-type: application/cloudevents+json` and the whole event as JSON.
  A message with no headers at all whose payload is a JSON object is read as structured
  too: that is all the binding allowed before NATS had headers.

The cloudevents SDK builds, serialises, parses and validates the events. It has no NATS
binding, so its HTTP binding does the work and NATS headers stand in for HTTP headers
(`to_nats_binary`). Every event gets a random id (a UUID4: nobody can guess the next one
and claim it first), also sent as `Nats-Msg-Id`, so that a retried publish of the same
event is stored once within the stream's duplicate window.

`decode` raises `EventDecodeError` and nothing else, whatever it is given.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import unquote

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
    EventAccepted,
    EventKind,
    EventRejected,
    TemplateVersionPublished,
    deadletter_subject,
    status_subject,
    template_of_subject,
    template_subject,
)
from templates.naming import is_dns1123_label
from templates.schema import ModelTemplateVersion, error_text, errors_from

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
# An event id becomes the raw Nats-Msg-Id header and a Kubernetes annotation: printable ASCII, no spaces.
_EVENT_ID_RE: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_EVENT_ID_LENGTH}}}")
_ID_RULE: Final = f"event ids are 1 to {MAX_EVENT_ID_LENGTH} printable ASCII characters without spaces"
_ATTRIBUTE_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
_RESERVED_NAMES: Final = frozenset({"data", "data_base64"})
_KINDS_BY_TYPE: Final = {kind.ce_type: kind for kind in EventKind}


class EventDecodeError(ValueError):
    """A NATS message is not a valid stokehold CloudEvent. The one error `decode` raises.

    `event_id` and `event_type` are filled in when the message got far enough to say them
    (an id only once it is known to be valid), so a dead letter can name the event;
    `errors` lists (field path, message) pairs when the data did not match its model.
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
        super().__init__(f"invalid {kind.value} event: {error_text(errors)}")


class DecodedEvent(NamedTuple):
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
        return model_type.model_validate(data)
    except ValidationError as exc:
        raise EventDataError(kind, errors_from(exc)) from None


def template_of(kind: EventKind, data: BaseModel) -> str | None:
    """The template an event concerns (its CloudEvent subject and NATS subject token)."""
    if isinstance(data, EventAccepted | EventRejected):  # answers: the template of the event they answer
        return template_of_subject(data.subject)
    template = getattr(data, "template_name", None)  # inbound data
    if template is None:
        template = getattr(data, "template", None)  # status data
    return template if isinstance(template, str) else None


def nats_subject(kind: EventKind, data: BaseModel, root: str = SUBJECT_ROOT) -> str:
    """Where an event goes: its template's inbound subject, a status subject or the dead letters."""
    return subject_for(kind, template_of(kind, data), root)


def subject_for(kind: EventKind, template: str | None, root: str = SUBJECT_ROOT) -> str:
    """`nats_subject` for a template already known (it becomes a subject token, so it must be a name)."""
    valid = template is not None and is_dns1123_label(template)
    if kind is EventKind.EVENT_REJECTED:
        return deadletter_subject(template if valid else None, root)
    if template is None or not valid:  # status models take any string; a subject token cannot
        raise EventDataError(kind, [("template", f"{template!r} is not a template name (DNS-1123 label)")])
    return template_subject(template, kind, root) if kind.inbound else status_subject(template, kind, root)


def _content_hash_of(data: BaseModel) -> str | None:
    """A version's content hash, or the hash a status event concerns."""
    value = getattr(data, "content_hash", None)
    return value if isinstance(value, str) else None


# -------------------------------------------------------------------- encode


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

    `event_id` defaults to a random UUID. `subject_template` is the CloudEvent `subject`; it
    defaults to the template the data names. The version's content hash (or a status
    event's) goes into `stokeholdhash`. Raises `EventDataError` for invalid data, id, source or time.
    """
    model = validate_data(kind, data)  # an instance of the kind's model passes through: the publisher validates once
    if event_id is None:
        event_id = str(uuid.uuid4())
    elif not _EVENT_ID_RE.fullmatch(event_id):
        raise EventDataError(kind, [("id", _ID_RULE)])
    if not source:
        raise EventDataError(kind, [("source", "the event source may not be empty")])
    if time is not None and time.tzinfo is None:
        raise EventDataError(kind, [("time", "the event time must carry a time zone")])
    attributes: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": kind.ce_type,
        "time": time or datetime.now(UTC),
        "datacontenttype": DATA_CONTENT_TYPE,
    }
    subject = subject_template or template_of(kind, model)
    if subject:
        attributes["subject"] = subject
    content_hash = _content_hash_of(model)
    if content_hash:
        attributes[HASH_EXTENSION] = content_hash
    event = CloudEvent(attributes, model.model_dump(mode="json", by_alias=True))
    if mode == "binary":
        headers, body = to_nats_binary(event)
    elif mode == "structured":
        message = http.to_structured(event, _FORMAT)
        headers, body = dict(message.headers), message.body
    else:
        raise ValueError(f"unknown content mode {mode!r}: binary or structured")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise EventDataError(kind, [("", f"the event is {len(body)} bytes, over the limit of {MAX_PAYLOAD_BYTES}")])
    headers[NATS_MSG_ID] = event_id
    return headers, body


def to_nats_binary(event: BaseCloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary content mode on NATS: the HTTP binding's mapping, with NATS headers for HTTP headers.

    Each attribute becomes a `ce-<name>` header, its value percent-encoded (all but printable
    ASCII without space, '"' and '%'; times in RFC 3339 with `Z` for UTC), `datacontenttype`
    becomes `content-type`, and the data alone is the payload. NATS headers, like HTTP
    headers, are ASCII lines, so the encoding that keeps HTTP headers safe keeps these safe.
    """
    message = http.to_binary(event, _FORMAT)
    return dict(message.headers), message.body


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
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise EventDecodeError(f"payload must be bytes, got {type(payload).__name__}")
    body = bytes(payload)
    if len(body) > MAX_PAYLOAD_BYTES:
        raise EventDecodeError(f"payload is {len(body)} bytes, over the limit of {MAX_PAYLOAD_BYTES}")
    content_type, attributes = _split_headers(headers)
    media_type = None if content_type is None else content_type.split(";", 1)[0].strip().lower()

    if media_type is not None and media_type.startswith("application/cloudevents"):
        if media_type.startswith("application/cloudevents-batch"):
            raise EventDecodeError("batched CloudEvents are not supported: send one event per message")
        if media_type != STRUCTURED_CONTENT_TYPE:
            raise EventDecodeError(f"event format {media_type!r} is not supported (only {STRUCTURED_CONTENT_TYPE})")
        return _decode_structured(body)
    if attributes:
        assert headers is not None
        return _decode_binary(headers, attributes, content_type, body)
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
            attributes[lowered[len(CE_PREFIX) :]] = value
        elif lowered == CONTENT_TYPE:
            content_type = value
    if size > MAX_HEADER_BYTES:
        raise EventDecodeError(f"headers are {size} bytes, over the limit of {MAX_HEADER_BYTES}")
    return content_type, attributes


def _checked_id(event_id: object) -> str | None:
    """A string id if it is valid, None if there is none; raises, without echoing it, if it is not valid.

    The id reaches dead letters, logs and a Kubernetes annotation: CR, LF or NUL in it could
    forge lines there, and a long one would fill them.
    """
    if not isinstance(event_id, str) or not event_id:
        return None  # the check for required attributes names what is missing
    if not _EVENT_ID_RE.fullmatch(event_id):
        raise EventDecodeError(f"invalid event id ({len(event_id)} characters): {_ID_RULE}")
    return event_id


def _check_data_content_type(content_type: str | None, event_id: str | None, event_type: str | None) -> None:
    if content_type is not None and not _JSON_MEDIA_TYPE.match(content_type.strip()):
        raise EventDecodeError(f"data content type {content_type!r} is not JSON ({DATA_CONTENT_TYPE})", event_id, event_type)


def _check_spec_version(version: str | None, event_id: str | None, event_type: str | None) -> None:
    if version != SPEC_VERSION:
        raise EventDecodeError(f"specversion {version!r} is not supported (only {SPEC_VERSION})", event_id, event_type)


def _decode_binary(headers: Mapping[str, str], attributes: dict[str, str], content_type: str | None, body: bytes) -> DecodedEvent:
    # The checks before the SDK parses the message name what is wrong in words a producer understands.
    event_id = _checked_id(unquote(attributes.get("id", "")))
    event_type = unquote(attributes["type"]) if "type" in attributes else None
    for name in REQUIRED_ATTRIBUTES:
        if not attributes.get(name):  # percent-decoding never empties a value
            raise EventDecodeError(f"missing required attribute {name!r} (header {CE_PREFIX}{name})", event_id, event_type)
    _check_spec_version(unquote(attributes["specversion"]), event_id, event_type)
    _check_data_content_type(content_type, event_id, event_type)
    for name in attributes:
        if name in _RESERVED_NAMES or not _ATTRIBUTE_NAME.fullmatch(name):
            raise EventDecodeError(f"invalid CloudEvent attributes: {name!r} is reserved or not valid", event_id, event_type)
    stripped = body.lstrip()
    if not stripped:
        raise EventDecodeError("the event has no data", event_id, event_type)
    if stripped[:1] != b"{":
        raise EventDecodeError("data must be a JSON object", event_id, event_type)
    try:
        event = http.from_binary(http.HTTPMessage(headers=dict(headers), body=body), _FORMAT, CloudEvent)
    except RecursionError:
        raise EventDecodeError("data is nested too deeply", event_id, event_type) from None
    except (BaseCloudEventException, ValueError, TypeError, OverflowError) as exc:
        raise EventDecodeError(f"invalid CloudEvent attributes: {exc}", event_id, event_type) from None
    if not isinstance(event.get_data(), dict):  # the SDK hands back text or bytes for JSON it cannot parse
        raise EventDecodeError("data is not valid JSON", event_id, event_type)
    return _validated(event, has_time="time" in attributes, mode="binary")


def _decode_structured(body: bytes) -> DecodedEvent:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise EventDecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise EventDecodeError(f"a structured CloudEvent is a JSON object, got {type(document).__name__}")
    event_id = _checked_id(document.get("id"))
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


def _validated(event: BaseCloudEvent, *, has_time: bool, mode: Mode) -> DecodedEvent:
    """Type, data and hash checks of an SDK-parsed event; `event` has valid CloudEvent attributes and a valid id."""
    event_id, event_type = event.get_id(), event.get_type()
    kind = _KINDS_BY_TYPE.get(event_type)
    if kind is None:
        raise EventDecodeError(f"unknown event type {event_type!r}", event_id, event_type)
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
        errors = errors_from(exc)
        raise EventDecodeError(f"data does not match {event_type}: {error_text(errors)}", event_id, event_type, errors) from None
    except RecursionError:
        raise EventDecodeError("data is nested too deeply", event_id, event_type) from None
    declared_hash = event.get_extension(HASH_EXTENSION)
    if declared_hash is not None and not isinstance(declared_hash, str):
        raise EventDecodeError(f"{HASH_EXTENSION} must be a string", event_id, event_type)
    content_hash = declared_hash
    if isinstance(model, TemplateVersionPublished):
        content_hash = model.content_hash
        if declared_hash is not None and declared_hash != content_hash:
            raise EventDecodeError(
                f"{HASH_EXTENSION} {declared_hash!r} does not match the content hash {content_hash!r} of the data", event_id, event_type
            )
    subject = event.get_subject()
    return DecodedEvent(
        id=event_id,
        kind=kind,
        source=event.get_source(),
        time=event.get_time() if has_time else None,
        content_hash=content_hash or None,
        data=model,
        subject=subject if isinstance(subject, str) else None,
        mode=mode,
    )


__all__ = [
    "MAX_EVENT_ID_LENGTH",
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
    "subject_for",
    "template_of",
    "to_nats_binary",
    "validate_data",
]
