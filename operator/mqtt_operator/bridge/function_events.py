"""What a function call carries, built from MQTT messages: CloudEvents or plain JSON. Pure, no I/O.

Formats (docs/bridge.md, "FunctionTrigger worker", shows examples):

- `cloudevents`, `batchMaxMessages` 1: HTTP binary mode. The body is the payload; the attributes
  are `ce-*` headers (values percent-encoded as the HTTP binding requires): `ce-specversion` 1.0,
  `ce-id` (the broker's stamped message id: the same when a message is delivered again; without the
  stamp, unique per delivery), `ce-source` (`<eventSource>/<topic>`), `ce-type`, `ce-subject`
  (the topic), `ce-time` (when the worker received the message, RFC 3339 UTC, milliseconds) and the
  extensions `ce-mqttqos`, `ce-mqttretain` and `ce-mqttclientid` (when the publisher is known).
  `Content-Type` is the message's MQTT 5 content type; without one it is `application/json` when
  the payload is JSON, `text/plain; charset=utf-8` when it is UTF-8 text, else
  `application/octet-stream`. With `base64Payload` the body is the payload in base64,
  `Content-Type: text/plain; charset=us-ascii`, plus `ce-mqttencoding: base64` and
  `ce-mqttcontenttype` (the payload's own content type, as above).
- `cloudevents`, `batchMaxMessages` > 1: one `application/cloudevents-batch+json` body, a JSON
  array (of one or more events) in the structured format. `data` holds the payload when it is
  JSON (as JSON) or UTF-8 text (as a string), `data_base64` otherwise and always with
  `base64Payload`; `datacontenttype` as above, `mqttqos` an integer, `mqttretain` a boolean.
- `json`: `application/json`, an object per message (an array of them when `batchMaxMessages` > 1):
  `id`, `topic`, `clientId` (null when unknown), `payload` (UTF-8 text, else base64),
  `payloadEncoding` (`utf8` or `base64`; always `base64` with `base64Payload`), `contentType` and
  `userProperties` (an object; the last value of a repeated name) when the message has them,
  `qos`, `retain` and `ts` (epoch milliseconds, when the worker received the message).

The reply topic template (`ReplyTemplate`) is filled from the source message here as well.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import time
from collections.abc import Sequence
from itertools import count
from typing import Any, Final
from urllib.parse import quote

import msgspec

from mqtt_operator.bridge.config import MqttToFunction
from mqtt_operator.bridge.message_fields import all_user_properties, invalid_mqtt_topic, publisher_client_id
from mqtt_operator.bridge.records import Message, Reject

SPEC_VERSION: Final = "1.0"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
JSON_CONTENT_TYPE: Final = "application/json"
TEXT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"
BASE64_CONTENT_TYPE: Final = "text/plain; charset=us-ascii"

# How a payload travels in a structured event.
JSON: Final = 0  # `data`, as the JSON value itself
TEXT: Final = 1  # `data`, as a JSON string
BINARY: Final = 2  # `data_base64`

_JSON_MEDIA = re.compile(r"(application|text)/([-\w.]+\+)?json\s*(;|$)", re.IGNORECASE)
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# CloudEvents HTTP binding 3.1.3.2: space, '"', '%' and anything outside printable ASCII are
# percent-encoded (as UTF-8 bytes) in header values.
_HEADER_UNSAFE = re.compile(r"[^\x21\x23\x24\x26-\x7e]")
_HEADER_BYTE = tuple(
    chr(b) if 0x21 <= b <= 0x7E and b not in (0x22, 0x25) else f"%{b:02X}" for b in range(256)
)
# A URI path segment keeps these as they are (RFC 3986 pchar); the rest of a topic is percent-encoded.
_URI_PATH_SAFE = "/!$&'()*+,;=:@"
_QOS = ("0", "1", "2")
_BOOL = ("false", "true")

_is_raw_json = msgspec.json.Decoder(msgspec.Raw).decode
_encode_json = msgspec.json.Encoder().encode


class FunctionEvent:
    """One MQTT message on its way to the function, and what its calls so far have shown."""

    __slots__ = ("calls", "client_id", "failures", "id", "msg", "unavailable", "unavailable_since")

    def __init__(self, msg: Message, event_id: str, client_id: str | None) -> None:
        self.msg = msg
        self.id = event_id
        self.client_id = client_id
        self.calls = 0  # HTTP calls made with it (answered, timed out or cut off)
        self.failures = 0  # of those, the ones counted against retry.attempts (5xx, timeouts ...)
        # Answers saying the function is unavailable (429, 502, 503, 504) in a row, and when the first
        # of them came (monotonic seconds): retried for retry.unavailableFor, not counted in `failures`.
        self.unavailable = 0
        self.unavailable_since: float | None = None

    def __repr__(self) -> str:
        return f"FunctionEvent({self.id}, {self.msg!r})"


class ToEvent:
    """The pipeline's mapping: an MQTT message -> its `FunctionEvent` (id, publisher's client id)."""

    def __init__(self, spec: MqttToFunction, id_prefix: str | None = None) -> None:
        self.level = spec.client_id_topic_level
        self.property_name = spec.client_id_property
        # Without the broker's stamp: unique across replicas and restarts (a random per-process prefix +
        # a counter), but a redelivered message gets a new one.
        self._prefix = id_prefix if id_prefix is not None else os.urandom(6).hex()
        self._counter = count(1)

    def __call__(self, msg: Message) -> FunctionEvent | Reject:
        if msg.malformed is not None:
            return Reject(msg.malformed)
        stamped = msg.stamps
        client_id = publisher_client_id(msg, self.level, self.property_name)
        # The broker's id when it stamps one: a redelivered message is the same event (same ce-id), as
        # the CloudEvents spec asks; without it, an id of this delivery.
        event_id = stamped.message_id or f"{self._prefix}-{next(self._counter):x}"
        return FunctionEvent(msg, event_id, client_id)


# --- pieces -------------------------------------------------------------------------------------


def header_value(value: str) -> str:
    """`value` as a CloudEvents HTTP header value (percent-encoded where the binding requires)."""
    if _HEADER_UNSAFE.search(value) is None:
        return value
    return "".join([_HEADER_BYTE[b] for b in value.encode()])


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def rfc3339(ts: float) -> str:
    """Epoch seconds -> `2024-05-01T12:00:00.123Z` (the milliseconds of the `json` format's `ts`)."""
    second, ms = divmod(int(ts * 1000), 1000)
    return f"{_second(second)}.{ms:03d}Z"


def is_json(payload: bytes) -> bool:
    """Whether `payload` is one JSON value in UTF-8."""
    try:
        payload.decode()
        _is_raw_json(payload)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        # RecursionError: nested deeper than the decoder's limit (~1000 levels); it travels as text or
        # bytes then, instead of stopping the worker.
        return False
    return True


def data_form(payload: bytes, content_type: str | None) -> tuple[int, str]:
    """How the payload travels (JSON, TEXT or BINARY) and its content type (see the module's doc).

    A content type that could not be an HTTP header (control or non-ASCII characters) counts as none.
    """
    if content_type is not None and not printable(content_type):
        content_type = None
    if content_type is None:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            return BINARY, BINARY_CONTENT_TYPE
        if is_json(payload):
            return JSON, JSON_CONTENT_TYPE
        if _CONTROL.search(text) is None:
            return TEXT, TEXT_CONTENT_TYPE
        return BINARY, BINARY_CONTENT_TYPE
    if _JSON_MEDIA.match(content_type):
        return (JSON if is_json(payload) else BINARY), content_type
    if content_type[:5].lower() == "text/":
        try:
            payload.decode()
        except UnicodeDecodeError:
            return BINARY, content_type
        return TEXT, content_type
    return BINARY, content_type


def printable(text: str) -> bool:
    """Whether `text` is printable ASCII (fit for an HTTP header or an MQTT content type as it is)."""
    return _PRINTABLE.fullmatch(text) is not None


def _content_type(msg: Message) -> str | None:
    return msg.props.content_type if msg.props is not None else None


# --- bodies -------------------------------------------------------------------------------------


class Encoder:
    """The headers and body of one call with some events, as `MqttToFunction` configures."""

    def __init__(self, spec: MqttToFunction) -> None:
        self.cloudevents = spec.function.format == "cloudevents"
        self.batch = spec.batch_max_messages > 1
        self.base64 = spec.base64_payload
        self.event_source = spec.event_source.rstrip("/")
        self.event_type = spec.event_type
        self._type_header = header_value(spec.event_type)
        self.source = functools.lru_cache(maxsize=4096)(self._source)
        self._source_header = functools.lru_cache(maxsize=4096)(self._header_of_source)

    def _source(self, topic: str) -> str:
        return f"{self.event_source}/{quote(topic, safe=_URI_PATH_SAFE)}"

    def _header_of_source(self, topic: str) -> str:
        return header_value(self.source(topic))

    def encode(self, events: Sequence[FunctionEvent]) -> tuple[dict[str, str], bytes]:
        if self.cloudevents:
            if self.batch:
                body = _encode_json([self.structured(e) for e in events])
                return {"Content-Type": BATCH_CONTENT_TYPE}, body
            [event] = events
            return self.binary(event)
        if self.batch:
            return {"Content-Type": JSON_CONTENT_TYPE}, _encode_json([self.plain(e) for e in events])
        [event] = events
        return {"Content-Type": JSON_CONTENT_TYPE}, _encode_json(self.plain(event))

    def binary(self, event: FunctionEvent) -> tuple[dict[str, str], bytes]:
        """CloudEvents HTTP binary mode: attributes in `ce-*` headers, the payload as the body."""
        msg = event.msg
        topic = msg.topic
        headers = {
            "ce-specversion": SPEC_VERSION,
            # The broker's stamp is a UUID; without the plugin a publisher can set any text there.
            "ce-id": header_value(event.id),
            "ce-source": self._source_header(topic),
            "ce-type": self._type_header,
            "ce-subject": header_value(topic),
            "ce-time": rfc3339(msg.received or time.time()),
            "ce-mqttqos": _QOS[msg.qos],
            "ce-mqttretain": _BOOL[msg.retain],
        }
        if event.client_id is not None:
            headers["ce-mqttclientid"] = header_value(event.client_id)
        _, content_type = data_form(msg.payload, _content_type(msg))
        if self.base64:
            headers["Content-Type"] = BASE64_CONTENT_TYPE
            headers["ce-mqttencoding"] = "base64"
            headers["ce-mqttcontenttype"] = content_type
            return headers, base64.b64encode(msg.payload)
        headers["Content-Type"] = content_type
        return headers, msg.payload

    def structured(self, event: FunctionEvent) -> dict[str, Any]:
        """One event of a batch, in the CloudEvents JSON format."""
        msg = event.msg
        topic = msg.topic
        payload = msg.payload
        kind, content_type = data_form(payload, _content_type(msg))
        out: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": event.id,
            "source": self.source(topic),
            "type": self.event_type,
            "subject": topic,
            "time": rfc3339(msg.received or time.time()),
            "datacontenttype": content_type,
            "mqttqos": msg.qos,
            "mqttretain": msg.retain,
        }
        if event.client_id is not None:
            out["mqttclientid"] = event.client_id
        if self.base64 or kind == BINARY:
            out["data_base64"] = base64.b64encode(payload).decode()
        elif kind == JSON:
            out["data"] = msgspec.Raw(payload)
        else:
            out["data"] = payload.decode()
        return out

    def plain(self, event: FunctionEvent) -> dict[str, Any]:
        """The `json` format's object for one message."""
        msg = event.msg
        payload = msg.payload
        encoding = "base64"
        text = ""
        if not self.base64:
            try:
                text = payload.decode()
                encoding = "utf8"
            except UnicodeDecodeError:
                pass
        if encoding == "base64":
            text = base64.b64encode(payload).decode()
        out: dict[str, Any] = {
            "id": event.id,
            "topic": msg.topic,
            "clientId": event.client_id,
            "payload": text,
            "payloadEncoding": encoding,
        }
        props = msg.props
        if props is not None and props.content_type is not None:
            out["contentType"] = props.content_type
        user_properties = all_user_properties(msg)
        if user_properties:
            out["userProperties"] = dict(user_properties)
        out["qos"] = msg.qos
        out["retain"] = msg.retain
        out["ts"] = int((msg.received or time.time()) * 1000)
        return out


# --- replies ------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LEVEL = re.compile(r"level\.(\d+)")


class ReplyTemplate:
    """`replyTopic`: `{topic}`, `{clientId}` and `{level.N}` (N-th level of the source topic, from 0)."""

    def __init__(self, template: str) -> None:
        self.template = template
        parts: list[str | tuple[str, int]] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(template):
            parts.append(self._literal(template[pos : match.start()]))
            name = match.group(1)
            level = _LEVEL.fullmatch(name)
            if name in ("topic", "clientId"):
                parts.append((name, 0))
            elif level is not None:
                parts.append(("level", int(level.group(1))))
            else:
                raise ValueError(
                    f"replyTopic {template!r}: {{{name}}} is not a placeholder; "
                    "use {topic}, {clientId} or {level.N}"
                )
            pos = match.end()
        parts.append(self._literal(template[pos:]))
        self.parts = [p for p in parts if p != ""]

    def _literal(self, text: str) -> str:
        if "{" in text or "}" in text:
            raise ValueError(
                f"replyTopic {self.template!r}: braces may only hold {{topic}}, {{clientId}} or {{level.N}}"
            )
        return text

    def fill(self, topic: str, client_id: str | None) -> tuple[str | None, str]:
        """(the reply topic, "") or (None, why it cannot be filled for this message)."""
        out: list[str] = []
        levels: list[str] | None = None
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, index = part
            if name == "topic":
                out.append(topic)
            elif name == "clientId":
                if client_id is None:
                    return None, "the publisher's client id is not known"
                if "/" in client_id or "+" in client_id or "#" in client_id:
                    return None, f"the publisher's client id {client_id!r} contains '/', '+' or '#'"
                out.append(client_id)
            else:
                levels = levels if levels is not None else topic.split("/")
                if index >= len(levels):
                    return None, f"topic {topic!r} has no level {index}"
                out.append(levels[index])
        filled = "".join(out)
        why = invalid_mqtt_topic(filled)
        if why is not None:
            return None, why
        return filled, ""
