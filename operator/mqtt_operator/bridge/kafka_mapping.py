"""The Kafka mapping: MQTT messages to Kafka records and back, with their dead letters. Pure, no I/O.

MQTT -> Kafka (`Uplink`): the Kafka topic (fixed, or the MQTT topic's first level when it is a
registered parent topic), the key (none, the MQTT topic, the publisher's client id, or a field of
the JSON payload), the headers (MQTT system fields, user properties, content type, correlation
data) and the value (the raw payload or the JSON envelope).

Kafka -> MQTT (`Downlink`): the MQTT topic, QoS and retain flag from record headers, with defaults.

Each mapping returns a record for the sink, a `Skip` (counted and acknowledged, e.g. a topic that
is not a registered parent) or a `Reject` (goes to the dead letter with its reason). The publisher's
client id and JSON key fields are read as `message_fields.py` says.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Sequence
from itertools import count
from typing import Final

import msgspec

from mqtt_operator.bridge.config import KafkaToMqtt, MqttToKafka
from mqtt_operator.bridge.message_fields import (
    PUBLISHER_ADDRESS,
    PUBLISHER_CLIENT_ID,
    all_user_properties,
    invalid_mqtt_topic,
    json_field,
    mqtt_string_problem,
    parse_json_path,
    publisher_client_id,
    stamp_properties,
)
from mqtt_operator.bridge.records import Header, KafkaRecord, Message, MqttPublish, Properties, Reject, Skip

# Kafka header names of the MQTT system fields. User properties keep their own names.
H_TOPIC: Final = "mqtt.topic"
H_QOS: Final = "mqtt.qos"
H_RETAIN: Final = "mqtt.retain"
H_DUP: Final = "mqtt.dup"
H_PACKET_ID: Final = "mqtt.packetId"
H_MESSAGE_ID: Final = "mqtt.messageId"
H_CLIENT_ID: Final = "mqtt.clientId"
H_CONTENT_TYPE: Final = "mqtt.contentType"
H_CORRELATION_DATA: Final = "mqtt.correlationData"
H_RESPONSE_TOPIC: Final = "mqtt.responseTopic"
H_PAYLOAD_FORMAT: Final = "mqtt.payloadFormat"
H_MESSAGE_EXPIRY: Final = "mqtt.messageExpiry"

_QOS = (b"0", b"1", b"2")
_BOOL = (b"false", b"true")
_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_encode_json = msgspec.json.Encoder().encode

# KafkaRecord(...) goes through a generated __new__; tuple.__new__ builds the same object faster.
_new_record = tuple.__new__


def valid_kafka_topic(name: str) -> bool:
    return _KAFKA_TOPIC.fullmatch(name) is not None and name not in (".", "..")


# --- MQTT -> Kafka ----------------------------------------------------------------------------


class Uplink:
    """MQTT message -> Kafka record, as configured by an `MqttToKafka` spec."""

    def __init__(self, spec: MqttToKafka, message_id_prefix: str | None = None) -> None:
        self.spec = spec
        if spec.parent_topics:
            self.fixed_topic: str | None = None
            self.parents = frozenset(spec.parent_topics)
        elif spec.kafka_topic:
            self.fixed_topic = spec.kafka_topic
            self.parents = frozenset()
        else:
            raise ValueError("mqttToKafka needs either kafkaTopic or parentTopics")
        for name in (self.fixed_topic, *spec.parent_topics):
            if name is not None and not valid_kafka_topic(name):
                raise ValueError(f"{name!r} is not a valid Kafka topic name")
        self.key_source = spec.key.source
        if self.key_source == "payloadField":
            if not spec.key.path:
                raise ValueError("key.source payloadField needs key.path, e.g. $.plate")
            self.key_path = parse_json_path(spec.key.path)
        self.client_id_level = spec.client_id_topic_level
        self.client_id_property = spec.client_id_property
        self.system_headers = spec.system_headers
        self.user_property_headers = spec.user_property_headers
        self.envelope = spec.value == "envelope"
        # A message id unique across replicas and restarts: a random per-process prefix + a counter.
        self._prefix = message_id_prefix if message_id_prefix is not None else os.urandom(6).hex()
        self._counter = count(1)

    def client_id(self, msg: Message) -> str | None:
        return publisher_client_id(msg, self.client_id_level, self.client_id_property)

    def __call__(
        self, msg: Message, _qos: tuple[bytes, ...] = _QOS, _bool: tuple[bytes, ...] = _BOOL
    ) -> KafkaRecord | Skip | Reject:
        if msg.malformed is not None:
            return Reject(msg.malformed)
        topic = msg.topic
        if self.fixed_topic is not None:
            kafka_topic = self.fixed_topic
        else:
            kafka_topic = topic.split("/", 1)[0]
            if kafka_topic not in self.parents:
                return Skip("parent topic not registered")

        props = msg.props
        stamped = msg.stamps
        client_id = publisher_client_id(msg, self.client_id_level, self.client_id_property)

        key_source = self.key_source
        key: bytes | None
        if key_source == "clientId":
            key = client_id.encode() if client_id is not None else None
        elif key_source == "topic":
            key = topic.encode()
        elif key_source == "none":
            key = None
        else:
            key = json_field(msg.payload, self.key_path)

        # The broker's receive time when it stamps one, else the worker's.
        ts = stamped.time_ms or (int(msg.received * 1000) if msg.received else int(time.time() * 1000))
        headers: list[Header] = []
        if self.system_headers:
            headers = [
                (H_TOPIC, topic.encode()),
                (H_QOS, _qos[msg.qos]),
                (H_RETAIN, _bool[msg.retain]),
                (H_DUP, _bool[msg.dup]),
                (H_PACKET_ID, b"%d" % msg.packet_id),
                # The broker's id stays the same when a message is delivered again (a consumer can
                # deduplicate); without the plugin, an id of this delivery.
                (
                    H_MESSAGE_ID,
                    stamped.message_id.encode()
                    if stamped.message_id is not None
                    else b"%s-%x" % (self._prefix.encode(), next(self._counter)),
                ),
            ]
            if client_id is not None:
                headers.append((H_CLIENT_ID, client_id.encode()))
            if stamped.client_id is not None:
                headers.append((PUBLISHER_CLIENT_ID, stamped.client_id.encode()))
            if stamped.client_address is not None:
                headers.append((PUBLISHER_ADDRESS, stamped.client_address.encode()))
        if props is not None:
            if props.content_type is not None:
                headers.append((H_CONTENT_TYPE, props.content_type.encode()))
            if props.correlation_data is not None:
                headers.append((H_CORRELATION_DATA, props.correlation_data))
            if self.system_headers:
                if props.response_topic is not None:
                    headers.append((H_RESPONSE_TOPIC, props.response_topic.encode()))
                if props.payload_format is not None:
                    headers.append((H_PAYLOAD_FORMAT, b"%d" % props.payload_format))
                if props.message_expiry is not None:
                    headers.append((H_MESSAGE_EXPIRY, b"%d" % props.message_expiry))
            if self.user_property_headers:
                headers.extend([(name, value.encode()) for name, value in props.user_properties])
        if self.user_property_headers and not self.system_headers:
            # Without the system headers, the stamps travel as the user properties they came as.
            headers.extend([(name, value.encode()) for name, value in stamp_properties(stamped)])

        value = envelope(client_id, topic, msg.payload, ts) if self.envelope else msg.payload
        return _new_record(KafkaRecord, (kafka_topic, key, value, headers, ts))


def envelope(client_id: str | None, topic: str, payload: bytes, ts: int) -> bytes:
    """`{"clientId","topic","payload","ts"}`, exactly the cloud service's stored value, when the payload is
    UTF-8 text; a payload that is not gets `"payloadEncoding": "base64"` beside it (lossless, and the
    only extra key, so a consumer with the service's strict schema reads every text message)."""
    try:
        return _encode_json({"clientId": client_id, "topic": topic, "payload": payload.decode(), "ts": ts})
    except UnicodeDecodeError:
        text = base64.b64encode(payload).decode()
        return _encode_json(
            {"clientId": client_id, "topic": topic, "payload": text, "payloadEncoding": "base64", "ts": ts}
        )


# --- Kafka -> MQTT ----------------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


# A `cleanSession: true` record is for the devices connected now: it expires this many seconds after
# the broker receives it, so a persistent session that is offline does not get it later.
CLEAN_SESSION_EXPIRY_SECONDS: Final = 1


class Downlink:
    """Kafka record (value + headers) -> MQTT publish, as configured by a `KafkaToMqtt` spec.

    The routing headers (topic, QoS, retain, clean session) are matched without regard to case, as the
    cloud services' samples spell them both ways (`qosLevel`, `qoslevel`). Other headers travel as
    MQTT 5 user properties when their value is UTF-8 text. QoS 2 is published at QoS 2 (PUBREC,
    PUBREL, PUBCOMP): exactly once from the broker to each device; the Kafka offset is committed after
    PUBCOMP, so the Kafka -> broker leg stays at least once.
    """

    def __init__(self, spec: KafkaToMqtt) -> None:
        self.spec = spec
        self.topic_header = spec.topic_header
        self.routing = {
            spec.topic_header.lower(): "topic",
            spec.qos_header.lower(): "qos",
            spec.retain_header.lower(): "retain",
            spec.clean_session_header.lower(): "cleanSession",
        }
        if spec.default_topic is not None and (why := invalid_mqtt_topic(spec.default_topic)):
            raise ValueError(f"defaultTopic: {why}")

    def __call__(self, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> MqttPublish | Reject:
        spec = self.spec
        topic = spec.default_topic
        qos: int = spec.default_qos
        retain = spec.default_retain
        clean = False
        user_properties: list[tuple[str, str]] = []
        routing = self.routing
        for name, raw in headers:
            role = routing.get(name.lower())
            if role is not None:
                try:
                    text = raw.decode() if raw is not None else ""
                except UnicodeDecodeError:
                    return Reject(f"header {name!r} is not UTF-8 text")
                if role == "topic":
                    topic = text
                elif role == "qos":
                    if text.strip() not in ("0", "1", "2"):
                        return Reject(f"header {name!r}: QoS {text!r} is not 0, 1 or 2")
                    qos = int(text)
                else:
                    flag = _flag(text)
                    if flag is None:
                        return Reject(f"header {name!r}: {text!r} is not true or false")
                    if role == "retain":
                        retain = flag
                    else:
                        clean = flag
            elif raw is not None:
                try:
                    text = raw.decode()
                except UnicodeDecodeError:
                    continue  # binary headers have no MQTT user-property form
                # Nor have text Mosquitto refuses (a tab, a newline ...) or that is over 64 KiB: it would
                # disconnect the worker's publisher on every retry of the message.
                if mqtt_string_problem(name) is None and mqtt_string_problem(text) is None:
                    user_properties.append((name, text))
        if topic is None:
            return Reject(f"no {self.topic_header!r} header and no default topic")
        why = invalid_mqtt_topic(topic)
        if why is not None:
            return Reject(why)
        if clean:
            props = Properties(message_expiry=CLEAN_SESSION_EXPIRY_SECONDS, user_properties=user_properties)
            return MqttPublish(topic, value or b"", qos, retain, user_properties, props)
        return MqttPublish(topic, value or b"", qos, retain, user_properties)


def _flag(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


# --- dead letters -----------------------------------------------------------------------------

H_DLQ_REASON: Final = "dlq.reason"
H_DLQ_SOURCE: Final = "dlq.source"
H_DLQ_ORIGINAL_TOPIC: Final = "dlq.originalTopic"
H_DLQ_PARTITION: Final = "dlq.partition"
H_DLQ_OFFSET: Final = "dlq.offset"
H_DLQ_TRUNCATED_FROM: Final = "dlq.truncatedFrom"
H_DLQ_HEADERS_DROPPED: Final = "dlq.headersDropped"
# Room left for the key, the headers and the record's framing when a value must be cut to fit the
# dead-letter record (more when the key and headers take more).
DLQ_HEADROOM: Final = 65536


def _fit(value: bytes, limit: int, headers: list[Header], own: int, key: bytes | None = None) -> bytes:
    """`value`, cut to fit the dead-letter record (`dlq.truncatedFrom` then gives its size).

    The message's own headers (those after the first `own`: MQTT user properties, Kafka headers) are
    left out when they take more than half the limit (`dlq.headersDropped` says how many): a dead letter
    too large for Kafka would be dropped, and 64 KiB user properties add up fast.
    """
    size = _headers_size(headers)
    if size > limit // 2:
        headers.append((H_DLQ_HEADERS_DROPPED, b"%d" % (len(headers) - own)))
        del headers[own:-1]
        size = _headers_size(headers)
    room = max(limit - max(DLQ_HEADROOM, size + len(key or b"") + 128), 0)
    if len(value) <= room:
        return value
    headers.append((H_DLQ_TRUNCATED_FROM, b"%d" % len(value)))
    return value[:room]


def _headers_size(headers: list[Header]) -> int:
    """About the bytes `headers` take in a record (their lengths are varints of up to 5 bytes each)."""
    return sum(len(name.encode()) + len(raw) + 10 for name, raw in headers)


def uplink_dead_letter(msg: Message, reason: str, topic: str, limit: int) -> KafkaRecord:
    """The dead-letter record of an MQTT message: its payload (cut to fit) and MQTT fields."""
    headers: list[Header] = [
        (H_DLQ_REASON, reason.encode()),
        (H_DLQ_SOURCE, b"mqtt"),
        (H_DLQ_ORIGINAL_TOPIC, msg.topic.encode()),
        (H_TOPIC, msg.topic.encode()),
        (H_QOS, _QOS[msg.qos]),
        (H_RETAIN, _BOOL[msg.retain]),
        (H_DUP, _BOOL[msg.dup]),
        (H_PACKET_ID, b"%d" % msg.packet_id),
    ]
    own = len(headers)
    if msg.props is not None:
        if msg.props.content_type is not None:
            headers.append((H_CONTENT_TYPE, msg.props.content_type.encode()))
        if msg.props.correlation_data is not None:
            headers.append((H_CORRELATION_DATA, msg.props.correlation_data))
    headers.extend([(name, value.encode()) for name, value in all_user_properties(msg)])
    value = _fit(msg.payload, limit, headers, own)
    return KafkaRecord(topic, None, value, headers, int((msg.received or time.time()) * 1000))


def downlink_dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int,
    reason: str,
    topic: str,
    limit: int,
) -> KafkaRecord:
    """The dead-letter record of a Kafka record: key, value (cut to fit), headers, where it came from."""
    out: list[Header] = [
        (H_DLQ_REASON, reason.encode()),
        (H_DLQ_SOURCE, b"kafka"),
        (H_DLQ_ORIGINAL_TOPIC, source_topic.encode()),
        (H_DLQ_PARTITION, b"%d" % partition),
        (H_DLQ_OFFSET, b"%d" % offset),
    ]
    own = len(out)
    out.extend((name, raw if raw is not None else b"") for name, raw in headers)
    return KafkaRecord(topic, key, _fit(value or b"", limit, out, own, key), out, timestamp_ms)
