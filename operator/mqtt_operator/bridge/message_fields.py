"""What the mappings read from an MQTT message: the topic's validity, the publisher's client id, a JSON field.

Shared by the Kafka (`kafka_mapping.py`), RocketMQ (`rocketmq_mapping.py`) and function
(`function_events.py`) mappings. Pure functions, no I/O.

The publisher's client id: Mosquitto 2.0 does not put it on a delivered message, so it is taken,
in this order, from a configured topic level (`clientIdTopicLevel`: robust, because the broker's
ACL decides who may publish under `devices/<id>/...`, a device cannot claim another's level) or
from the MQTT 5 user property the device sets (`clientIdProperty`, default `clientId`: a
convention the device follows, not enforced by the broker). Without either it is unknown and
left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from mqtt_operator.bridge.records import Message


def invalid_mqtt_topic(topic: str) -> str | None:
    """Why `topic` cannot be published to, or None when it can."""
    if not topic:
        return "empty MQTT topic"
    if "+" in topic or "#" in topic:
        return f"MQTT topic {topic!r} contains a wildcard"
    if topic.startswith("$"):
        return f"MQTT topic {topic!r} starts with '$' (reserved for the broker)"
    if "\x00" in topic:
        return "MQTT topic contains a NUL character"
    if len(topic.encode()) > 65535:
        return "MQTT topic longer than 65535 bytes"
    return None


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
    except msgspec.DecodeError:
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


def publisher_client_id(msg: Message, topic_level: int | None, property_name: str) -> str | None:
    """The publisher's client id: the topic level `topic_level` when set, else the user property
    `property_name`; None when unknown (see the module's doc)."""
    if topic_level is not None:
        levels = msg.topic.split("/")
        if topic_level < len(levels) and levels[topic_level]:
            return levels[topic_level]
        return None
    if msg.props is not None:
        for name, value in msg.props.user_properties:
            if name == property_name:
                return value
    return None
