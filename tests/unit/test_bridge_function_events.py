"""What the FunctionTrigger worker sends: CloudEvents (binary, batch), JSON, reply topics, retry
delays and dead-letter publishes, built from MQTT messages without I/O."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import pytest
from tests.unit.bridge_inputs import incoming

from mqtt_operator.bridge.config import MqttToFunction, RetryPolicy
from mqtt_operator.bridge.function_events import (
    BATCH_CONTENT_TYPE,
    Encoder,
    FunctionEvent,
    ReplyTemplate,
    ToEvent,
    header_value,
    rfc3339,
)
from mqtt_operator.bridge.function_sink import Failure, retry_delay
from mqtt_operator.bridge.mqtt_dead_letter import dead_letter_publish
from mqtt_operator.bridge.records import Message, Properties

RECEIVED = 1714567890.1234


def spec(**extra: Any) -> MqttToFunction:
    return MqttToFunction.model_validate(
        {
            "topicFilters": ["vehicles/#"],
            "shareGroup": "g",
            "function": {"url": "http://fn.example/"},
            "eventSource": "/mqtt-operator/ns/devices",
            **extra,
        }
    )


def message(
    topic: str = "vehicles/car-1/battery",
    payload: bytes = b'{"level": 17}',
    content_type: str | None = None,
    user_properties: list[tuple[str, str]] | None = None,
    correlation: bytes | None = None,
) -> Message:
    props = None
    if content_type is not None or user_properties or correlation is not None:
        props = Properties(
            content_type=content_type, user_properties=user_properties or [], correlation_data=correlation
        )
    return incoming(topic, payload, props, packet_id=7, at=RECEIVED)


def events(s: MqttToFunction, *msgs: Message) -> list[FunctionEvent]:
    to_event = ToEvent(s, id_prefix="p")
    return [to_event(m) for m in msgs]


def test_binary_mode_headers_and_body() -> None:
    s = spec()
    [ev] = events(s, message(user_properties=[("clientId", "car-1")]))
    headers, body = Encoder(s).encode([ev])
    assert body == b'{"level": 17}'
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "p-1",
        "ce-source": "/mqtt-operator/ns/devices/vehicles/car-1/battery",
        "ce-type": "io.mqtt-operator.message",
        "ce-subject": "vehicles/car-1/battery",
        "ce-time": "2024-05-01T12:51:30.123Z",
        "ce-mqttqos": "1",
        "ce-mqttretain": "false",
        "ce-mqttclientid": "car-1",
        "Content-Type": "application/json",  # no MQTT content type, but the payload is JSON
    }


@pytest.mark.parametrize(
    ("payload", "content_type", "expected"),
    [
        (b"hello", None, "text/plain; charset=utf-8"),
        (b"\x00\x01binary", None, "application/octet-stream"),
        (b"\xff\xfe", None, "application/octet-stream"),
        (b"<a/>", "application/xml", "application/xml"),
        (b"not json", "application/json", "application/json"),  # the publisher's word is kept
        (b"{}", "bad\x01type", "application/json"),  # unusable as a header: sniffed instead
    ],
)
def test_binary_mode_content_type(payload: bytes, content_type: str | None, expected: str) -> None:
    s = spec()
    [ev] = events(s, message(payload=payload, content_type=content_type))
    headers, body = Encoder(s).encode([ev])
    assert (headers["Content-Type"], body) == (expected, payload)
    assert "ce-mqttclientid" not in headers


def test_header_values_are_percent_encoded_and_source_is_a_uri() -> None:
    s = spec(clientIdTopicLevel=1)
    topic = 'vehicles/Ä 1"%/state'
    [ev] = events(s, message(topic=topic))
    headers, _ = Encoder(s).encode([ev])
    assert headers["ce-subject"] == "vehicles/%C3%84%201%22%25/state"
    assert unquote(headers["ce-subject"]) == topic
    assert headers["ce-mqttclientid"] == "%C3%84%201%22%25"
    # The source is a URI reference (the topic percent-encoded), then header-encoded on top.
    source = unquote(headers["ce-source"])
    assert source == "/mqtt-operator/ns/devices/vehicles/%C3%84%201%22%25/state"
    assert unquote(source) == "/mqtt-operator/ns/devices/" + topic
    assert header_value("plain-ascii/x") == "plain-ascii/x"


def test_binary_mode_base64() -> None:
    s = spec(base64Payload=True)
    [ev] = events(s, message(payload=b"\x89PNG\x00", content_type="image/png"))
    headers, body = Encoder(s).encode([ev])
    assert base64.b64decode(body) == b"\x89PNG\x00"
    assert headers["Content-Type"] == "text/plain; charset=us-ascii"
    assert (headers["ce-mqttencoding"], headers["ce-mqttcontenttype"]) == ("base64", "image/png")


def test_batch_is_an_array_of_structured_events() -> None:
    s = spec(batchMaxMessages=10, clientIdTopicLevel=1)
    msgs = [
        message(payload=b' {"level": 17} '),
        message(topic="vehicles/car-2/note", payload="héllo".encode()),
        message(topic="vehicles/car-3/raw", payload=b"\x00\xff"),
        message(payload=b"{broken", content_type="application/json"),
        message(payload=b"[1]", content_type="application/vnd.car+json; v=2"),
    ]
    headers, body = Encoder(s).encode(events(s, *msgs))
    assert headers == {"Content-Type": BATCH_CONTENT_TYPE}
    batch = json.loads(body)
    assert [e["id"] for e in batch] == ["p-1", "p-2", "p-3", "p-4", "p-5"]
    first = batch[0]
    assert first == {
        "specversion": "1.0",
        "id": "p-1",
        "source": "/mqtt-operator/ns/devices/vehicles/car-1/battery",
        "type": "io.mqtt-operator.message",
        "subject": "vehicles/car-1/battery",
        "time": "2024-05-01T12:51:30.123Z",
        "datacontenttype": "application/json",
        "mqttqos": 1,
        "mqttretain": False,
        "mqttclientid": "car-1",
        "data": {"level": 17},
    }
    assert (batch[1]["datacontenttype"], batch[1]["data"]) == ("text/plain; charset=utf-8", "héllo")
    assert (batch[2]["datacontenttype"], batch[2]["data_base64"]) == (
        "application/octet-stream",
        base64.b64encode(b"\x00\xff").decode(),
    )
    assert "data" not in batch[2]
    # A JSON content type whose payload is not JSON travels as bytes, keeping the content type.
    assert (batch[3]["datacontenttype"], base64.b64decode(batch[3]["data_base64"])) == (
        "application/json",
        b"{broken",
    )
    assert batch[4]["data"] == [1]


def test_batch_base64_always_uses_data_base64() -> None:
    s = spec(batchMaxMessages=2, base64Payload=True)
    body = Encoder(s).encode(events(s, message(), message(payload=b"x")))[1]
    batch = json.loads(body)
    assert [base64.b64decode(e["data_base64"]) for e in batch] == [b'{"level": 17}', b"x"]
    assert [e["datacontenttype"] for e in batch] == ["application/json", "text/plain; charset=utf-8"]
    assert all("data" not in e for e in batch)


def test_json_format_single_and_batch() -> None:
    s = spec(function={"url": "http://fn/", "format": "json"})
    msg = message(content_type="application/json", user_properties=[("clientId", "car-1"), ("fw", "1.2")])
    headers, body = Encoder(s).encode(events(s, msg))
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body) == {
        "id": "p-1",
        "topic": "vehicles/car-1/battery",
        "clientId": "car-1",
        "payload": '{"level": 17}',
        "payloadEncoding": "utf8",
        "contentType": "application/json",
        "userProperties": {"clientId": "car-1", "fw": "1.2"},
        "qos": 1,
        "retain": False,
        "ts": 1714567890123,
    }
    sb = spec(function={"url": "http://fn/", "format": "json"}, batchMaxMessages=5, base64Payload=True)
    _, body = Encoder(sb).encode(events(sb, message(payload=b"a"), message(payload=b"\xff")))
    batch = json.loads(body)
    assert [(e["payload"], e["payloadEncoding"], e["clientId"]) for e in batch] == [
        ("YQ==", "base64", None),
        ("/w==", "base64", None),
    ]
    # Without base64Payload, only what is not UTF-8 is base64.
    sc = spec(function={"url": "http://fn/", "format": "json"}, batchMaxMessages=5)
    _, body = Encoder(sc).encode(events(sc, message(payload=b"a"), message(payload=b"\xff")))
    assert [(e["payload"], e["payloadEncoding"]) for e in json.loads(body)] == [
        ("a", "utf8"),
        ("/w==", "base64"),
    ]


def test_event_ids_are_unique_per_process() -> None:
    s = spec()
    a, b = ToEvent(s), ToEvent(s)
    ids = {a(message()).id for _ in range(100)} | {b(message()).id for _ in range(100)}
    assert len(ids) == 200


def test_rfc3339() -> None:
    now = time.time()
    parsed = datetime.fromisoformat(rfc3339(now).replace("Z", "+00:00")).timestamp()
    assert abs(parsed - now) < 0.001
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    assert rfc3339(1714567890.123) == "2024-05-01T12:51:30.123Z"  # not .122 (float truncation)


def test_reply_template() -> None:
    t = ReplyTemplate("vehicles/{level.1}/cmd/{clientId}")
    assert t.fill("vehicles/car-7/battery", "car-7") == ("vehicles/car-7/cmd/car-7", "")
    assert t.fill("vehicles/car-7/battery", None) == (None, "the publisher's client id is not known")
    assert t.fill("vehicles", "c")[0] is None
    assert t.fill("vehicles/car-7/battery", "a/b")[0] is None  # a client id cannot add levels
    assert t.fill("vehicles/car-7/battery", "a+")[0] is None
    assert ReplyTemplate("replies/{topic}").fill("a/b", None) == ("replies/a/b", "")
    assert ReplyTemplate("fixed/topic").fill("a/b", None) == ("fixed/topic", "")
    assert ReplyTemplate("x/{level.0}/y").fill("/b", None) == ("x//y", "")  # empty levels are fine
    assert ReplyTemplate("{level.1}").fill("a/", None) == (None, "empty MQTT topic")
    for bad in ("x/{level}", "x/{clientid}", "x/{topic", "x/}y", "x/{level.a}"):
        with pytest.raises(ValueError, match="replyTopic"):
            ReplyTemplate(bad)


def test_retry_delay() -> None:
    exp = RetryPolicy(attempts=5, backoff="exponential", initial_delay_seconds=1, max_delay_seconds=5)
    for failures, nominal in [(1, 1), (2, 2), (3, 4)]:
        delays = [retry_delay(exp, failures) for _ in range(200)]
        assert all(nominal * 0.8 <= d <= nominal * 1.2 for d in delays)
        assert max(delays) - min(delays) > 0  # jitter
    assert all(retry_delay(exp, n) <= 5 for n in range(4, 40))
    fixed = RetryPolicy(backoff="fixed", initial_delay_seconds=2, max_delay_seconds=60)
    assert all(1.6 <= retry_delay(fixed, n) <= 2.4 for n in range(1, 10))
    # Retry-After lengthens the wait, within maxDelay.
    assert retry_delay(exp, 1, retry_after=3) == 3
    assert retry_delay(exp, 1, retry_after=100) == 5


def test_dead_letter_publish_carries_reason_status_and_the_original() -> None:
    msg = message(content_type="application/json", user_properties=[("trace", "t1")], correlation=b"c1")
    pub = dead_letter_publish(msg, Failure("the function answered 400 Bad Request", 400), "dlq/fn")
    assert (pub.topic, pub.payload, pub.qos, pub.retain) == ("dlq/fn", msg.payload, 1, False)
    assert pub.props is not None
    assert pub.props.user_properties == [
        ("reason", "the function answered 400 Bad Request"),
        ("statusCode", "400"),
        ("sourceTopic", "vehicles/car-1/battery"),
        ("trace", "t1"),
    ]
    assert (pub.props.content_type, pub.props.correlation_data) == ("application/json", b"c1")
    plain = dead_letter_publish(message(), "no status", "dlq/fn")
    assert plain.props is not None
    assert [k for k, _ in plain.props.user_properties] == ["reason", "sourceTopic"]


def test_a_stamped_message_is_the_same_event_when_delivered_again() -> None:
    stamped = [
        ("mqtt-operator/clientId", "car-1"),
        ("mqtt-operator/messageId", "0193f2b4-7c1e-7abc-8def-0123456789ab"),
    ]
    first, again = events(spec(), message(user_properties=stamped), message(user_properties=stamped))
    assert first.id == again.id == "0193f2b4-7c1e-7abc-8def-0123456789ab"
    assert first.client_id == "car-1"
