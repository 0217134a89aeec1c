"""Bad (and good) input for the bridge's mappings: hypothesis strategies and the checks of what comes out.

Shared by the property tests of the mappings (tests/unit/test_bridge_*_properties.py) and the worker-level
test (tests/integration/test_bridge_bad_input.py), which draws from the same strategies with a fixed seed.

What a broker or Kafka can hand a worker:
- MQTT messages as our decoder builds them: topics and user properties of any text (the decoder reads
  any strict UTF-8; Mosquitto lets fewer characters through, see `mosquitto_refuses`), payloads of
  random bytes, valid, malformed and deeply nested JSON, and payloads past every size limit;
- Kafka records: header values of every kind (None, empty, not UTF-8, huge), routing header names in
  any case and repeated, routing values that are no QoS or flag; keys None or bytes;
- RocketMQ messages: keys, tags and properties of any text.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any, Final

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.records import NO_STAMPS, KafkaRecord, Message, MqttPublish, Properties

RECEIVED: Final = 1714567890.123


def property_settings(max_examples: int) -> settings:
    """No deadline (the machine is shared) and no complaint about the large payloads drawn on purpose."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- what Mosquitto refuses ---------------------------------------------------------------------


def mosquitto_refuses(text: str) -> bool:
    """Whether Mosquitto 2.0.11 disconnects a client that sends `text` as an MQTT string (topic, user
    property name or value, content type, response topic).

    Measured with the real broker (tests/integration/test_bridge_bad_input.py): it answers DISCONNECT
    0x81 "Malformed packet" (or closes the socket) for the control characters U+0000-U+001F (tab and
    newline too), U+007F-U+009F and the Unicode non-characters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF), as the
    MQTT 5 spec (1.5.4) allows; U+2028, U+FEFF, emoji and other text pass. A string is at most 65535
    bytes (its length is 2 bytes on the wire).
    """
    for char in text:
        code = ord(char)
        if (
            code <= 0x1F
            or 0x7F <= code <= 0x9F
            or 0xFDD0 <= code <= 0xFDEF
            or code & 0xFFFE == 0xFFFE
            or 0xD800 <= code <= 0xDFFF
        ):
            return True
    return len(text.encode("utf-8", "surrogatepass")) > 0xFFFF


# --- text -----------------------------------------------------------------------------------------

# Characters a string may hold in Python after a strict UTF-8 decode: anything but the surrogates.
_any_char = st.characters(exclude_categories=("Cs",))
# The characters that trip brokers and parsers, drawn often.
ODD_CHARS: Final = (
    "\x00\x01\t\n\r\x1b\x7f\x85\x9f\u2028\u2029\ufeff\ufdd0\ufdef\ufffe\uffff\U0001fffe\U0010ffff"
    "/+#$ %\"'\\{}[]é€😀"
)
_odd_char = st.sampled_from(ODD_CHARS)
texts = st.text(_any_char | _odd_char, max_size=12)
long_texts = st.text(_any_char | _odd_char, min_size=60, max_size=200)
# Over 65535 bytes: no MQTT string can hold it.
huge_texts = st.integers(65_536 // 3 + 1, 70_000).map(lambda n: "€" * n)


def sometimes_huge(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`strategy`, or one time in eight a string over 65535 bytes."""
    return st.integers(0, 7).flatmap(lambda n: huge_texts if n == 0 else strategy)


any_text = sometimes_huge(
    texts | long_texts | st.sampled_from(["", " ", "clientId", "mqtt-operator/clientId"])
)

# --- payloads -----------------------------------------------------------------------------------

json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts
)
json_values = st.recursive(
    json_leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=10,
)
# Documents with the fields the key paths look for (KEY_PATHS), sometimes.
documents = (
    st.fixed_dictionaries(
        {},
        optional={
            "plate": json_values,
            "a": st.fixed_dictionaries({}, optional={"b": json_values}) | json_values,
            "list": st.lists(st.fixed_dictionaries({}, optional={"x": json_values}), max_size=2)
            | json_values,
            "odd key": json_values,
        },
    )
    | json_values
)
KEY_PATHS: Final = {
    "$.plate": ("plate",),
    "$.a.b": ("a", "b"),
    "$.list[0].x": ("list", 0, "x"),
    "$['odd key']": ("odd key",),
    "$[1]": (1,),
}


@st.composite
def key_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A mapping's `key`: every source, payloadField with each of KEY_PATHS."""
    source = draw(st.sampled_from(["none", "topic", "clientId", "payloadField"]))
    if source == "payloadField":
        return {"source": source, "path": draw(st.sampled_from(sorted(KEY_PATHS)))}
    return {"source": source}


@st.composite
def json_payloads(draw: st.DrawFn) -> bytes:
    return json.dumps(draw(documents), ensure_ascii=draw(st.booleans())).encode()


@st.composite
def malformed_json(draw: st.DrawFn) -> bytes:
    """JSON cut short, with a byte changed, an unbalanced bracket, or a lone surrogate escape."""
    raw = bytearray(draw(json_payloads()))
    how = draw(st.sampled_from(["cut", "byte", "bracket", "surrogate"]))
    if how == "cut":
        return bytes(raw[: draw(st.integers(0, max(len(raw) - 1, 0)))])
    if how == "byte":
        at = draw(st.integers(0, len(raw)))
        return bytes(raw[:at]) + bytes((draw(st.integers(0, 255)),)) + bytes(raw[at:])
    if how == "bracket":
        return b'{"plate": [' + bytes(raw)
    return b'{"plate": "\\ud800", "a": {"b": "\\udc00x"}}'


# Deeper than any JSON decoder's recursion limit (msgspec's and the json module's are ~1000).
deep_json = st.tuples(st.integers(900, 5_000), st.sampled_from([b"[", b'{"plate":', b'{"a":{"b":'])).map(
    lambda depth_open: depth_open[1] * depth_open[0] + b"1" + b"]" * depth_open[0]
)
# Past Kafka's default record limit (2 MiB here) and RocketMQ's body limit (4 MiB); built, not drawn.
HUGE_MIN: Final = 2 * 1024 * 1024 + 1
huge_payloads = st.integers(HUGE_MIN, 5 * 1024 * 1024).map(lambda n: b"\xfe" * n)
payloads = (
    st.binary(max_size=64)
    | json_payloads()
    | malformed_json()
    | deep_json
    | st.text(_any_char | _odd_char, max_size=40).map(str.encode)
    | st.sampled_from([b"", b"null", b"{}", b"[]", b'"\xff"', b"\xef\xbb\xbf{}"])
    | huge_payloads
)

# --- MQTT messages (as the decoder builds them) ---------------------------------------------------

STAMPS: Final = (
    "mqtt-operator/clientId",
    "mqtt-operator/clientAddress",
    "mqtt-operator/messageId",
    "mqtt-operator/receivedAt",
)
stamp_values = (
    texts
    | st.sampled_from(["²", "١٢٣", "9" * 40, "-1", "0", "1714567890123", " 17"])
    # UUIDv7-shaped message ids, some with what int(..., 16) would take but is no hex digit.
    | st.sampled_from(
        [
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "-fffffff-ffff-7fff-8000-000000000000",
            "ffff_fff-ffff-7fff-8000-000000000000",
            " 1234567-89ab-7def-8000-000000000000",
        ]
    )
)
user_property = st.tuples(any_text | st.sampled_from(["clientId", "cid", *STAMPS]), any_text) | st.tuples(
    st.sampled_from(STAMPS), stamp_values
)


@st.composite
def properties(draw: st.DrawFn) -> Properties | None:
    if draw(st.integers(0, 4)) == 0:
        return None
    return Properties(
        payload_format=draw(st.none() | st.integers(0, 1)),
        message_expiry=draw(st.none() | st.integers(0, 0xFFFF_FFFF)),
        content_type=draw(st.none() | any_text | st.just("application/json")),
        response_topic=draw(st.none() | texts),
        correlation_data=draw(st.none() | st.binary(max_size=40)),
        user_properties=draw(st.lists(user_property, max_size=5)),
    )


def topic_levels(parents: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """Topics of one to five levels, any of them empty or of any text, never empty as a whole (a broker
    never sends an empty topic name; the decoder marks one malformed)."""
    first = st.sampled_from([*parents, "cars", "cars ", "Cars"]) | texts
    return st.tuples(first, st.lists(texts | st.just(""), max_size=4)).map(
        lambda t: "/".join([t[0], *t[1]]) or "/"
    )


def incoming(
    topic: str,
    payload: bytes,
    props: Properties | None = None,
    *,
    qos: int = 1,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 1,
    at: float = RECEIVED,
) -> Message:
    """A message as the MQTT codec hands it over: the broker's stamps (`mqtt-operator/...` user
    properties) taken out of `props` into `Message.stamps` (`mqtt5.split_stamps`)."""
    stamps = NO_STAMPS
    if props is not None:
        props, stamps = mqtt5.split_stamps(props)
    return Message(topic, payload, qos, retain, dup, packet_id, props, at, stamps=stamps)


@st.composite
def messages(draw: st.DrawFn, parents: tuple[str, ...] = ()) -> Message:
    qos = draw(st.integers(0, 2))
    return incoming(
        draw(sometimes_huge(topic_levels(parents))),
        draw(payloads),
        draw(properties()),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()),
        packet_id=draw(st.integers(1, 0xFFFF)) if qos else 0,
        at=draw(st.sampled_from([RECEIVED, 0.0])),
    )


# --- Kafka records going to MQTT -----------------------------------------------------------------

ROUTING: Final = ("mqttTopic", "qosLevel", "retain", "cleanSession")


@st.composite
def any_case(draw: st.DrawFn, name: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)


qos_values = st.sampled_from(
    ["0", "1", "2", " 1 ", "1\n", "3", "-1", "abc", "2.0", "\uff11", "\x851", "", "01", "+1"]
)
flag_values = st.sampled_from(
    ["true", "TRUE", " yes ", "1", "0", "no", "false", "", "maybe", "tru", "\x85true"]
)
topic_values = (
    topic_levels()
    | st.sampled_from(
        ["cars/+/cmd", "cars/#", "$SYS/x", "", "cars/\tx", "cars/\x00", "cars/\uffff", "cars/a\u2028"]
    )
    | huge_texts
)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


header_value_bytes = (
    st.none()
    | st.just(b"")
    | st.binary(max_size=24)
    | texts.map(_utf8)
    | st.sampled_from([b"\xff\xfe", b"ok\x80", b"\xed\xa0\x80"])
    | st.integers(65_536, 80_000).map(lambda n: b"h" * n)
    | st.integers(2_000_000, 2_200_000).map(lambda n: b"v" * n)
)


@st.composite
def kafka_headers(draw: st.DrawFn, routing: tuple[str, ...] = ROUTING) -> list[tuple[str, bytes | None]]:
    """Headers of a Kafka record: routing names in any case, repeated or absent, with good and bad values."""
    out: list[tuple[str, bytes | None]] = []
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            out.append((draw(any_case(routing[0])), draw(topic_values.map(_utf8) | header_value_bytes)))
        elif kind == 1:
            out.append((draw(any_case(routing[1])), draw(qos_values.map(_utf8) | header_value_bytes)))
        elif kind == 2:
            name = routing[draw(st.sampled_from([2, 3]))]
            out.append((draw(any_case(name)), draw(flag_values.map(_utf8) | header_value_bytes)))
        else:
            out.append((draw(any_text), draw(header_value_bytes)))
    return out


kafka_values = st.none() | st.binary(max_size=64) | payloads

# --- PUBLISH packets as a broker would send them, whatever their content ----------------------------


def u16(raw: bytes) -> bytes:
    """An MQTT binary or string field: its length on two bytes, then the bytes."""
    return struct.pack(">H", len(raw)) + raw


def raw_publish(topic: bytes, props: bytes, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH of these bytes, framed right (whether they are valid MQTT 5 or not)."""
    head = u16(topic) + struct.pack(">H", packet_id) + mqtt5.encode_varint(len(props)) + props
    return b"\x32" + mqtt5.encode_varint(len(head) + len(payload)) + head + payload


# --- checks of what comes out ----------------------------------------------------------------------

_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def check_reason(result: Any) -> None:
    assert isinstance(result.reason, str) and result.reason.strip(), result


def check_kafka_record(rec: Any) -> KafkaRecord:
    """A record the Kafka sink can produce: the types it expects, a valid topic, a timestamp Kafka
    takes, and aiokafka's own record encoder accepts it."""
    assert type(rec) is KafkaRecord, rec
    topic, key, value, headers, ts = rec
    assert isinstance(topic, str) and _KAFKA_TOPIC.fullmatch(topic) and topic not in (".", ".."), topic
    assert key is None or type(key) is bytes
    assert type(value) is bytes
    assert isinstance(headers, list)
    for header in headers:
        assert isinstance(header, tuple) and len(header) == 2, header
        assert type(header[0]) is str and type(header[1]) is bytes, header
    assert type(ts) is int and 0 <= ts < 2**63, ts
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1024 * 1024,
    )
    assert builder.append(0, timestamp=ts, key=key, value=value, headers=headers) is not None
    return rec


def kafka_record_size(rec: KafkaRecord) -> int:
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(rec.key, rec.value, rec.headers))


def check_publishable(pub: Any) -> MqttPublish:
    """A publish Mosquitto takes (see `mosquitto_refuses`) that survives our encoder and decoder unchanged."""
    assert type(pub) is MqttPublish, pub
    topic, payload, qos, retain, user_properties, props = pub
    assert isinstance(topic, str) and topic, topic
    assert "+" not in topic and "#" not in topic and not topic.startswith("$"), topic
    assert not mosquitto_refuses(topic), topic
    assert type(payload) is bytes
    assert type(qos) is int and qos in (0, 1, 2), qos
    assert type(retain) is bool
    sent = props if props is not None else Properties(user_properties=user_properties)
    for name, value in sent.user_properties:
        assert type(name) is str and type(value) is str
        assert not mosquitto_refuses(name) and not mosquitto_refuses(value), (name[:80], value[:80])
    for text in (sent.content_type, sent.response_topic):
        assert text is None or not mosquitto_refuses(text)
    wire = mqtt5.publish(topic, payload, qos=qos, retain=retain, packet_id=7 if qos else 0, props=sent)
    [got], _, used = mqtt5.decode_stream(wire, RECEIVED)
    assert used == len(wire)
    assert (got.topic, got.payload, got.qos, got.retain) == (topic, payload, qos, retain)
    # The codec takes the broker's stamps apart (a downlink may carry names under the prefix too).
    rest, stamps = mqtt5.split_stamps(sent)
    assert (got.props.user_properties if got.props else []) == (rest.user_properties if rest else [])
    assert got.stamps == stamps
    return pub


def envelope_payload(value: bytes) -> tuple[dict[str, Any], bytes]:
    """The uplink's JSON envelope, parsed, and the payload it carries."""
    body = json.loads(value)
    assert isinstance(body, dict)
    if body.get("payloadEncoding") == "base64":
        assert set(body) == {"clientId", "topic", "payload", "payloadEncoding", "ts"}
        return body, base64.b64decode(body["payload"], validate=True)
    assert set(body) == {"clientId", "topic", "payload", "ts"}
    return body, body["payload"].encode()
