"""The MQTT 5 codec of the bridge worker: what it encodes decodes back, split reads reassemble."""

from __future__ import annotations

import pytest

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.records import Properties


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_varint_round_trip(value: int) -> None:
    raw = mqtt5.encode_varint(value)
    assert len(raw) == (1 if value < 128 else 2 if value < 16384 else 3 if value < 2097152 else 4)
    assert mqtt5.decode_varint(raw + b"\xff", 0) == (value, len(raw))


def test_varint_longer_than_four_bytes_is_malformed() -> None:
    with pytest.raises(mqtt5.ProtocolError):
        mqtt5.decode_varint(b"\xff\xff\xff\xff\x01", 0)


def _props() -> Properties:
    return Properties(
        payload_format=1,
        message_expiry=60,
        content_type="application/json",
        response_topic="reply/here",
        correlation_data=b"\x00\x01corr",
        user_properties=[("clientId", "car-7"), ("région", "süd"), ("clientId", "twice")],
    )


def test_publish_round_trip_with_properties() -> None:
    packet = mqtt5.publish("cars/7/state", b"\x00payload", qos=1, retain=True, packet_id=513, props=_props())
    messages, controls, used = mqtt5.decode_stream(packet, 12.5)
    assert (controls, used) == ([], len(packet))
    [msg] = messages
    assert (msg.topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.packet_id, msg.received) == (
        "cars/7/state",
        b"\x00payload",
        1,
        True,
        False,
        513,
        12.5,
    )
    assert msg.props == _props()


def test_qos0_publish_without_properties() -> None:
    packet = mqtt5.publish("t", b"", qos=0)
    [msg], _, _ = mqtt5.decode_stream(packet, 0.0)
    assert (msg.topic, msg.payload, msg.qos, msg.packet_id, msg.props) == ("t", b"", 0, 0, None)


def test_large_publish_has_a_multi_byte_length() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    packet = mqtt5.publish("big", payload, qos=1, packet_id=1)
    [msg], _, _ = mqtt5.decode_stream(packet, 0.0)
    assert msg.payload == payload


def test_stream_split_at_every_byte_reassembles() -> None:
    stream = (
        b"".join(
            [
                mqtt5.publish(
                    f"t/{i}", b"x" * (i * 50), qos=1, packet_id=i + 1, props=_props() if i % 2 else None
                )
                for i in range(6)
            ]
        )
        + b"\xd0\x00"
        + b"\x40\x03\x00\x09\x10"  # PUBACK 9, reason 0x10
    )
    for cut in range(len(stream) + 1):
        first, controls1, used = mqtt5.decode_stream(stream[:cut], 0.0)
        rest = stream[used:]
        second, controls2, used2 = mqtt5.decode_stream(rest, 0.0)
        assert used2 == len(rest), cut
        assert [m.topic for m in first + second] == [f"t/{i}" for i in range(6)]
        acks = [c for c in controls1 + controls2 if isinstance(c, mqtt5.Ack)]
        assert [(a.packet_id, a.reason) for a in acks] == [(9, 0x10)]
        assert mqtt5.PINGRESP in controls1 + controls2


def test_connack_suback_disconnect_decode() -> None:
    props = mqtt5.encode_properties(
        Properties(receive_maximum=20, maximum_packet_size=1000, reason_string="hi")
    )
    connack = bytes([0x20, 2 + len(props), 1, 0]) + props
    suback = bytes([0x90, 6, 0, 7, 0, 1, 0x87, 0x00])
    disconnect = bytes([0xE0, 2, 0x8B, 0])
    _, controls, _ = mqtt5.decode_stream(connack + suback + disconnect, 0.0)
    ca, sa, dc = controls
    assert isinstance(ca, mqtt5.Connack) and ca.session_present and ca.reason == 0
    assert (ca.props.receive_maximum, ca.props.maximum_packet_size, ca.props.reason_string) == (
        20,
        1000,
        "hi",
    )
    assert isinstance(sa, mqtt5.Suback) and (sa.packet_id, sa.reasons) == (7, [1, 0x87, 0])
    assert isinstance(dc, mqtt5.Disconnect) and dc.reason == 0x8B


def test_connect_carries_session_and_receive_maximum() -> None:
    packet = mqtt5.connect(
        "bridge-r0",
        keepalive=30,
        clean_start=False,
        session_expiry=7200,
        receive_maximum=500,
        username="u",
        password="p",
    )
    assert packet[0] == 0x10
    length, pos = mqtt5.decode_varint(packet, 1)
    body = packet[pos:]
    assert len(body) == length
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # username + password, clean start off
    props_len, p = mqtt5.decode_varint(body, 10)
    props = mqtt5.decode_properties(body, p, p + props_len)
    assert (props.session_expiry, props.receive_maximum, props.topic_alias_maximum) == (7200, 500, 0)


def test_pubacks_keep_the_given_order() -> None:
    raw = mqtt5.pubacks([3, 1, 2])
    assert raw == b"\x40\x02\x00\x03\x40\x02\x00\x01\x40\x02\x00\x02"


def test_malformed_packets_are_protocol_errors() -> None:
    with pytest.raises(mqtt5.ProtocolError):
        mqtt5.decode_stream(b"\x30\x02\x00\x09", 0.0)  # the topic length points past the packet
    with pytest.raises(mqtt5.ProtocolError):
        mqtt5.decode_stream(b"\x10\x00", 0.0)  # CONNECT from a server
    with pytest.raises(mqtt5.ProtocolError):
        mqtt5.decode_properties(b"\x7f\x00", 0, 2)  # unknown property


def test_reason_text() -> None:
    assert mqtt5.reason_text(0x87) == "0x87 Not authorized"
    assert mqtt5.reason_text(0x10) == "0x10 No matching subscribers"


def test_pubrel_is_the_success_release_of_a_qos2_packet_id() -> None:
    assert mqtt5.pubrel(0x1234) == b"\x62\x02\x12\x34"
