"""The MQTT <-> Kafka mappings: keys, headers, values, topics, downlink routing, dead-letter records."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from tests.unit.bridge_inputs import incoming

from mqtt_operator.bridge.config import KafkaToMqtt, MqttToKafka
from mqtt_operator.bridge.kafka_mapping import (
    DLQ_HEADROOM,
    Downlink,
    Uplink,
    downlink_dead_letter,
    uplink_dead_letter,
)
from mqtt_operator.bridge.message_fields import invalid_mqtt_topic, json_field, parse_json_path
from mqtt_operator.bridge.mqtt5 import uuid7_ms
from mqtt_operator.bridge.records import KafkaRecord, Message, MqttPublish, Properties, Reject, Skip


def spec(**fields: Any) -> MqttToKafka:
    return MqttToKafka.model_validate({"topicFilters": ["cars/#"], "shareGroup": "g", **fields})


def msg(
    topic: str = "cars/car-7/state",
    payload: bytes = b'{"plate": "B-XY 123"}',
    props: Properties | None = None,
) -> Message:
    return incoming(topic, payload, props, packet_id=42, at=1700000000.123)


def record(result: object) -> KafkaRecord:
    assert isinstance(result, KafkaRecord), result
    return result


def test_fixed_topic_raw_value_and_system_headers() -> None:
    rec = record(Uplink(spec(kafkaTopic="cars", key={"source": "topic"}), message_id_prefix="p")(msg()))
    assert (rec.topic, rec.key, rec.value, rec.timestamp_ms) == (
        "cars",
        b"cars/car-7/state",
        b'{"plate": "B-XY 123"}',
        1700000000123,
    )
    assert rec.headers == [
        ("mqtt.topic", b"cars/car-7/state"),
        ("mqtt.qos", b"1"),
        ("mqtt.retain", b"false"),
        ("mqtt.dup", b"false"),
        ("mqtt.packetId", b"42"),
        ("mqtt.messageId", b"p-1"),
    ]


def test_message_ids_are_unique_per_message_and_per_process() -> None:
    first, second = Uplink(spec(kafkaTopic="t")), Uplink(spec(kafkaTopic="t"))
    ids = [dict(record(m(msg())).headers)["mqtt.messageId"] for m in (first, first, second)]
    assert len(set(ids)) == 3


def test_user_properties_content_type_correlation_data() -> None:
    props = Properties(
        content_type="application/json",
        correlation_data=b"\x01\x02",
        response_topic="reply",
        user_properties=[("clientId", "car-7"), ("fw", "1.2"), ("fw", "1.3")],
    )
    rec = record(Uplink(spec(kafkaTopic="t"))(msg(props=props)))
    headers = rec.headers
    assert ("mqtt.clientId", b"car-7") in headers
    assert ("mqtt.contentType", b"application/json") in headers
    assert ("mqtt.correlationData", b"\x01\x02") in headers
    assert ("mqtt.responseTopic", b"reply") in headers
    assert [h for h in headers if h[0] == "fw"] == [("fw", b"1.2"), ("fw", b"1.3")]
    assert ("clientId", b"car-7") in headers


def test_headers_can_be_turned_off() -> None:
    props = Properties(user_properties=[("a", "b")], content_type="text/plain")
    rec = record(
        Uplink(spec(kafkaTopic="t", systemHeaders=False, userPropertyHeaders=False))(msg(props=props))
    )
    # Content type and correlation data belong to the message, not to the MQTT system fields.
    assert rec.headers == [("mqtt.contentType", b"text/plain")]


@pytest.mark.parametrize(
    ("key", "extra", "props", "expected"),
    [
        ({"source": "none"}, {}, None, None),
        ({"source": "topic"}, {}, None, b"cars/car-7/state"),
        ({"source": "clientId"}, {}, Properties(user_properties=[("clientId", "dev-1")]), b"dev-1"),
        (
            {"source": "clientId"},
            {"clientIdProperty": "deviceId"},
            Properties(user_properties=[("deviceId", "d")]),
            b"d",
        ),
        ({"source": "clientId"}, {}, None, None),
        (
            {"source": "clientId"},
            {"clientIdTopicLevel": 1},
            Properties(user_properties=[("clientId", "liar")]),
            b"car-7",
        ),
        ({"source": "payloadField", "path": "$.plate"}, {}, None, b"B-XY 123"),
    ],
)
def test_keys(
    key: dict[str, str], extra: dict[str, Any], props: Properties | None, expected: bytes | None
) -> None:
    assert record(Uplink(spec(kafkaTopic="t", key=key, **extra))(msg(props=props))).key == expected


@pytest.mark.parametrize(
    ("payload", "path", "expected"),
    [
        (b'{"a": {"b": "x"}}', "$.a.b", b"x"),
        (b'{"a": {"b": 17}}', "$.a.b", b"17"),
        (b'{"a": [{"id": true}]}', "$.a[0].id", b"true"),
        (b'{"odd key": {"x": 1}}', "$['odd key']", b'{"x":1}'),
        (b'{"a": null}', "$.a", None),
        (b'{"a": 1}', "$.missing", None),
        (b'{"a": [1]}', "$.a[3]", None),
        (b"not json", "$.a", None),
        (b"\xff\xfe", "$.a", None),
    ],
)
def test_json_field(payload: bytes, path: str, expected: bytes | None) -> None:
    assert json_field(payload, parse_json_path(path)) == expected


@pytest.mark.parametrize("path", ["plate", "$", "$.a..b", "$.a[x]"])
def test_bad_json_paths(path: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        parse_json_path(path)


def test_payload_field_key_needs_a_path() -> None:
    with pytest.raises(ValueError, match=r"key\.path"):
        Uplink(spec(kafkaTopic="t", key={"source": "payloadField"}))


def test_envelope_text_and_binary() -> None:
    up = Uplink(spec(kafkaTopic="t", value="envelope", key={"source": "clientId"}, clientIdTopicLevel=1))
    text = json.loads(record(up(msg(payload="grüß".encode()))).value)
    assert text == {
        "clientId": "car-7",
        "topic": "cars/car-7/state",
        "payload": "grüß",
        "ts": 1700000000123,
    }  # exactly the four keys of the cloud service's stored value
    binary = json.loads(record(up(msg(payload=b"\xff\x00\x01"))).value)
    assert binary["payloadEncoding"] == "base64"
    assert base64.b64decode(binary["payload"]) == b"\xff\x00\x01"
    unknown = json.loads(record(Uplink(spec(kafkaTopic="t", value="envelope"))(msg())).value)
    assert unknown["clientId"] is None


def test_parent_topic_routing_skips_unregistered_parents() -> None:
    up = Uplink(spec(parentTopics=["cars", "trucks"]))
    assert record(up(msg("trucks/t1/state"))).topic == "trucks"
    assert record(up(msg("cars"))).topic == "cars"
    assert isinstance(up(msg("bikes/b1/state")), Skip)


def test_topic_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="kafkaTopic or parentTopics"):
        Uplink(spec())
    with pytest.raises(ValueError, match="not a valid Kafka topic"):
        Uplink(spec(kafkaTopic="has space"))


def test_uplink_dead_letter_cuts_oversize_payloads() -> None:
    payload = b"x" * (DLQ_HEADROOM + 1000)
    props = Properties(user_properties=[("clientId", "c")])
    rec = uplink_dead_letter(msg(payload=payload, props=props), "record too large", "dlq", DLQ_HEADROOM + 10)
    headers = dict(rec.headers)
    assert (rec.topic, len(rec.value)) == ("dlq", 10)
    assert headers["dlq.reason"] == b"record too large"
    assert headers["dlq.originalTopic"] == b"cars/car-7/state"
    assert headers["dlq.truncatedFrom"] == str(len(payload)).encode()
    assert headers["clientId"] == b"c"


# --- downlink ---------------------------------------------------------------------------------


def down(**fields: Any) -> Downlink:
    return Downlink(KafkaToMqtt.model_validate({"kafkaTopic": "cmd", "consumerGroup": "g", **fields}))


def test_downlink_headers_choose_topic_qos_retain() -> None:
    result = down()(
        b"on", [("mqttTopic", b"cars/7/cmd"), ("qosLevel", b"0"), ("retain", b"true"), ("trace", b"t1")]
    )
    assert result == MqttPublish("cars/7/cmd", b"on", 0, True, [("trace", "t1")])


def test_downlink_defaults_and_custom_header_names() -> None:
    route = down(defaultTopic="fallback/cmd", defaultQos=0, defaultRetain=True, topicHeader="to")
    assert route(None, []) == MqttPublish("fallback/cmd", b"", 0, True, [])
    assert route(b"x", [("to", b"a/b")]).topic == "a/b"  # type: ignore[union-attr]
    # The default names are ordinary headers when other names are configured: user properties.
    assert route(b"x", [("mqttTopic", b"a/b")]).user_properties == [("mqttTopic", "a/b")]  # type: ignore[union-attr]


def test_downlink_qos2_is_published_at_qos2() -> None:
    assert down()(b"", [("mqttTopic", b"t"), ("qosLevel", b"2")]).qos == 2  # type: ignore[union-attr]


def test_downlink_header_names_are_matched_without_regard_to_case() -> None:
    # The cloud services' sample sends `qosLevel`; their table spells it `qoslevel`.
    result = down()(b"x", [("MQTTTOPIC", b"a/b"), ("qoslevel", b"2"), ("Retain", b"true")])
    assert result == MqttPublish("a/b", b"x", 2, True, [])


def test_clean_session_true_is_for_the_devices_connected_now() -> None:
    online = down()(b"x", [("mqttTopic", b"a/b"), ("cleanSession", b"true"), ("trace", b"t")])
    assert isinstance(online, MqttPublish) and online.props is not None
    assert online.props.message_expiry == 1
    assert online.props.user_properties == [("trace", "t")]
    queued = down()(b"x", [("mqttTopic", b"a/b"), ("cleanSession", b"false")])
    assert isinstance(queued, MqttPublish) and queued.props is None
    assert "not true or false" in down()(b"x", [("mqttTopic", b"a/b"), ("cleanSession", b"?")]).reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([], "no 'mqttTopic' header"),
        ([("mqttTopic", b"")], "empty"),
        ([("mqttTopic", b"cars/+/cmd")], "wildcard"),
        ([("mqttTopic", b"cars/#")], "wildcard"),
        ([("mqttTopic", b"$SYS/x")], "reserved"),
        ([("mqttTopic", b"\xff")], "not UTF-8"),
        ([("mqttTopic", b"t"), ("qosLevel", b"high")], "not 0, 1 or 2"),
        ([("mqttTopic", b"t"), ("retain", b"maybe")], "not true or false"),
    ],
)
def test_downlink_rejects(headers: list[tuple[str, bytes]], why: str) -> None:
    result = down()(b"x", headers)
    assert isinstance(result, Reject)
    assert why in result.reason


def test_invalid_default_topic_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="defaultTopic"):
        down(defaultTopic="a/#")


def test_invalid_mqtt_topic() -> None:
    assert invalid_mqtt_topic("a/b") is None
    assert invalid_mqtt_topic("a\x00b") is not None


def test_downlink_dead_letter_keeps_origin_and_headers() -> None:
    rec = downlink_dead_letter(
        source_topic="cmd",
        partition=2,
        offset=99,
        key=b"k",
        value=b"v",
        headers=[("mqttTopic", b"bad/#")],
        timestamp_ms=5,
        reason="wildcard",
        topic="dlq",
        limit=10 * DLQ_HEADROOM,
    )
    assert (rec.topic, rec.key, rec.value, rec.timestamp_ms) == ("dlq", b"k", b"v", 5)
    assert rec.headers == [
        ("dlq.reason", b"wildcard"),
        ("dlq.source", b"kafka"),
        ("dlq.originalTopic", b"cmd"),
        ("dlq.partition", b"2"),
        ("dlq.offset", b"99"),
        ("mqttTopic", b"bad/#"),
    ]


# --- the broker's stamps (docs/broker-plugin.md) ------------------------------------------------------

STAMPED = [
    ("clientId", "car-99"),  # what the device claims: not who it is
    ("mqtt-operator/clientId", "car-7"),
    ("mqtt-operator/clientAddress", "10.1.2.3"),
    ("mqtt-operator/messageId", "0193f2b4-7c1e-7abc-8def-0123456789ab"),
    ("mqtt-operator/receivedAt", "1700000000100"),
    ("trace", "t-1"),
]


def test_the_broker_stamps_become_headers_the_envelope_time_and_the_client_id() -> None:
    up = Uplink(spec(kafkaTopic="t", value="envelope", key={"source": "clientId"}, userPropertyHeaders=True))
    rec = record(up(msg(props=Properties(user_properties=STAMPED))))
    headers = dict(rec.headers)
    assert rec.key == b"car-7"  # the broker's, not the device's claim
    assert headers["mqtt.clientId"] == b"car-7"
    assert headers["mqtt.publisherClientId"] == b"car-7"
    assert headers["mqtt.publisherAddress"] == b"10.1.2.3"
    assert headers["mqtt.messageId"] == b"0193f2b4-7c1e-7abc-8def-0123456789ab"
    assert rec.timestamp_ms == 1700000000100
    assert json.loads(rec.value) == {
        "clientId": "car-7",
        "topic": "cars/car-7/state",
        "payload": '{"plate": "B-XY 123"}',
        "ts": 1700000000100,
    }
    # User properties travel as headers, the stamps not twice.
    assert [
        (n, v) for n, v in rec.headers if n in ("clientId", "trace") or n.startswith("mqtt-operator/")
    ] == [
        ("clientId", b"car-99"),
        ("trace", b"t-1"),
    ]


def test_a_redelivered_stamped_message_keeps_its_id() -> None:
    up = Uplink(spec(kafkaTopic="t"))
    first = dict(record(up(msg(props=Properties(user_properties=STAMPED)))).headers)
    again = dict(record(up(msg(props=Properties(user_properties=STAMPED)))).headers)
    assert first["mqtt.messageId"] == again["mqtt.messageId"]
    # Without the broker's stamp each delivery has its own id.
    plain = [dict(record(up(msg())).headers)["mqtt.messageId"] for _ in range(2)]
    assert plain[0] != plain[1]


def test_without_received_at_the_time_comes_from_the_uuid7_message_id() -> None:
    # 0x018bcfe56800 ms = 1700000000000 (2023-11-14T22:13:20Z)
    props = Properties(user_properties=[("mqtt-operator/messageId", "018bcfe5-6800-7abc-8def-0123456789ab")])
    rec = record(Uplink(spec(kafkaTopic="t", value="envelope"))(msg(props=props)))
    assert rec.timestamp_ms == 1700000000000
    assert json.loads(rec.value)["ts"] == 1700000000000
    not_v7 = Properties(user_properties=[("mqtt-operator/messageId", "018bcfe5-6800-4abc-8def-0123456789ab")])
    assert record(Uplink(spec(kafkaTopic="t"))(msg(props=not_v7))).timestamp_ms == 1700000000123


@pytest.mark.parametrize(
    "message_id",
    [
        "-fffffff-ffff-7fff-8000-000000000000",  # int(..., 16) takes a sign
        "+fffffff-ffff-7fff-8000-000000000000",
        "0fff_fff-ffff-7fff-8000-000000000000",  # and "_"
        " fffffff-ffff-7fff-8000-000000000000",  # and white space
        "gfffffff-ffff-7fff-8000-000000000000",  # not hex
        "٠١٢٣٤٥٦٧-ffff-7fff-8000-000000000000",  # digits, but not ASCII ones
        "ffffffff-ffff-4fff-8000-000000000000",  # a UUIDv4 holds no time
        "ffffffff-ffff-7fff-8000-00000000000",  # one character short
        "ffffffffffffff7fff-8000-000000000000-",  # no dashes where a UUID has them
    ],
)
def test_a_message_id_that_is_no_uuid7_gives_no_time(message_id: str) -> None:
    assert uuid7_ms(message_id) is None


def test_a_uuid7_message_id_gives_its_milliseconds() -> None:
    assert uuid7_ms("018bcfe5-6800-7abc-8def-0123456789ab") == 1700000000000
    assert uuid7_ms("FFFFFFFF-FFFF-7FFF-8000-000000000000") == 0xFFFFFFFFFFFF
