"""Our MQTT 5 decoder (bridge/mqtt5.py, fed by bridge/mqtt_client.py) against paho-mqtt's encoder.

The worker's MQTT client is our own (docs/bridge.md, "Hand-written and fenced clients"), so its
decoder is checked here against an independent implementation: random packets are encoded by
paho-mqtt and must decode to exactly what was encoded, field by field, whether the bytes come in
one read or split at random places (down to one byte a read) through the connection's own
incremental reader (`MqttConnection.data_received`).

paho has no public packet encoder: PUBLISH, the acknowledgements it sends (PUBACK, PUBREC, PUBREL,
PUBCOMP), DISCONNECT and PINGRESP come from its client's own `_send_*` methods, their bytes kept
instead of written to a socket. It never sends CONNACK, SUBACK or UNSUBACK (nor an acknowledgement
with a reason code and properties): those are framed here around what paho encodes of them, its
`Properties.pack()` and `ReasonCode.pack()`, with its `VariableByteIntegers` for the lengths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.properties import VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.mqtt_client import MqttConnection
from mqtt_operator.bridge.records import (
    NO_STAMPS,
    STAMP_CLIENT_ADDRESS,
    STAMP_CLIENT_ID,
    STAMP_MESSAGE_ID,
    STAMP_RECEIVED_AT,
)

RECEIVED = 1234.5


class _NoSocket:
    """paho's `_send_*` methods refuse to encode without a socket; nothing is ever written to this one."""

    def close(self) -> None:
        pass


class PahoWire(paho.Client):
    """A paho MQTT 5 client whose packets are kept in `wire` instead of being sent."""

    def __init__(self) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.wire = bytearray()
        self._sock = _NoSocket()  # type: ignore[assignment]

    def _packet_queue(self, command: int, packet: Any, mid: int, qos: int, info: Any = None) -> MQTTErrorCode:
        self.wire += packet
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def take(self) -> bytes:
        out, self.wire = bytes(self.wire), bytearray()
        return out


PAHO = PahoWire()


# --- properties: one dict of paho property names, encoded by paho, expected as our Properties -------

# paho's name -> our Properties attribute; a property with none here lands in `Properties.other`.
OURS = {
    "PayloadFormatIndicator": "payload_format",
    "MessageExpiryInterval": "message_expiry",
    "ContentType": "content_type",
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "SubscriptionIdentifier": "subscription_ids",
    "SessionExpiryInterval": "session_expiry",
    "AssignedClientIdentifier": "assigned_client_id",
    "ServerKeepAlive": "server_keep_alive",
    "ReasonString": "reason_string",
    "ReceiveMaximum": "receive_maximum",
    "TopicAliasMaximum": "topic_alias_maximum",
    "TopicAlias": "topic_alias",
    "MaximumQoS": "maximum_qos",
    "RetainAvailable": "retain_available",
    "UserProperty": "user_properties",
    "MaximumPacketSize": "maximum_packet_size",
    "SharedSubscriptionAvailable": "shared_sub_available",
}

# MQTT's UTF-8 strings: any code point but the surrogates (which UTF-8 cannot carry), of 0-255+ bytes.
_chars = st.characters(exclude_categories=("Cs",))
text = st.text(_chars, max_size=12) | st.text(_chars, min_size=64, max_size=160)
binary = st.binary(max_size=12) | st.binary(min_size=128, max_size=300)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
flag = st.integers(0, 1)
user_properties = st.lists(st.tuples(text, text), min_size=1, max_size=5)

# A PUBLISH's user properties also carry the broker plugin's stamps: after the publisher's own, in the
# plugin's order (what the codec reads without the general decoding), or anywhere, repeated, as a
# publisher may send them where no plugin removes them.
STAMP_NAMES = (STAMP_CLIENT_ID, STAMP_CLIENT_ADDRESS, STAMP_MESSAGE_ID, STAMP_RECEIVED_AT)
plugin_stamps = st.lists(st.booleans(), min_size=4, max_size=4).flatmap(
    lambda on: st.tuples(
        *[st.tuples(st.just(name), text) for name, wanted in zip(STAMP_NAMES, on, strict=True) if wanted]
    )
)
only_stamps = plugin_stamps.filter(bool).map(list)
stamped_user_properties = (
    st.tuples(st.lists(st.tuples(text, text), max_size=2), plugin_stamps).map(lambda t: [*t[0], *t[1]])
    | st.lists(st.tuples(st.sampled_from(STAMP_NAMES) | text, text), min_size=1, max_size=6)
).filter(bool)

PUBLISH_PROPS = {
    "PayloadFormatIndicator": flag,
    "MessageExpiryInterval": u32,
    "ContentType": text,
    "ResponseTopic": text,
    "CorrelationData": binary,
    "SubscriptionIdentifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3),
    "TopicAlias": st.integers(1, 0xFFFF),
    "UserProperty": user_properties | stamped_user_properties,
}
CONNACK_PROPS = {
    "SessionExpiryInterval": u32,
    "ReceiveMaximum": st.integers(1, 0xFFFF),
    "MaximumQoS": flag,
    "RetainAvailable": flag,
    "MaximumPacketSize": st.integers(1, 268_435_455),
    "AssignedClientIdentifier": text,
    "TopicAliasMaximum": u16,
    "ReasonString": text,
    "UserProperty": user_properties,
    "WildcardSubscriptionAvailable": flag,
    "SubscriptionIdentifierAvailable": flag,
    "SharedSubscriptionAvailable": flag,
    "ServerKeepAlive": u16,
    "ResponseInformation": text,
    "ServerReference": text,
    "AuthenticationMethod": text,
    "AuthenticationData": binary,
}
ACK_PROPS = {"ReasonString": text, "UserProperty": user_properties}
DISCONNECT_PROPS = {
    "SessionExpiryInterval": u32,
    "ServerReference": text,
    "ReasonString": text,
    "UserProperty": user_properties,
}


def props_of(allowed: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the properties a packet type allows, with random values."""
    return st.fixed_dictionaries({}, optional=allowed)


def paho_props(packet_type: int, values: dict[str, Any]) -> PahoProperties:
    props = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def our_props(values: dict[str, Any]) -> mqtt5.Properties:
    expected = mqtt5.Properties()
    for name, value in values.items():
        attr = OURS.get(name)
        if attr is None:
            expected.other[PahoProperties(0).getIdentFromName(name)] = value
        else:
            setattr(expected, attr, list(value) if isinstance(value, list) else value)
    return expected


def reason_codes(packet_type: int) -> st.SearchStrategy[int]:
    """The reason codes paho knows for a packet type."""
    codes = [
        code
        for code, names in ReasonCode.names.items()
        if any(packet_type in types for types in names.values())
    ]
    return st.sampled_from(sorted(codes))


def framed(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + VariableByteIntegers.encode(len(body)) + body


# --- packets: (paho's bytes, what our decoder must make of them) -------------------------------------

Packet = tuple[bytes, Any]

topics = text | st.just("")  # an empty topic goes with a topic alias; the decoder takes it as it is
payloads = (
    st.binary(max_size=200)
    | st.just(b"")
    # Large: remaining lengths of 2 and 3 bytes (a 4-byte one: test_a_publish_of_over_2_mib_...).
    | st.tuples(st.integers(16_384, 40_000), st.binary(min_size=1, max_size=8)).map(
        lambda size_pattern: (size_pattern[1] * size_pattern[0])[: size_pattern[0]]
    )
)


@st.composite
def publishes(draw: st.DrawFn, payload: st.SearchStrategy[bytes] = payloads) -> Packet:
    topic = draw(topics)
    body = draw(payload)
    qos = draw(st.integers(0, 2))
    retain = draw(st.booleans())
    dup = draw(st.booleans())
    packet_id = draw(st.integers(1, 0xFFFF)) if qos else 0
    # Also what most messages through the plugin carry: its stamps and nothing else.
    values = draw(props_of(PUBLISH_PROPS) | st.fixed_dictionaries({"UserProperty": only_stamps}))
    props = paho_props(PacketTypes.PUBLISH, values) if values or draw(st.booleans()) else None
    PAHO._send_publish(packet_id, topic.encode(), body, qos, retain, dup, None, props)
    # The codec takes the stamps apart from the publisher's own properties.
    ours, stamps = mqtt5.split_stamps(our_props(values)) if values else (None, NO_STAMPS)
    return PAHO.take(), (topic, body, qos, retain, dup, packet_id, ours, stamps)


@st.composite
def connacks(draw: st.DrawFn) -> Packet:
    session_present = draw(st.booleans())
    reason = draw(reason_codes(PacketTypes.CONNACK))
    values = draw(props_of(CONNACK_PROPS))
    body = (
        bytes((int(session_present),))
        + ReasonCode(PacketTypes.CONNACK, identifier=reason).pack()
        + paho_props(PacketTypes.CONNACK, values).pack()
    )
    return framed(0x20, body), mqtt5.Connack(session_present, reason, our_props(values))


@st.composite
def subacks(draw: st.DrawFn) -> Packet:
    packet_type = draw(st.sampled_from([PacketTypes.SUBACK, PacketTypes.UNSUBACK]))
    packet_id = draw(st.integers(1, 0xFFFF))
    reasons = draw(st.lists(reason_codes(packet_type), min_size=1, max_size=8))
    values = draw(props_of(ACK_PROPS))
    body = (
        packet_id.to_bytes(2, "big")
        + paho_props(packet_type, values).pack()
        + b"".join(ReasonCode(packet_type, identifier=r).pack() for r in reasons)
    )
    return framed(packet_type << 4, body), mqtt5.Suback(packet_id, reasons, our_props(values))


_ACK_COMMANDS = {
    PacketTypes.PUBACK: paho.PUBACK,
    PacketTypes.PUBREC: paho.PUBREC,
    PacketTypes.PUBREL: paho.PUBREL | 2,
    PacketTypes.PUBCOMP: paho.PUBCOMP,
}


@st.composite
def acks(draw: st.DrawFn) -> Packet:
    packet_type = draw(st.sampled_from(sorted(_ACK_COMMANDS)))
    packet_id = draw(st.integers(1, 0xFFFF))
    form = draw(st.sampled_from(["paho", "reason", "reason+properties"]))
    if form == "paho":  # what paho itself sends: packet id only, reason Success implied
        PAHO._send_command_with_mid(_ACK_COMMANDS[packet_type], packet_id, False)
        return PAHO.take(), mqtt5.Ack(packet_type, packet_id, 0)
    reason = draw(reason_codes(packet_type))
    body = packet_id.to_bytes(2, "big") + ReasonCode(packet_type, identifier=reason).pack()
    if form == "reason+properties":
        body += paho_props(packet_type, draw(props_of(ACK_PROPS))).pack()
    return framed(_ACK_COMMANDS[packet_type], body), mqtt5.Ack(packet_type, packet_id, reason)


@st.composite
def disconnects(draw: st.DrawFn) -> Packet:
    form = draw(st.sampled_from(["bare", "reason", "reason+properties"]))
    if form == "bare":
        PAHO._send_disconnect()
        return PAHO.take(), mqtt5.Disconnect(0, mqtt5.Properties())
    reason = draw(reason_codes(PacketTypes.DISCONNECT))
    values = draw(props_of(DISCONNECT_PROPS)) if form == "reason+properties" else {}
    props = paho_props(PacketTypes.DISCONNECT, values) if form == "reason+properties" else None
    PAHO._send_disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=reason), props)
    return PAHO.take(), mqtt5.Disconnect(reason, our_props(values))


def _pingresp() -> Packet:
    PAHO._send_simple_command(paho.PINGRESP)
    return PAHO.take(), mqtt5.PINGRESP


controls = connacks() | subacks() | acks() | disconnects() | st.just(_pingresp())
packets = st.lists(publishes() | controls, min_size=1, max_size=8)


# --- decoding, in one read and in pieces ------------------------------------------------------------


def fields(msg: mqtt5.Message) -> tuple[Any, ...]:
    return (msg.topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.packet_id, msg.props, msg.stamps)


def split(stream: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if cut > start:
            yield stream[start:cut]
            start = cut


def received_through_a_connection(pieces: Iterator[bytes]) -> tuple[list[mqtt5.Message], list[Any]]:
    """The pieces as socket reads of a worker's connection: what it hands on, and the control packets."""

    async def run() -> tuple[list[mqtt5.Message], list[Any]]:
        messages: list[mqtt5.Message] = []
        conn = MqttConnection(lambda _conn, batch: messages.extend(batch))
        seen: list[Any] = []
        conn._control = seen.append  # type: ignore[method-assign]  # recorded instead of acted on
        for piece in pieces:
            conn.data_received(piece)
            assert conn.disconnect_reason is None, conn.disconnect_reason  # no protocol error
        assert conn._rest == b"", f"{len(conn._rest)} bytes left undecoded"
        return messages, seen

    return asyncio.run(run())


def check_stream(items: list[Packet], cuts: list[int]) -> None:
    stream = b"".join(wire for wire, _ in items)
    want_messages = [want for _, want in items if isinstance(want, tuple)]
    want_controls = [want for _, want in items if not isinstance(want, tuple)]

    messages, got_controls, used = mqtt5.decode_stream(stream, RECEIVED)
    assert used == len(stream)
    assert [fields(m) for m in messages] == want_messages
    assert all(m.received == RECEIVED for m in messages)
    assert got_controls == want_controls

    messages, got_controls = received_through_a_connection(split(stream, cuts))
    assert [fields(m) for m in messages] == want_messages
    assert got_controls == want_controls

    if len(stream) <= 4096:
        messages, got_controls = received_through_a_connection(split(stream, list(range(len(stream)))))
        assert [fields(m) for m in messages] == want_messages
        assert got_controls == want_controls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=packets, data=st.data())
def test_packets_paho_encodes_decode_to_what_was_encoded_in_one_read_and_in_pieces(
    items: list[Packet], data: st.DataObject
) -> None:
    length = sum(len(wire) for wire, _ in items)
    cuts = data.draw(st.lists(st.integers(1, max(1, length - 1)), max_size=40), label="cuts")
    check_stream(items, cuts)


@settings(max_examples=200, deadline=None)
@given(item=publishes(st.binary(max_size=64)), data=st.data())
def test_a_single_publish_in_pieces_of_one_to_a_few_bytes(item: Packet, data: st.DataObject) -> None:
    # Small pieces everywhere: every header field split at every offset, over the examples.
    length = len(item[0])
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=length), label="sizes")
    cuts, at = [], 0
    while at < length:
        at += sizes[len(cuts) % len(sizes)]
        cuts.append(at)
    check_stream([item], cuts)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    item=publishes(st.integers(2_097_152, 2_100_000).map(lambda size: bytes(range(256)) * (size // 256 + 1))),
    data=st.data(),
)
def test_a_publish_of_over_2_mib_has_a_four_byte_length_and_still_decodes(
    item: Packet, data: st.DataObject
) -> None:
    wire = item[0]
    assert wire[1] >= 0x80 and wire[2] >= 0x80 and wire[3] >= 0x80 and wire[4] < 0x80
    cuts = [*range(1, 7), *data.draw(st.lists(st.integers(7, len(wire) - 1), max_size=12), label="cuts")]
    check_stream([item], cuts)


# --- what is not MQTT: a ProtocolError, nothing else ----------------------------------------------


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """paho's packets with bytes changed, cut out or added: most no longer valid MQTT."""
    wire = bytearray(b"".join(w for w, _ in draw(st.lists(publishes(st.binary(max_size=40)) | controls))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        change = draw(st.sampled_from(["set", "cut", "add"]))
        if change == "set" and at < len(wire):
            wire[at] = draw(st.integers(0, 255))
        elif change == "cut":
            del wire[at : at + draw(st.integers(1, 4))]
        else:
            wire[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(wire)


@settings(max_examples=500, deadline=None)
@given(raw=damaged() | st.binary(max_size=64))
@example(raw=b"\x40\x00\x00\x01")  # found by this test: a PUBACK too short for its packet id (struct.error)
def test_bytes_that_are_not_mqtt_fail_as_a_protocol_error_and_nothing_else(raw: bytes) -> None:
    # The connection logs a ProtocolError and closes; any other exception would escape data_received.
    try:
        _, _, used = mqtt5.decode_stream(raw, RECEIVED)
    except mqtt5.ProtocolError:
        return
    assert 0 <= used <= len(raw)
