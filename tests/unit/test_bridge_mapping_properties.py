"""Bad input from MQTT at the bridge: every mapping of an MQTT message answers a record, a Skip or a Reject.

Property tests (hypothesis) of the mappings whose input is an MQTT message, as our decoder builds it
(`bridge_inputs.messages`: topics and user properties of any text, payloads of random bytes, valid,
malformed and deeply nested JSON, payloads past the size limits, forged broker stamps):

- `kafka_mapping.Uplink` for every spec shape (fixed topic or parent topics; key none, topic,
  clientId or payloadField with several paths; raw or envelope; system and user-property headers
  on or off): it never raises; a record is one the Kafka producer can encode (aiokafka's own
  encoder takes it), its envelope is strict JSON that gives the payload back byte for byte, its key
  is the JSON field when the payload has it, its headers carry every user property;
- `rocketmq_mapping.ToRocketMQ`: a record RocketMQ takes (no control characters in properties or
  keys, a body of 1 byte to 4 MiB, a message group under 64 bytes) or a Reject over the body limit;
- `function_events.ToEvent` and `Encoder` (every format): header values a HTTP client can send,
  bodies that give the payload back; `ReplyTemplate.fill`: a topic Mosquitto takes or a reason;
- `device_events.DeviceEventMapping` on the log and plugin topics: a record or a Skip;
- the dead letters (`uplink_dead_letter`, `mqtt_dead_letter.dead_letter_publish`): a record that
  fits the record limit, a publish Mosquitto takes;
- a PUBLISH the decoder cannot read (a topic or properties that are not UTF-8, an unknown property)
  inside a stream of good ones: handed over as a message each mapping rejects with the reason, the
  connection stays up, the messages behind it come through.

The inputs that failed before the fixes are pinned with @example.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any
from urllib.parse import unquote

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st
from tests.unit.bridge_inputs import (
    KEY_PATHS,
    RECEIVED,
    STAMPS,
    any_text,
    check_kafka_record,
    check_publishable,
    check_reason,
    envelope_payload,
    incoming,
    json_values,
    kafka_record_size,
    key_specs,
    messages,
    mosquitto_refuses,
    payloads,
    property_settings,
    raw_publish,
    texts,
    u16,
)

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.config import DeviceEvents, MqttToFunction, MqttToKafka, MqttToRocketMQ
from mqtt_operator.bridge.device_events import LOG_TOPIC, DeviceEventMapping
from mqtt_operator.bridge.function_events import Encoder, FunctionEvent, ReplyTemplate, ToEvent
from mqtt_operator.bridge.kafka_mapping import Uplink, uplink_dead_letter
from mqtt_operator.bridge.message_fields import stamp_properties
from mqtt_operator.bridge.mqtt_client import MqttConnection
from mqtt_operator.bridge.mqtt_dead_letter import dead_letter_publish
from mqtt_operator.bridge.records import KafkaRecord, Message, Properties, Reject, Skip
from mqtt_operator.bridge.rocketmq_mapping import MAX_BODY_BYTES, RocketMQRecord, ToRocketMQ

SETTINGS = property_settings(150)
PARENTS = ("cars", "trucks")

# --- MQTT -> Kafka ------------------------------------------------------------------------------------


@st.composite
def uplink_specs(draw: st.DrawFn) -> MqttToKafka:
    routing: dict[str, Any] = (
        {"parentTopics": list(PARENTS)} if draw(st.booleans()) else {"kafkaTopic": "vehicle.state_v1"}
    )
    return MqttToKafka.model_validate(
        {
            "topicFilters": ["#"],
            "shareGroup": "g",
            **routing,
            "key": draw(key_specs()),
            "value": draw(st.sampled_from(["raw", "envelope"])),
            "systemHeaders": draw(st.booleans()),
            "userPropertyHeaders": draw(st.booleans()),
            "clientIdTopicLevel": draw(st.none() | st.integers(0, 3)),
            "clientIdProperty": draw(st.sampled_from(["clientId", "cid"])),
        }
    )


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")  # the json module reads 1e400 as inf; RFC 8259 has none
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def field_at(payload: bytes, path: tuple[str | int, ...]) -> tuple[bool, Any]:
    """(True, the value at `path`) when `payload` is a strict JSON document (read by the json module, with
    no NaN, no numbers out of a double's range, no lone surrogate escapes) that has a non-null value
    there; (False, None) otherwise."""
    try:
        node = json.loads(payload, parse_float=_strict_float, parse_constant=_no_constant)
        json.dumps(node, ensure_ascii=False).encode()  # a lone "\\ud800" is no Unicode text
    except (ValueError, RecursionError):
        return False, None
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False, None
        elif not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return node is not None, node


DEEP = b"[" * 2000 + b"1" + b"]" * 2000
RECEIVED_AT_SUPERSCRIPT = Properties(user_properties=[("mqtt-operator/receivedAt", "²")])
RECEIVED_AT_HUGE = Properties(user_properties=[("mqtt-operator/receivedAt", "9" * 40)])
MESSAGE_ID_NEGATIVE = Properties(
    user_properties=[("mqtt-operator/messageId", "-fffffff-ffff-7fff-8000-000000000000")]
)


@SETTINGS
@given(spec=uplink_specs(), msg=messages(PARENTS))
# A payload nested deeper than the JSON decoder's recursion limit: RecursionError from json_field.
@example(
    spec=MqttToKafka(
        topic_filters=("#",), share_group="g", kafka_topic="t", key={"source": "payloadField", "path": "$[1]"}
    ),
    msg=Message("cars/1", DEEP, 1, False, False, 1, None, RECEIVED),
)
# A forged receive-time stamp (no broker plugin): "²".isdigit() but int("²") raises; 40 digits overflow
# Kafka's timestamp; a message id whose "UUIDv7 time" int(..., 16) reads as negative.
@example(
    spec=MqttToKafka(topic_filters=("#",), share_group="g", kafka_topic="t"),
    msg=incoming("cars/1", b"x", RECEIVED_AT_SUPERSCRIPT),
)
@example(
    spec=MqttToKafka(topic_filters=("#",), share_group="g", kafka_topic="t"),
    msg=incoming("cars/1", b"x", RECEIVED_AT_HUGE),
)
@example(
    spec=MqttToKafka(topic_filters=("#",), share_group="g", kafka_topic="t"),
    msg=incoming("cars/1", b"x", MESSAGE_ID_NEGATIVE),
)
def test_uplink_answers_a_well_formed_record_a_skip_or_a_reject(spec: MqttToKafka, msg: Message) -> None:
    result = Uplink(spec, message_id_prefix="p")(msg)
    if isinstance(result, Skip | Reject):
        check_reason(result)
        # Only a topic outside the registered parents is skipped; nothing of a readable message is rejected.
        assert type(result) is Skip and spec.parent_topics, result
        assert msg.topic.split("/", 1)[0] not in PARENTS
        return
    rec = check_kafka_record(result)
    if spec.parent_topics:
        assert rec.topic == msg.topic.split("/", 1)[0] in PARENTS
    else:
        assert rec.topic == spec.kafka_topic

    if spec.value == "envelope":
        body, carried = envelope_payload(rec.value)
        assert carried == msg.payload
        assert body["topic"] == msg.topic and body["ts"] == rec.timestamp_ms
        assert body["clientId"] is None or isinstance(body["clientId"], str)
    else:
        assert rec.value == msg.payload

    source = spec.key.source
    if source == "none":
        assert rec.key is None
    elif source == "topic":
        assert rec.key == msg.topic.encode()
    elif source == "payloadField":
        assert spec.key.path is not None
        found, value = field_at(msg.payload, KEY_PATHS[spec.key.path])
        if found and isinstance(value, str):
            assert rec.key == value.encode()
        elif found:
            assert rec.key is not None and json.loads(rec.key) == value
        elif rec.key is not None:
            # Only what the json module cannot read (deeper than its limit) may still give a key.
            assert msg.payload.count(b"[") + msg.payload.count(b"{") > 900

    headers: dict[str, bytes] = {}
    for name, raw in rec.headers:
        headers.setdefault(name, raw)  # the system headers come first; a user property may reuse a name
    if spec.system_headers:
        assert headers["mqtt.topic"] == msg.topic.encode() and headers["mqtt.qos"] == b"%d" % msg.qos
    if spec.user_property_headers:
        # Every user property is a header, in order. The broker's stamps travel once: as system
        # headers, or without them as the user properties they came as.
        own = msg.props.user_properties if msg.props is not None else []
        wanted = [(name, value.encode()) for name, value in own]
        if not spec.system_headers:
            wanted += [(name, value.encode()) for name, value in stamp_properties(msg.stamps)]
        rest = iter(rec.headers)
        assert all(item in rest for item in wanted)
    if spec.system_headers:
        assert not any(name in STAMPS for name, _ in rec.headers)


@SETTINGS
@given(msg=messages(PARENTS), reason=any_text, limit=st.sampled_from([1024 * 1024, 2 * 1024 * 1024]))
def test_an_uplink_dead_letter_is_a_record_that_fits_the_limit(msg: Message, reason: str, limit: int) -> None:
    rec = check_kafka_record(uplink_dead_letter(msg, reason or "why", "dead.letters", limit))
    assert kafka_record_size(rec) <= limit
    headers = dict(rec.headers)
    assert headers["dlq.reason"] == (reason or "why").encode()
    assert headers["dlq.originalTopic"] == msg.topic.encode()
    if "dlq.truncatedFrom" in headers:
        assert int(headers["dlq.truncatedFrom"]) == len(msg.payload) and msg.payload.startswith(rec.value)
    else:
        assert rec.value == msg.payload


# --- MQTT -> RocketMQ ---------------------------------------------------------------------------------

_ISO_CONTROL = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}


@st.composite
def rocketmq_specs(draw: st.DrawFn) -> MqttToRocketMQ:
    return MqttToRocketMQ.model_validate(
        {
            "topicFilters": ["#"],
            "shareGroup": "g",
            "topic": "pile-faults",
            "tag": draw(st.none() | st.just("will")),
            "key": draw(key_specs()),
            "ordered": draw(st.booleans()),
            "clientIdTopicLevel": draw(st.none() | st.integers(0, 3)),
        }
    )


@SETTINGS
@given(spec=rocketmq_specs(), msg=messages())
@example(
    spec=MqttToRocketMQ(
        topic_filters=("#",), share_group="g", topic="t", key={"source": "payloadField", "path": "$[1]"}
    ),
    msg=Message("piles/1", DEEP, 1, False, False, 1, None, RECEIVED),
)
def test_to_rocketmq_answers_a_record_rocketmq_takes_or_a_reject(spec: MqttToRocketMQ, msg: Message) -> None:
    result = ToRocketMQ(spec, message_id_prefix="p")(msg)
    if isinstance(result, Reject):
        check_reason(result)
        assert len(msg.payload) > MAX_BODY_BYTES, result
        return
    assert type(result) is RocketMQRecord
    body, tag, keys, props, group = result
    assert type(body) is bytes and 1 <= len(body) <= MAX_BODY_BYTES
    assert body == (msg.payload or b"\x00")
    assert tag == spec.tag
    for text in [*keys, *props, *props.values()]:
        assert type(text) is str and not (set(text) & _ISO_CONTROL), text[:80]
        text.encode()  # no surrogates
    assert len(keys) <= 1 and all(keys)
    if spec.ordered:
        assert group is not None and 0 < len(group.encode()) <= 63 and not (set(group) & _ISO_CONTROL)
    else:
        assert group is None
    assert props["mqtt.topic"] and props["mqtt.qos"] == str(msg.qos)


# --- MQTT -> function ----------------------------------------------------------------------------------

_HEADER_TEXT = set(map(chr, range(0x20, 0x7F)))


@st.composite
def function_specs(draw: st.DrawFn) -> MqttToFunction:
    return MqttToFunction.model_validate(
        {
            "topicFilters": ["#"],
            "shareGroup": "g",
            "function": {"url": "http://fn/", "format": draw(st.sampled_from(["cloudevents", "json"]))},
            "eventSource": "/mqtt-operator/ns/i",
            "base64Payload": draw(st.booleans()),
            "batchMaxMessages": draw(st.sampled_from([1, 10])),
            "clientIdTopicLevel": draw(st.none() | st.integers(0, 2)),
        }
    )


def _json_equal(payload: bytes, data: Any) -> None:
    assert msgspec.json.decode(payload) == data


@SETTINGS
@given(spec=function_specs(), msgs=st.lists(messages(), min_size=1, max_size=3))
@example(
    spec=MqttToFunction.model_validate(
        {"topicFilters": ["#"], "shareGroup": "g", "function": {"url": "http://fn/"}, "eventSource": "/s"}
    ),
    msgs=[Message("a/b", DEEP, 1, False, False, 1, None, RECEIVED)],
)
@example(
    spec=MqttToFunction.model_validate(
        {"topicFilters": ["#"], "shareGroup": "g", "function": {"url": "http://fn/"}, "eventSource": "/s"}
    ),
    msgs=[incoming("a/b", b"x", Properties(user_properties=[("mqtt-operator/messageId", "ü 1")]))],
)
def test_function_events_encode_to_valid_headers_and_bodies_that_carry_the_payload(
    spec: MqttToFunction, msgs: list[Message]
) -> None:
    to_event = ToEvent(spec, id_prefix="p")
    events = [to_event(m) for m in msgs]
    for event in events:
        if isinstance(event, Reject):
            check_reason(event)
            raise AssertionError(f"a readable message was rejected: {event}")
        assert isinstance(event, FunctionEvent)
    if spec.batch_max_messages == 1:
        events = events[:1]
        msgs = msgs[:1]
    headers, body = Encoder(spec).encode(events)  # type: ignore[arg-type]
    assert type(body) is bytes
    for name, value in headers.items():
        assert set(name) <= _HEADER_TEXT and set(value) <= _HEADER_TEXT, (name, value[:80])
    cloudevents = spec.function.format == "cloudevents"
    if cloudevents and spec.batch_max_messages == 1:
        [msg] = msgs
        assert unquote(headers["ce-subject"]) == msg.topic
        assert unquote(headers["ce-id"]) == events[0].id  # type: ignore[union-attr]
        assert body == (base64.b64encode(msg.payload) if spec.base64_payload else msg.payload)
        return
    decoded = json.loads(body)
    items = decoded if spec.batch_max_messages > 1 else [decoded]
    assert len(items) == len(msgs)
    for item, msg in zip(items, msgs, strict=True):
        if not cloudevents:
            assert item["topic"] == msg.topic
            text = item["payload"]
            assert (
                base64.b64decode(text) if item["payloadEncoding"] == "base64" else text.encode()
            ) == msg.payload
        elif "data_base64" in item:
            assert base64.b64decode(item["data_base64"]) == msg.payload
        elif isinstance(item["data"], str) and not item["datacontenttype"].endswith("json"):
            assert item["data"].encode() == msg.payload
        else:
            _json_equal(msg.payload, item["data"])


@SETTINGS
@given(
    template=st.sampled_from(["{topic}/reply", "replies/{clientId}", "r/{level.1}/{level.0}", "fixed"]),
    topic=texts,
    client_id=st.none() | any_text,
)
def test_a_reply_topic_is_one_mosquitto_takes_or_a_reason(
    template: str, topic: str, client_id: str | None
) -> None:
    filled, why = ReplyTemplate(template).fill(topic, client_id)
    if filled is None:
        assert why.strip()
        return
    assert (
        not mosquitto_refuses(filled)
        and "+" not in filled
        and "#" not in filled
        and not filled.startswith("$")
    )


@SETTINGS
@given(msg=messages(), reason=any_text)
def test_an_mqtt_dead_letter_is_a_publish_mosquitto_takes(msg: Message, reason: str) -> None:
    check_publishable(dead_letter_publish(msg, reason, "dead/letters"))


# --- device events ---------------------------------------------------------------------------------------

PLUGIN_TOPIC = "$SYS/mqtt-operator/client-events"


@st.composite
def device_event_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(payloads)
    if kind == 1:
        stamp = draw(st.sampled_from(["1714567890", "9" * 30, "2024-05-01T12:00:00", "2024-13-45T99:99:99"]))
        cid = draw(texts.filter(lambda t: t.strip()))
        line = draw(
            st.sampled_from(
                [
                    f"{stamp}: New client connected from 10.0.0.7:36448 as {cid} (p5, c1, k60, u'{cid}').",
                    f"{stamp}: Client {cid} disconnected.",
                    f"{stamp}: Client {cid} closed its connection.",
                ]
            )
        )
        return line.encode("utf-8", "surrogatepass")
    event: dict[str, Any] = {
        "event": draw(st.sampled_from(["connect", "disconnect", "other"])),
        "clientId": draw(any_text | json_values),
        "timestampMs": draw(st.integers() | json_values),
    }
    event.update(
        draw(
            st.dictionaries(
                st.sampled_from(["address", "username", "protocolVersion", "cleanStart", "keepalive"]),
                json_values,
            )
        )
    )
    if kind == 2:
        return json.dumps(event).encode()
    return b'{"event":"connect","clientId":"\\ud800","timestampMs":1}'


@SETTINGS
@given(
    plugin=st.booleans(),
    topic=st.sampled_from([LOG_TOPIC, PLUGIN_TOPIC, "other/topic"]),
    payload=device_event_payloads(),
)
@example(plugin=True, topic=PLUGIN_TOPIC, payload=b"[" * 5000)
@example(
    plugin=True,
    topic=PLUGIN_TOPIC,
    payload=b'{"event":"connect","clientId":"c","timestampMs":' + b"9" * 30 + b"}",
)
@example(plugin=True, topic=PLUGIN_TOPIC, payload=b'{"event":"connect","clientId":"\\ud800","timestampMs":1}')
@example(plugin=True, topic=PLUGIN_TOPIC, payload=b'{"event":"connect","clientId":"c","timestampMs":false}')
@example(plugin=False, topic=LOG_TOPIC, payload=b"999999999999999999999999: Client c disconnected.")
@example(plugin=False, topic=LOG_TOPIC, payload=b"9" * 5000 + b": Client c disconnected.")
def test_device_events_answer_a_record_or_a_skip(plugin: bool, topic: str, payload: bytes) -> None:
    mapping = DeviceEventMapping(
        DeviceEvents(
            connect_topic="dev.connect",
            disconnect_topic="dev.disconnect",
            plugin_topic=PLUGIN_TOPIC if plugin else None,
        )
    )
    result = mapping(Message(topic, payload, 0, False, False, 0, None, RECEIVED))
    if isinstance(result, Skip):
        check_reason(result)
        return
    rec = check_kafka_record(result)
    body = json.loads(rec.value)
    assert rec.key == body["clientid"].encode() and body["event"] in ("connect", "disconnect")


# --- a PUBLISH the decoder cannot read, in a stream of good ones -----------------------------------------


bad_utf8 = st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"a\x80b", b"\xf4\x90\x80\x80"])


@st.composite
def unreadable_publishes(draw: st.DrawFn, packet_id: int) -> bytes:
    """A well-framed QoS 1 PUBLISH whose topic or properties are not MQTT 5: not UTF-8, an unknown
    property, a property running past the property block."""
    topic = b"cars/" + draw(st.binary(max_size=8))
    props = mqtt5.encode_properties(Properties(user_properties=[("k", "v")]))[1:]
    how = draw(
        st.sampled_from(
            ["topic", "empty topic", "property name", "property value", "content type", "unknown", "overrun"]
        )
    )
    if how == "topic":
        topic += draw(bad_utf8)
    elif how == "empty topic":
        topic = b""
    elif how == "property name":
        props += b"\x26" + u16(draw(bad_utf8)) + u16(b"v")
    elif how == "property value":
        props += b"\x26" + u16(b"k") + u16(draw(bad_utf8))
    elif how == "content type":
        props += b"\x03" + u16(draw(bad_utf8))
    elif how == "unknown":
        props += bytes((draw(st.sampled_from([0x00, 0x04, 0x7F, 0xFF])),)) + b"\x00\x00"
    else:
        props += b"\x26\x00\x09k"
    return raw_publish(topic, props, draw(st.binary(max_size=32)), packet_id)


def _readable(packet_id: int) -> bytes:
    return mqtt5.publish(f"cars/{packet_id}", b"%d" % packet_id, qos=1, packet_id=packet_id, props=None)


@SETTINGS
@given(data=st.data(), bad_at=st.lists(st.integers(1, 20), min_size=1, max_size=5, unique=True))
def test_an_unreadable_publish_is_rejected_by_every_mapping_and_the_stream_behind_it_flows(
    data: st.DataObject, bad_at: list[int]
) -> None:
    stream = b"".join(
        data.draw(unreadable_publishes(pid)) if pid in bad_at else _readable(pid) for pid in range(1, 21)
    )
    cuts = sorted(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8)))

    async def receive() -> tuple[list[Message], MqttConnection]:
        got: list[Message] = []
        conn = MqttConnection(lambda _c, batch: got.extend(batch))
        start = 0
        for cut in [*cuts, len(stream)]:
            conn.data_received(stream[start:cut])
            start = cut
        return got, conn

    got, conn = asyncio.run(receive())
    assert conn.disconnect_reason is None, conn.disconnect_reason
    assert [m.packet_id for m in got] == list(range(1, 21))
    uplink = Uplink(MqttToKafka(topic_filters=("#",), share_group="g", kafka_topic="t", value="envelope"))
    to_rocketmq = ToRocketMQ(MqttToRocketMQ(topic_filters=("#",), share_group="g", topic="t"))
    to_event = ToEvent(
        MqttToFunction.model_validate(
            {"topicFilters": ["#"], "shareGroup": "g", "function": {"url": "http://f/"}, "eventSource": "/s"}
        )
    )
    events = DeviceEventMapping(DeviceEvents(connect_topic="c", plugin_topic=PLUGIN_TOPIC))
    for msg in got:
        results = [uplink(msg), to_rocketmq(msg), to_event(msg), events(msg)]
        if msg.packet_id in bad_at:
            for result in results:
                assert type(result) is Reject, result
                assert "could not be read" in result.reason
            check_kafka_record(uplink_dead_letter(msg, results[0].reason, "dead.letters", 1024 * 1024))
            check_publishable(dead_letter_publish(msg, results[0].reason, "dead/letters"))
        else:
            assert msg.topic == f"cars/{msg.packet_id}" and msg.payload == b"%d" % msg.packet_id
            assert isinstance(results[0], KafkaRecord) and isinstance(results[1], RocketMQRecord)
