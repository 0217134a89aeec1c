"""What the mappings read from an MQTT message: the topic's validity, the publisher's client id, a JSON field.

Shared by the Kafka (`kafka_mapping.py`), RocketMQ (`rocketmq_mapping.py`) and function
(`function_events.py`) mappings. Pure functions, no I/O.

The broker's stamps: with the project's broker plugin loaded (docs/broker-plugin.md), every message
carries MQTT 5 user properties under the prefix `mqtt-operator/` that only the broker sets (a
publisher's own are removed): the publisher's client id and address, a message id that stays the same
when the message is delivered again, and the broker's receive time. The MQTT codec takes them out of
the publisher's user properties into `Message.stamps` (`records.Stamps`); `all_user_properties` puts
them back where a message is passed on whole.

The publisher's client id is taken, in this order, from a configured topic level
(`clientIdTopicLevel`: the broker's ACL decides who may publish under `devices/<id>/...`), from the
broker's stamp `mqtt-operator/clientId` (trusted: the broker set it), or, without the plugin, from the
MQTT 5 user property the device sets (`clientIdProperty`, default `clientId`: a convention the device
follows, not enforced by the broker). Without any it is unknown and left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from mqtt_operator.bridge.records import (
    NO_STAMPS,
    STAMP_CLIENT_ADDRESS,
    STAMP_CLIENT_ID,
    STAMP_MESSAGE_ID,
    STAMP_RECEIVED_AT,
    Message,
    Stamps,
)

# What Mosquitto refuses in an MQTT string (a topic, a user property's name or value, a content type):
# control characters, tab and newline too, and Unicode's non-characters (and the surrogates, which UTF-8
# cannot carry). It disconnects the client that sends one ("Malformed UTF-8"; MQTT 5 section 1.5.4 lets
# it), so a publish carrying one would fail its connection again on every retry and hold up everything
# behind it. Measured on 2.0.11 (tests/integration/test_bridge_bad_input.py, docs/bridge.md "Bad input").
_MQTT_REFUSED = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17))
    + "]"
)
MQTT_STRING_MAX: Final = 65535  # bytes: an MQTT string's length is two bytes on the wire


def mqtt_string_problem(text: str) -> str | None:
    """Why `text` cannot be an MQTT string that Mosquitto takes, or None when it can."""
    refused = _MQTT_REFUSED.search(text)
    if refused is not None:
        return f"contains {refused.group()!r}, which Mosquitto refuses"
    if len(text) > MQTT_STRING_MAX // 4 and len(text.encode()) > MQTT_STRING_MAX:
        return f"is longer than {MQTT_STRING_MAX} bytes"
    return None


def mqtt_safe(text: str) -> str:
    """`text` as an MQTT string Mosquitto takes (for reasons and the like): what it refuses written as
    `\\uXXXX`, cut to 65535 bytes."""
    if _MQTT_REFUSED.search(text) is not None:
        text = _MQTT_REFUSED.sub(_escape, text)
    if len(text) > MQTT_STRING_MAX // 4:
        text = text.encode()[:MQTT_STRING_MAX].decode(errors="ignore")
    return text


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def invalid_mqtt_topic(topic: str) -> str | None:
    """Why `topic` cannot be published to, or None when it can."""
    if not topic:
        return "empty MQTT topic"
    if "+" in topic or "#" in topic:
        return f"MQTT topic {_shown(topic)} contains a wildcard"
    if topic.startswith("$"):
        return f"MQTT topic {_shown(topic)} starts with '$' (reserved for the broker)"
    why = mqtt_string_problem(topic)
    if why is not None:
        return f"MQTT topic {_shown(topic)} {why}"
    return None


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}..."


_PATH_PART = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """`$.a.b`, `$.list[0].x`, `$['odd key']` -> ('a', 'b'), ('list', 0, 'x'), ('odd key',)."""
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with '$'")
    parts: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _PATH_PART.match(path, pos)
        if match is None:
            raise ValueError(f"JSON path {path!r}: cannot read {path[pos:]!r}")
        name, index, quoted, dquoted = match.groups()
        if index is not None:
            parts.append(int(index))
        else:
            parts.append(next(p for p in (name, quoted, dquoted) if p is not None))
        pos = match.end()
    if not parts:
        raise ValueError(f"JSON path {path!r} names no field")
    return tuple(parts)


_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


def json_field(payload: bytes, path: Sequence[str | int]) -> bytes | None:
    """The field at `path` as key bytes (strings as their UTF-8 text, others as JSON), or None."""
    try:
        node: Any = _decode_json(payload)
    except (msgspec.DecodeError, RecursionError):
        # RecursionError: nested deeper than the decoder's limit (~1000 levels, a 2 KB payload of
        # `[[[...`); it is no document with that field, not a reason to stop the worker.
        return None
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return None
        elif not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    if isinstance(node, str):
        return node.encode()
    return _encode_json(node)


# What the stamps are called in a Kafka header or RocketMQ property (the same name in both).
PUBLISHER_CLIENT_ID: Final = "mqtt.publisherClientId"
PUBLISHER_ADDRESS: Final = "mqtt.publisherAddress"


def stamp_properties(stamped: Stamps) -> list[tuple[str, str]]:
    """The stamps as the user properties the broker sent, in its order."""
    names = (STAMP_CLIENT_ID, STAMP_CLIENT_ADDRESS, STAMP_MESSAGE_ID, STAMP_RECEIVED_AT)
    values = (stamped.client_id, stamped.client_address, stamped.message_id, stamped.received_at)
    return [(name, value) for name, value in zip(names, values, strict=True) if value is not None]


def all_user_properties(msg: Message) -> list[tuple[str, str]]:
    """Every user property the message came with: the publisher's, then the broker's stamps (for what
    passes a message on whole: dead letters, the function's event body)."""
    own = msg.props.user_properties if msg.props is not None else []
    return [*own, *stamp_properties(msg.stamps)] if msg.stamps is not NO_STAMPS else list(own)


def publisher_client_id(msg: Message, topic_level: int | None, property_name: str) -> str | None:
    """The publisher's client id: the topic level `topic_level` when set, else the broker's stamp, else
    the user property `property_name`; None when unknown (see the module's doc)."""
    if topic_level is not None:
        levels = msg.topic.split("/")
        if topic_level < len(levels) and levels[topic_level]:
            return levels[topic_level]
        return None
    if msg.stamps.client_id is not None:
        return msg.stamps.client_id
    if msg.props is not None:
        for name, value in msg.props.user_properties:
            if name == property_name:
                return value
    return None
