"""The mappings between MQTT messages and RocketMQ messages, both ways: pure functions, no I/O.

MQTT -> RocketMQ (`ToRocketMQ`, a ReplicationTask's `mqttToRocketmq`): the configured topic and tag,
one key (the publisher's client id, the MQTT topic, a field of the JSON payload, or none: the
KafkaConnector's key rules), the payload as the body, and the MQTT metadata as message properties
(`mqtt.topic`, `mqtt.qos`, `mqtt.retain`, `mqtt.messageId`, `mqtt.clientId`, the MQTT 5 content
type, correlation data, response topic, payload format and expiry, and the user properties under
their own names). With `ordered`, the key is the FIFO message group.

RocketMQ refuses or loses some of what MQTT allows; each case is mapped explicitly (measured on
RocketMQ 5.5.0, docs/bridge.md):
- an empty payload (RocketMQ refuses an empty body): the body is one NUL byte and the property
  `mqtt.emptyPayload` is `true`;
- a user property with an empty value (the broker silently drops empty values): its name is listed
  in `mqtt.emptyUserProperties`, a JSON array;
- a user property named like one of RocketMQ's system properties (refused): `mqtt.user.<name>`;
- control characters in property names and values or in keys (refused): written as `\\uXXXX`;
- a message group longer than 63 bytes (refused): `sha1-<hex digest of the key>`;
- a payload over 4 MiB (RocketMQ's body limit): rejected (counted as failed, dead-lettered).

RocketMQ -> MQTT (`FromRocketMQ`, `rocketmqToMqtt`): the MQTT topic from the `mqttTopic` template
over the message ({key}: its first key, {tag}, {messageId}, {property.NAME}); each placeholder fills
exactly one topic level, so a value that is empty or holds '/', '+', '#' or NUL is refused (the
message fails and goes to the consumer group's dead-letter queue, `rocketmq_dead_letter.py`).
QoS and retain come from the spec, the body is the payload and the user properties become MQTT 5
user properties.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from itertools import count
from typing import Final, NamedTuple

import msgspec

from mqtt_operator.bridge.config import MqttToRocketMQ, RocketMQToMqtt
from mqtt_operator.bridge.message_fields import (
    PUBLISHER_ADDRESS,
    PUBLISHER_CLIENT_ID,
    invalid_mqtt_topic,
    json_field,
    mqtt_string_problem,
    parse_json_path,
    publisher_client_id,
)
from mqtt_operator.bridge.records import Message, MqttPublish, Reject

# Property names of the MQTT metadata.
P_TOPIC: Final = "mqtt.topic"
P_QOS: Final = "mqtt.qos"
P_RETAIN: Final = "mqtt.retain"
P_MESSAGE_ID: Final = "mqtt.messageId"
P_RECEIVED_AT: Final = "mqtt.receivedAt"
P_CLIENT_ID: Final = "mqtt.clientId"
P_CONTENT_TYPE: Final = "mqtt.contentType"
P_CORRELATION_DATA: Final = "mqtt.correlationData"  # base64: properties are text
P_RESPONSE_TOPIC: Final = "mqtt.responseTopic"
P_PAYLOAD_FORMAT: Final = "mqtt.payloadFormat"
P_MESSAGE_EXPIRY: Final = "mqtt.messageExpiry"
P_EMPTY_PAYLOAD: Final = "mqtt.emptyPayload"
P_EMPTY_USER_PROPERTIES: Final = "mqtt.emptyUserProperties"
RESERVED_PREFIX: Final = "mqtt.user."
# The body standing for an empty MQTT payload (with P_EMPTY_PAYLOAD "true").
EMPTY_PAYLOAD_BODY: Final = b"\x00"
# RocketMQ's body limit (the proxy's and the client's default): bigger payloads cannot be sent.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
# A message group must be shorter than 64 bytes.
MAX_GROUP_BYTES: Final = 63

# RocketMQ's system property names (org.apache.rocketmq.common.message.MessageConst): a message
# carrying one as a user property is refused ("property is used by system").
SYSTEM_PROPERTIES: Final = frozenset(
    {
        "TRACE_ON", "MSG_REGION", "KEYS", "TAGS", "WAIT", "DELAY", "RETRY_TOPIC", "REAL_TOPIC",
        "REAL_QID", "TRAN_MSG", "PGROUP", "MIN_OFFSET", "MAX_OFFSET", "BUYER_ID", "ORIGIN_MESSAGE_ID",
        "TRANSFER_FLAG", "CORRECTION_FLAG", "MQ2_FLAG", "RECONSUME_TIME", "UNIQ_KEY",
        "MAX_RECONSUME_TIMES", "CONSUME_START_TIME", "POP_CK", "POP_CK_OFFSET", "1ST_POP_TIME",
        "TRAN_PREPARED_QUEUE_OFFSET", "DUP_INFO", "EXTEND_UNIQ_INFO", "INSTANCE_ID", "CORRELATION_ID",
        "REPLY_TO_CLIENT", "TTL", "ARRIVE_TIME", "PUSH_REPLY_TIME", "CLUSTER", "MSG_TYPE",
        "INNER_MULTI_QUEUE_OFFSET", "TIMER_DELAY_SEC", "TIMER_DELIVER_MS", "TIMER_ENQUEUE_MS",
        "TIMER_DEQUEUE_MS", "TIMER_ROLL_TIMES", "TIMER_OUT_MS", "TIMER_DEL_UNIQKEY", "TIMER_DELAY_LEVEL",
        "__BORNHOST", "BORN_TIMESTAMP", "__SHARDINGKEY", "INNER_NUM", "INNER_BASE", "TRACE_CONTEXT",
        "__transactionId__", "TRANSACTION_CHECK_TIMES", "CHECK_IMMUNITY_TIME_IN_SECONDS",
    }
)  # fmt: skip
# Properties named so are never stored by the broker.
_TRANSIENT_PREFIX: Final = "__RMQ.TRANSIENT."
# What RocketMQ counts as a control character (Java's Character.isISOControl).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_QOS = ("0", "1", "2")
_BOOL = ("false", "true")

_encode_json = msgspec.json.Encoder().encode


def _escape_one(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_control(text: str) -> str:
    """`text` with its control characters written as `\\uXXXX` (RocketMQ refuses them)."""
    return _CONTROL.sub(_escape_one, text) if _CONTROL.search(text) else text


def message_group(key: str) -> str:
    """The FIFO message group of `key`: the key itself when RocketMQ accepts it, else its SHA-1."""
    if len(key.encode()) <= MAX_GROUP_BYTES and _CONTROL.search(key) is None:
        return key
    return "sha1-" + hashlib.sha1(key.encode()).hexdigest()  # noqa: S324 - a name, not a secret


def valid_tag(tag: str) -> str | None:
    """Why RocketMQ would refuse `tag`, or None."""
    if not tag.strip():
        return "a tag cannot be empty or only white space"
    if "|" in tag:
        return "a tag cannot contain '|'"
    if _CONTROL.search(tag):
        return "a tag cannot contain control characters"
    return None


class RocketMQRecord(NamedTuple):
    """One message for the RocketMQ sink (the topic is the sink's)."""

    body: bytes
    tag: str | None
    keys: tuple[str, ...]
    properties: dict[str, str]
    # The FIFO message group (ordered routes), else None.
    message_group: str | None


class RocketMQMessage:
    """One message received from RocketMQ (the body decompressed), with what acknowledging it takes."""

    __slots__ = (
        "attempt",
        "body",
        "born",
        "deadline",
        "keys",
        "message_group",
        "message_id",
        "properties",
        "receipt_handle",
        "stored",
        "tag",
    )

    def __init__(
        self,
        body: bytes,
        *,
        message_id: str,
        receipt_handle: str = "",
        tag: str | None = None,
        keys: tuple[str, ...] = (),
        properties: dict[str, str] | None = None,
        born: float = 0.0,
        stored: float = 0.0,
        message_group: str | None = None,
        attempt: int = 1,
        deadline: float = 0.0,
    ) -> None:
        self.body = body
        self.message_id = message_id
        self.receipt_handle = receipt_handle
        self.tag = tag
        self.keys = keys
        self.properties = properties if properties is not None else {}
        self.born = born  # epoch seconds: the message's born timestamp
        self.stored = stored  # epoch seconds: when the broker stored it
        self.message_group = message_group
        self.attempt = attempt  # 1 on the first delivery
        self.deadline = deadline  # monotonic time the message becomes visible to the group again

    def __repr__(self) -> str:
        return f"RocketMQMessage({self.message_id}, attempt={self.attempt}, {len(self.body)} B)"


# --- MQTT -> RocketMQ -------------------------------------------------------------------------


class ToRocketMQ:
    """MQTT message -> RocketMQ record, as configured by an `MqttToRocketMQ` spec."""

    def __init__(self, spec: MqttToRocketMQ, message_id_prefix: str | None = None) -> None:
        self.spec = spec
        if spec.tag is not None and (why := valid_tag(spec.tag)):
            raise ValueError(f"tag {spec.tag!r}: {why}")
        self.tag = spec.tag
        self.key_source = spec.key.source
        if self.key_source == "payloadField":
            if not spec.key.path:
                raise ValueError("key.source payloadField needs key.path, e.g. $.pileId")
            self.key_path = parse_json_path(spec.key.path)
        self.ordered = spec.ordered
        self.client_id_level = spec.client_id_topic_level
        self.client_id_property = spec.client_id_property
        # A message id unique across replicas and restarts: a random per-process prefix + a counter.
        self._prefix = message_id_prefix if message_id_prefix is not None else os.urandom(6).hex()
        self._counter = count(1)

    def key(self, msg: Message, client_id: str | None) -> str | None:
        source = self.key_source
        if source == "clientId":
            return client_id
        if source == "topic":
            return msg.topic
        if source == "none":
            return None
        raw = json_field(msg.payload, self.key_path)
        return raw.decode(errors="replace") if raw is not None else None

    def __call__(self, msg: Message) -> RocketMQRecord | Reject:
        if msg.malformed is not None:
            return Reject(msg.malformed)
        payload = msg.payload
        if len(payload) > MAX_BODY_BYTES:
            return Reject(
                f"payload of {len(payload)} bytes is over RocketMQ's body limit of {MAX_BODY_BYTES}"
            )
        topic = msg.topic
        mqtt_props = msg.props
        stamped = msg.stamps
        client_id = publisher_client_id(msg, self.client_id_level, self.client_id_property)
        key = self.key(msg, client_id)
        properties: dict[str, str] = {}
        if mqtt_props is not None:
            empty: list[str] = []
            # The broker's stamps are not among them: they become the worker's own properties below.
            for name, value in mqtt_props.user_properties:
                if not value:
                    empty.append(name)
                    continue
                if not name or name in SYSTEM_PROPERTIES or name.startswith(_TRANSIENT_PREFIX):
                    name = RESERVED_PREFIX + name
                properties[escape_control(name)] = escape_control(value)
            if empty:
                properties[P_EMPTY_USER_PROPERTIES] = escape_control(_encode_json(empty).decode())
            # The worker's own properties come last: a device cannot claim another mqtt.clientId.
            if mqtt_props.content_type:
                properties[P_CONTENT_TYPE] = escape_control(mqtt_props.content_type)
            if mqtt_props.correlation_data:
                properties[P_CORRELATION_DATA] = base64.b64encode(mqtt_props.correlation_data).decode()
            if mqtt_props.response_topic:
                properties[P_RESPONSE_TOPIC] = escape_control(mqtt_props.response_topic)
            if mqtt_props.payload_format is not None:
                properties[P_PAYLOAD_FORMAT] = str(mqtt_props.payload_format)
            if mqtt_props.message_expiry is not None:
                properties[P_MESSAGE_EXPIRY] = str(mqtt_props.message_expiry)
        properties[P_TOPIC] = escape_control(topic)
        properties[P_QOS] = _QOS[msg.qos]
        properties[P_RETAIN] = _BOOL[msg.retain]
        # The broker's id stays the same when a message is delivered again; without it, this delivery's.
        properties[P_MESSAGE_ID] = escape_control(
            stamped.message_id or f"{self._prefix}-{next(self._counter):x}"
        )
        if client_id:
            properties[P_CLIENT_ID] = escape_control(client_id)
        if stamped.client_id is not None:
            properties[PUBLISHER_CLIENT_ID] = escape_control(stamped.client_id)
        if stamped.client_address is not None:
            properties[PUBLISHER_ADDRESS] = escape_control(stamped.client_address)
        received_ms = stamped.time_ms
        if received_ms is not None:
            properties[P_RECEIVED_AT] = str(received_ms)
        if not payload:
            payload = EMPTY_PAYLOAD_BODY
            properties[P_EMPTY_PAYLOAD] = "true"
        keys: tuple[str, ...] = (escape_control(key),) if key else ()
        group = None
        if self.ordered:
            # Without a key the MQTT topic orders the messages (e.g. a client id that was not found).
            group = message_group(key or topic)
        return RocketMQRecord(payload, self.tag, keys, properties, group)


# --- RocketMQ -> MQTT -------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELDS = ("key", "tag", "messageId")


class TopicTemplate:
    """`piles/{key}/cmd` over a RocketMQ message: {key}, {tag}, {messageId}, {property.NAME}."""

    def __init__(self, template: str) -> None:
        self.template = template
        # Literal text and placeholders, alternating: [text, field, text, field, ..., text].
        self.parts: list[str] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(template):
            field = match.group(1)
            if field not in _FIELDS and not (field.startswith("property.") and len(field) > len("property.")):
                raise ValueError(
                    f"topic template {template!r}: {{{field}}} is not one of {{key}}, {{tag}}, "
                    "{messageId} or {property.NAME}"
                )
            self.parts.extend((template[pos : match.start()], field))
            pos = match.end()
        self.parts.append(template[pos:])
        literal = "".join(self.parts[::2])
        if "{" in literal or "}" in literal:
            raise ValueError(f"topic template {template!r}: braces may only hold placeholders")
        why = invalid_mqtt_topic("".join(p if i % 2 == 0 else "x" for i, p in enumerate(self.parts)))
        if why is not None:
            raise ValueError(f"topic template {template!r}: {why}")

    def render(self, msg: RocketMQMessage) -> str | Reject:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            field = parts[i]
            value: str | None
            if field == "key":
                value = msg.keys[0] if msg.keys else None
            elif field == "tag":
                value = msg.tag
            elif field == "messageId":
                value = msg.message_id
            else:
                value = msg.properties.get(field[len("property.") :])
            if not value:
                return Reject(f"the message has no {field} for {{{field}}} in the topic template")
            if "/" in value or "+" in value or "#" in value or "\x00" in value:
                return Reject(
                    f"{{{field}}} is {value!r}: a placeholder fills one topic level, without '/', '+', '#'"
                )
            out.append(value)
            out.append(parts[i + 1])
        topic = "".join(out)
        why = invalid_mqtt_topic(topic)
        return Reject(why) if why is not None else topic


class FromRocketMQ:
    """RocketMQ message -> MQTT publish, as configured by a `RocketMQToMqtt` spec."""

    def __init__(self, spec: RocketMQToMqtt) -> None:
        self.spec = spec
        self.template = TopicTemplate(spec.mqtt_topic)
        self.qos = spec.qos
        self.retain = spec.retain

    def __call__(self, msg: RocketMQMessage) -> MqttPublish | Reject:
        if not msg.body:
            return Reject("the message body could not be read (a gzip body that does not inflate)")
        topic = self.template.render(msg)
        if type(topic) is Reject:
            return topic
        assert isinstance(topic, str)
        # Properties Mosquitto would refuse as user properties (RocketMQ takes non-characters such as
        # U+FFFF, or over 64 KiB) are left out: the publish would fail its connection on every retry.
        properties = [
            (name, value)
            for name, value in msg.properties.items()
            if mqtt_string_problem(name) is None and mqtt_string_problem(value) is None
        ]
        return MqttPublish(topic, msg.body, self.qos, self.retain, properties)
