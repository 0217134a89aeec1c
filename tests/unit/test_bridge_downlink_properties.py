"""Bad input going to MQTT: the Kafka and RocketMQ downlinks answer a publish Mosquitto takes or a Reject.

Property tests (hypothesis) of `kafka_mapping.Downlink` and `rocketmq_mapping.FromRocketMQ` over records
as Kafka and RocketMQ hand them over (`bridge_inputs.kafka_headers`: header values None, empty, not
UTF-8, over 64 KiB and 2 MiB, text with the characters Mosquitto refuses; routing header names in any
case and repeated; QoS values such as "3", "-1", "abc", "2.0", flags of any text; values None or bytes):

- the mapping never raises, and a Reject has a reason;
- a publish is one Mosquitto takes (`bridge_inputs.mosquitto_refuses`: no control character, tab,
  newline or Unicode non-character in its topic or user properties, each at most 65535 bytes; no
  wildcard, no `$` topic) at QoS 0, 1 or 2, and it goes through our encoder and decoder unchanged.
  Before the fix, a header `mqttTopic: cars/\\tx` or any header whose value held a newline became a
  publish Mosquitto answers with DISCONNECT "Malformed packet": the sink retried it on a new
  connection forever and nothing behind it went out; a header value over 64 KiB made the encoder
  raise struct.error (the worker stopped);
- the routing is what the headers say: the last topic, QoS and retain header of each name (in any
  case) wins, a value that is no QoS or flag is a Reject naming the header, the case of the names
  does not matter;
- every other header travels as a user property when Mosquitto can take it as one, in order.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from tests.unit.bridge_inputs import (
    ROUTING,
    any_text,
    check_kafka_record,
    check_publishable,
    check_reason,
    kafka_headers,
    kafka_record_size,
    kafka_values,
    mosquitto_refuses,
    property_settings,
    texts,
)

from mqtt_operator.bridge.config import KafkaToMqtt, RocketMQToMqtt
from mqtt_operator.bridge.kafka_mapping import Downlink, downlink_dead_letter
from mqtt_operator.bridge.records import MqttPublish, Reject
from mqtt_operator.bridge.rocketmq_mapping import FromRocketMQ, RocketMQMessage

SETTINGS = property_settings(200)
CUSTOM = ("Topic-Header", "QoS", "keep", "Clean")

Headers = list[tuple[str, bytes | None]]


@st.composite
def downlink_specs(draw: st.DrawFn) -> tuple[KafkaToMqtt, tuple[str, ...]]:
    names = draw(st.sampled_from([ROUTING, CUSTOM]))
    spec = KafkaToMqtt.model_validate(
        {
            "kafkaTopic": "commands",
            "consumerGroup": "g",
            "topicHeader": names[0],
            "qosHeader": names[1],
            "retainHeader": names[2],
            "cleanSessionHeader": names[3],
            "defaultTopic": draw(st.none() | st.sampled_from(["devices/all/cmd", "d/€/😀"])),
            "defaultQos": draw(st.sampled_from([0, 1, 2])),
            "defaultRetain": draw(st.booleans()),
        }
    )
    return spec, names


@st.composite
def downlink_cases(draw: st.DrawFn) -> tuple[KafkaToMqtt, bytes | None, Headers]:
    spec, names = draw(downlink_specs())
    return spec, draw(kafka_values), draw(kafka_headers(names))


def _last(headers: Headers, name: str) -> tuple[bool, bytes | None]:
    found, value = False, None
    for header, raw in headers:
        if header.lower() == name.lower():
            found, value = True, raw
    return found, value


def _text(raw: bytes | None) -> str | None:
    try:
        return raw.decode() if raw is not None else ""
    except UnicodeDecodeError:
        return None


FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


@SETTINGS
@given(case=downlink_cases())
@example(case=(KafkaToMqtt(kafka_topic="c", consumer_group="g"), b"x", [("mqttTopic", b"cars/\tx")]))
@example(case=(KafkaToMqtt(kafka_topic="c", consumer_group="g"), b"x", [("mqttTopic", b"cars/\xef\xbf\xbf")]))
@example(
    case=(
        KafkaToMqtt(kafka_topic="c", consumer_group="g"),
        b"x",
        [("mqttTopic", b"cars/1"), ("note", b"a\nb")],
    )
)
@example(
    case=(
        KafkaToMqtt(kafka_topic="c", consumer_group="g"),
        b"x",
        [("mqttTopic", b"cars/1"), ("big", b"h" * 70_000)],
    )
)
def test_downlink_answers_a_publish_mosquitto_takes_or_a_reject(
    case: tuple[KafkaToMqtt, bytes | None, Headers],
) -> None:
    spec, value, headers = case
    result = Downlink(spec)(value, headers)  # type: ignore[arg-type]
    routing = {
        n.lower() for n in (spec.topic_header, spec.qos_header, spec.retain_header, spec.clean_session_header)
    }
    for name in routing:
        found, raw = _last(headers, name)
        if found and _text(raw) is None:
            assert type(result) is Reject, f"{name}: {raw!r} is not UTF-8 and was taken"
    found, raw = _last(headers, spec.qos_header)
    qos_text = _text(raw) if found else None
    if qos_text is not None and qos_text.strip() not in ("0", "1", "2"):
        assert type(result) is Reject and "header" in result.reason, result
    if type(result) is Reject:
        check_reason(result)
        return
    pub = check_publishable(result)
    assert pub.payload == (value or b"")
    found, raw = _last(headers, spec.topic_header)
    assert pub.topic == (_text(raw) if found else spec.default_topic)
    assert pub.qos == (int(qos_text) if qos_text is not None else spec.default_qos)
    found, raw = _last(headers, spec.retain_header)
    assert pub.retain == (FLAGS[(_text(raw) or "").strip().lower()] if found else spec.default_retain)
    others = [
        (name, _text(raw))
        for name, raw in headers
        if name.lower() not in routing and raw is not None and _text(raw) is not None
    ]
    assert pub.user_properties == [
        (name, text)
        for name, text in others
        if text is not None and not mosquitto_refuses(name) and not mosquitto_refuses(text)
    ]


@SETTINGS
@given(case=downlink_cases(), data=st.data())
def test_the_case_of_header_names_does_not_change_the_publish(
    case: tuple[KafkaToMqtt, bytes | None, Headers], data: st.DataObject
) -> None:
    spec, value, headers = case
    recased = [
        ("".join(c.swapcase() if data.draw(st.booleans(), label="swap") else c for c in name), raw)
        if name.lower()
        in {
            h.lower()
            for h in (spec.topic_header, spec.qos_header, spec.retain_header, spec.clean_session_header)
        }
        else (name, raw)
        for name, raw in headers
    ]
    first, second = Downlink(spec)(value, headers), Downlink(spec)(value, recased)  # type: ignore[arg-type]
    assert type(first) is type(second)
    if isinstance(first, MqttPublish):
        assert isinstance(second, MqttPublish)
        assert first[:4] == second[:4] and first.user_properties == second.user_properties


@SETTINGS
@given(
    case=downlink_cases(),
    key=st.none() | st.binary(max_size=32),
    reason=any_text,
    limit=st.sampled_from([1024 * 1024, 2 * 1024 * 1024]),
)
def test_a_downlink_dead_letter_is_a_record_that_fits_the_limit(
    case: tuple[KafkaToMqtt, bytes | None, Headers], key: bytes | None, reason: str, limit: int
) -> None:
    _, value, headers = case
    rec = check_kafka_record(
        downlink_dead_letter(
            source_topic="commands",
            partition=3,
            offset=17,
            key=key,
            value=value,
            headers=headers,  # type: ignore[arg-type]
            timestamp_ms=1714567890123,
            reason=reason or "why",
            topic="dead.letters",
            limit=limit,
        )
    )
    assert kafka_record_size(rec) <= limit
    assert dict(rec.headers)["dlq.reason"] == (reason or "why").encode()
    assert rec.key == key


# --- RocketMQ -> MQTT -------------------------------------------------------------------------------------

rocketmq_text = texts | st.sampled_from(["p-7", "a b", "x/y", "+", "#", "", "\uffff", "ü"])


@st.composite
def rocketmq_messages(draw: st.DrawFn) -> RocketMQMessage:
    return RocketMQMessage(
        draw(st.binary(max_size=32) | st.just(b"")),
        message_id=draw(rocketmq_text),
        tag=draw(st.none() | rocketmq_text),
        keys=tuple(draw(st.lists(rocketmq_text, max_size=3))),
        properties=draw(st.dictionaries(any_text | st.just("dev"), any_text, max_size=4)),
    )


@SETTINGS
@given(
    template=st.sampled_from(["piles/{key}/cmd", "t/{tag}/{messageId}", "p/{property.dev}", "fixed/topic"]),
    qos=st.sampled_from([0, 1, 2]),
    msg=rocketmq_messages(),
)
@example(template="piles/{key}/cmd", qos=1, msg=RocketMQMessage(b"x", message_id="m", keys=("p\uffff",)))
@example(template="fixed/topic", qos=1, msg=RocketMQMessage(b"x", message_id="m", properties={"k": "\ufdd0"}))
def test_from_rocketmq_answers_a_publish_mosquitto_takes_or_a_reject(
    template: str, qos: int, msg: RocketMQMessage
) -> None:
    spec = RocketMQToMqtt(topic="cmd", consumer_group="g", mqtt_topic=template, qos=qos)  # type: ignore[arg-type]
    result = FromRocketMQ(spec)(msg)
    if type(result) is Reject:
        check_reason(result)
        return
    pub = check_publishable(result)
    assert pub.payload == msg.body and pub.qos == qos
    assert pub.user_properties == [
        (n, v) for n, v in msg.properties.items() if not mosquitto_refuses(n) and not mosquitto_refuses(v)
    ]
