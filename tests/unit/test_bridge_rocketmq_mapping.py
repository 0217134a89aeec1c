"""The ReplicationTask mappings, MQTT -> RocketMQ and RocketMQ -> MQTT, without I/O: keys, properties,
what RocketMQ cannot carry as MQTT has it, and the MQTT topic template."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from tests.unit.bridge_inputs import incoming

from mqtt_operator.bridge.config import MqttToRocketMQ, RocketMQToMqtt
from mqtt_operator.bridge.records import Message, MqttPublish, Properties, Reject
from mqtt_operator.bridge.rocketmq_mapping import (
    EMPTY_PAYLOAD_BODY,
    MAX_BODY_BYTES,
    FromRocketMQ,
    RocketMQMessage,
    RocketMQRecord,
    TopicTemplate,
    ToRocketMQ,
    escape_control,
    message_group,
)


def up(**extra: Any) -> ToRocketMQ:
    spec = MqttToRocketMQ.model_validate(
        {"topicFilters": ["piles/+/will"], "shareGroup": "g", "topic": "pile-faults", **extra}
    )
    return ToRocketMQ(spec, message_id_prefix="p")


def down(**extra: Any) -> FromRocketMQ:
    spec = RocketMQToMqtt.model_validate(
        {"topic": "pile-cmd", "consumerGroup": "devices", "mqttTopic": "piles/{key}/cmd", **extra}
    )
    return FromRocketMQ(spec)


def mqtt(
    topic: str = "piles/p-7/will",
    payload: bytes = b'{"pileId": "p-7", "error": 42}',
    user: list[tuple[str, str]] | None = None,
    **props: Any,
) -> Message:
    properties = Properties(user_properties=user or [], **props) if (user or props) else None
    return incoming(topic, payload, properties, packet_id=12, at=1714567890.5)


def record(result: RocketMQRecord | Reject) -> RocketMQRecord:
    assert isinstance(result, RocketMQRecord), result
    return result


def test_a_will_keyed_by_the_client_id_topic_level_with_the_mqtt_metadata() -> None:
    rec = record(
        up(tag="will", clientIdTopicLevel=1)(mqtt(user=[("location", "Hall A"), ("clientId", "spoof")]))
    )
    assert rec.body == b'{"pileId": "p-7", "error": 42}'
    assert (rec.tag, rec.keys, rec.message_group) == ("will", ("p-7",), None)
    assert rec.properties == {
        "location": "Hall A",
        "clientId": "spoof",  # the device's own property travels as it is ...
        "mqtt.topic": "piles/p-7/will",
        "mqtt.qos": "1",
        "mqtt.retain": "false",
        "mqtt.messageId": "p-1",
        "mqtt.clientId": "p-7",  # ... but the client id is the ACL-protected topic level
    }


def test_keys_from_the_topic_a_payload_field_or_none() -> None:
    assert record(up(key={"source": "topic"})(mqtt())).keys == ("piles/p-7/will",)
    assert record(up(key={"source": "payloadField", "path": "$.pileId"})(mqtt())).keys == ("p-7",)
    assert record(up(key={"source": "payloadField", "path": "$.error"})(mqtt())).keys == ("42",)
    assert record(up(key={"source": "payloadField", "path": "$.missing"})(mqtt())).keys == ()
    assert record(up(key={"source": "none"})(mqtt())).keys == ()
    # clientId without a topic level: the user property the device sets, else no key at all.
    assert record(up()(mqtt(user=[("clientId", "dev-9")]))).keys == ("dev-9",)
    no_id = record(up()(mqtt()))
    assert no_id.keys == () and "mqtt.clientId" not in no_id.properties


def test_mqtt5_properties_and_unique_message_ids() -> None:
    mapping = up()
    first = record(
        mapping(
            mqtt(
                content_type="application/json",
                correlation_data=b"\x00\x01",
                response_topic="piles/p-7/reply",
                payload_format=1,
                message_expiry=60,
            )
        )
    )
    assert first.properties["mqtt.contentType"] == "application/json"
    assert base64.b64decode(first.properties["mqtt.correlationData"]) == b"\x00\x01"
    assert first.properties["mqtt.responseTopic"] == "piles/p-7/reply"
    assert (first.properties["mqtt.payloadFormat"], first.properties["mqtt.messageExpiry"]) == ("1", "60")
    second = record(mapping(mqtt()))
    assert first.properties["mqtt.messageId"] != second.properties["mqtt.messageId"]
    # Another process gets another random prefix.
    spec = MqttToRocketMQ.model_validate({"topicFilters": ["a"], "shareGroup": "g", "topic": "t"})
    assert record(ToRocketMQ(spec)(mqtt())).properties["mqtt.messageId"] != "p-1"


def test_what_rocketmq_cannot_carry_is_mapped_explicitly() -> None:
    rec = record(
        up()(
            mqtt(
                payload=b"",
                user=[
                    ("empty", ""),
                    ("KEYS", "a"),
                    ("UNIQ_KEY", "b"),
                    ("line\nbreak", "tab\there"),
                    ("", "x"),
                ],
            )
        )
    )
    # RocketMQ refuses an empty body: one NUL byte and a flag.
    assert (rec.body, rec.properties["mqtt.emptyPayload"]) == (EMPTY_PAYLOAD_BODY, "true")
    # The broker drops empty values: their names are listed instead.
    assert json.loads(rec.properties["mqtt.emptyUserProperties"]) == ["empty"]
    assert "empty" not in rec.properties
    # System property names are refused: prefixed.
    assert (rec.properties["mqtt.user.KEYS"], rec.properties["mqtt.user.UNIQ_KEY"]) == ("a", "b")
    assert "KEYS" not in rec.properties and rec.properties["mqtt.user."] == "x"
    # Control characters are refused: escaped.
    assert rec.properties["line\\u000abreak"] == "tab\\u0009here"
    assert not any(ch < " " for key, value in rec.properties.items() for ch in key + value)


def test_a_payload_over_the_body_limit_is_rejected_and_one_at_the_limit_passes() -> None:
    mapping = up()
    assert isinstance(mapping(mqtt(payload=b"x" * (MAX_BODY_BYTES + 1))), Reject)
    assert len(record(mapping(mqtt(payload=b"x" * MAX_BODY_BYTES))).body) == MAX_BODY_BYTES


def test_ordered_routes_group_by_key_with_long_or_odd_keys_hashed() -> None:
    mapping = up(ordered=True, clientIdTopicLevel=1)
    assert record(mapping(mqtt())).message_group == "p-7"
    long_id = "p" * 80
    assert record(mapping(mqtt(topic=f"piles/{long_id}/will"))).message_group == (
        "sha1-" + hashlib.sha1(long_id.encode()).hexdigest()  # noqa: S324 - the mapping's name rule
    )
    # No key (no client id found): the MQTT topic orders the messages.
    assert record(up(ordered=True)(mqtt())).message_group == "piles/p-7/will"
    assert message_group("g" * 63) == "g" * 63
    assert message_group("g" * 64).startswith("sha1-")
    assert message_group("a\x01b").startswith("sha1-")
    assert escape_control("a\x7fb\x85") == "a\\u007fb\\u0085"


@pytest.mark.parametrize("tag", ["", " ", "a|b", "a\nb"])
def test_tags_rocketmq_refuses_are_refused_at_start(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        up(tag=tag)


def received(**extra: Any) -> RocketMQMessage:
    values: dict[str, Any] = {
        "message_id": "01AB",
        "keys": ("p-7", "other"),
        "tag": "cmd",
        "properties": {"action": "stop", "zone": "east"},
        "born": 1714567890.25,
        **extra,
    }
    return RocketMQMessage(b'{"cmd": "stop"}', **values)


def test_the_topic_template_fills_each_placeholder_with_one_level() -> None:
    assert down()(received()) == MqttPublish(
        "piles/p-7/cmd", b'{"cmd": "stop"}', 1, False, [("action", "stop"), ("zone", "east")]
    )
    publish = down(mqttTopic="{property.zone}/{tag}/{messageId}/{key}", qos=0, retain=True)(received())
    assert isinstance(publish, MqttPublish)
    assert (publish.topic, publish.qos, publish.retain) == ("east/cmd/01AB/p-7", 0, True)
    assert down(mqttTopic="piles/all/cmd")(received(keys=())).topic == "piles/all/cmd"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (received(keys=()), "no key"),
        (received(tag=None), "no tag"),
        (received(keys=("a/b",)), "one topic level"),
        (received(keys=("+",)), "one topic level"),
        (received(keys=("#",)), "one topic level"),
    ],
)
def test_a_message_the_template_cannot_fill_is_rejected(message: RocketMQMessage, why: str) -> None:
    result = down(mqttTopic="piles/{key}/{tag}")(message)
    assert isinstance(result, Reject)
    assert why in result.reason


def test_a_missing_property_or_an_unreadable_body_is_rejected() -> None:
    result = down(mqttTopic="zones/{property.region}/cmd")(received())
    assert isinstance(result, Reject) and "property.region" in result.reason
    # The client hands over b"" for a gzip body that does not inflate (RocketMQ has no empty bodies).
    unreadable = down()(RocketMQMessage(b"", message_id="x", keys=("p-7",)))
    assert isinstance(unreadable, Reject) and "gzip" in unreadable.reason


@pytest.mark.parametrize(
    "template",
    ["piles/{pile}/cmd", "piles/{property.}/cmd", "piles/+/{key}", "piles/#", "$SYS/{key}", "a/{key"],
)
def test_invalid_templates_are_refused_at_start(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        TopicTemplate(template)


def test_the_broker_stamps_are_the_message_id_and_publisher_properties() -> None:
    stamped = [
        ("clientId", "p-99"),
        ("mqtt-operator/clientId", "p-7"),
        ("mqtt-operator/clientAddress", "10.1.2.3"),
        ("mqtt-operator/messageId", "0193f2b4-7c1e-7abc-8def-0123456789ab"),
        ("mqtt-operator/receivedAt", "1714567890400"),
    ]
    rec = record(up()(mqtt(user=stamped)))
    assert rec.properties["mqtt.messageId"] == "0193f2b4-7c1e-7abc-8def-0123456789ab"
    assert rec.properties["mqtt.clientId"] == "p-7"
    assert rec.properties["mqtt.publisherClientId"] == "p-7"
    assert rec.properties["mqtt.publisherAddress"] == "10.1.2.3"
    assert rec.properties["mqtt.receivedAt"] == "1714567890400"
    assert not any(name.startswith("mqtt-operator/") for name in rec.properties)
    assert rec.properties["clientId"] == "p-99"  # the device's own property stays a property
