"""The C PUBLISH reader (bridge/_publish.c) against the Python decoder it takes the common packets from.

`mqtt5.decode_stream` hands each run of PUBLISHes to the C reader first and reads in Python whatever
the reader leaves (test_bridge_mqtt5_properties.py checks the whole against paho's encoder). Here the
same bytes are decoded with the reader and without it (Python alone, as on an install without a
compiler), and must give the same messages, slot by slot, the same control packets and the same error.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_bridge_mqtt5_properties import damaged, packets

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.message_fields import stamp_properties
from mqtt_operator.bridge.records import NO_STAMPS, Message, Properties, Stamps

RECEIVED = 1234.5
SLOTS = Message.__slots__
UUID7 = "018bcfe5-6800-7abc-8def-0123456789ab"  # 1,700,000,000,000 ms


def publish(
    topic: bytes,
    payload: bytes,
    user_properties: list[tuple[str, str]] | None = None,
    *,
    qos: int = 1,
    packet_id: int = 7,
    first: int | None = None,
) -> bytes:
    props = mqtt5.encode_properties(Properties(user_properties=user_properties) if user_properties else None)
    body = len(topic).to_bytes(2, "big") + topic + (packet_id.to_bytes(2, "big") if qos else b"") + props
    head = first if first is not None else 0x30 | qos << 1
    return bytes([head]) + mqtt5.encode_varint(len(body) + len(payload)) + body + payload


def stamps(
    client_id: str | None = "dev-1",
    address: str | None = "10.0.0.9:50412",
    message_id: str | None = UUID7,
    received_at: str | None = None,
) -> list[tuple[str, str]]:
    """The plugin's stamps as user properties, in its order."""
    return stamp_properties(Stamps(client_id, address, message_id, received_at))


def outcome(raw: bytes, *, in_c: bool) -> Any:
    """What decode_stream makes of `raw`: every slot of every message, the controls and the bytes used,
    or the error it raises."""
    with pytest.MonkeyPatch.context() as patch:
        if not in_c:
            patch.setattr(mqtt5, "_read_publishes", None)
        try:
            messages, controls, used = mqtt5.decode_stream(raw, RECEIVED)
        except mqtt5.ProtocolError as err:
            return ("error", str(err))
    return [[getattr(m, slot) for slot in SLOTS] for m in messages], controls, used


def read_in_c(raw: bytes, pos: int = 0) -> tuple[list[Message], int]:
    """The C reader alone: the messages it read and where it stopped."""
    messages: list[Message] = []
    stopped = mqtt5._publish.read_publishes(raw, pos, RECEIVED, messages)
    return messages, stopped


def test_the_c_reader_is_built_in_this_install() -> None:
    # `make venv` builds it (setup.py); without it the bridge works, slower, and says so when it starts.
    assert mqtt5.reads_publishes_in_c(), "operator/mqtt_operator/bridge/_publish.c was not built: make venv"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=packets)
def test_paho_packets_decode_the_same_with_the_c_reader_and_without(items: list[Any]) -> None:
    raw = b"".join(wire for wire, _ in items)
    assert outcome(raw, in_c=True) == outcome(raw, in_c=False)


@settings(max_examples=500, deadline=None)
@given(raw=damaged() | st.binary(max_size=64))
@example(raw=publish(b"a/\xff", b"x"))  # a topic that is not UTF-8: a malformed message, from Python
@example(raw=publish(b"", b"x"))  # an empty topic: the same
@example(raw=publish(b"t", b"x", first=0x36))  # both QoS bits: a protocol error
@example(raw=publish(b"t", b"x", stamps(received_at="1700000000000")))
def test_damaged_bytes_decode_or_fail_the_same_with_the_c_reader_and_without(raw: bytes) -> None:
    assert outcome(raw, in_c=True) == outcome(raw, in_c=False)


def test_every_cut_of_a_stream_decodes_the_same_with_the_c_reader_and_without() -> None:
    stream = (
        publish(b"a/b", b"one", stamps())
        + publish(b"a/c", b"", qos=0)
        + b"\x40\x02\x00\x07"  # a PUBACK between them
        + publish(b"a/d", b"x" * 300, stamps(received_at="1700000000123"), qos=2)
    )
    for cut in range(len(stream) + 1):
        assert outcome(stream[:cut], in_c=True) == outcome(stream[:cut], in_c=False), cut


def test_the_c_reader_takes_plain_and_stamped_publishes_and_stops_at_anything_else() -> None:
    plain = publish(b"a/b", b"one", qos=0)
    stamped = publish(b"a/c", b"two", stamps())
    other = publish(b"a/d", b"three", [("mine", "1"), *stamps()])  # the publisher's own property too
    messages, stopped = read_in_c(plain + stamped + other + plain)
    assert stopped == len(plain + stamped)  # the rest is the Python decoder's
    assert [m.topic for m in messages] == ["a/b", "a/c"]
    assert messages[0].stamps is NO_STAMPS and messages[0].props is None
    assert messages[1].stamps.client_id == "dev-1" and messages[1].stamps.time_ms == 1_700_000_000_000
    # From a position, and past the PUBLISH Python read: the run goes on.
    assert read_in_c(plain + stamped + other + plain, len(plain + stamped + other))[1] == len(
        plain + stamped + other + plain
    )
    # Stamps out of the plugin's order, a PUBACK, a packet not complete yet: not taken.
    assert read_in_c(publish(b"t", b"", list(reversed(stamps()))))[1] == 0
    assert read_in_c(b"\x40\x02\x00\x07")[1] == 0
    assert read_in_c(stamped[:-1])[1] == 0


@pytest.mark.parametrize(
    ("received_at", "message_id", "time_ms"),
    [
        (None, UUID7, 1_700_000_000_000),
        (None, "FFFFFFFF-FFFF-7FFF-8000-000000000000", 0xFFFFFFFFFFFF),
        ("1700000000123", UUID7, 1_700_000_000_123),  # receivedAt first
        ("0017", None, 17),
        ("999999999999999", None, 999_999_999_999_999),  # 15 digits, the most
        ("9999999999999999", UUID7, 1_700_000_000_000),  # 16: the message id's time instead
        ("", UUID7, 1_700_000_000_000),
        ("-1", None, None),
        ("1_000", None, None),
        ("²", None, None),  # a digit to isdigit(), not to int()
        ("١٢٣", None, None),  # digits, not ASCII ones
        (None, "-fffffff-ffff-7fff-8000-000000000000", None),  # a sign
        (None, "0fff_fff-ffff-7fff-8000-000000000000", None),
        (None, " fffffff-ffff-7fff-8000-000000000000", None),
        (None, "gfffffff-ffff-7fff-8000-000000000000", None),
        (None, "٠١٢٣٤٥٦٧-ffff-7fff-8000-000000000000", None),
        (None, "ffffffff-ffff-4fff-8000-000000000000", None),  # a UUIDv4
        (None, "ffffffff-ffff-7fff-8000-00000000000", None),  # one short
        (None, "ffffffff-ffff-7fff-8000-00000000000é", 0xFFFFFFFFFFFF),  # 36 characters, 37 bytes
        (None, None, None),
    ],
)
def test_the_receive_time_is_read_the_same_in_c_and_in_python(
    received_at: str | None, message_id: str | None, time_ms: int | None
) -> None:
    raw = publish(b"t", b"p", stamps(message_id=message_id, received_at=received_at))
    in_c, stopped = read_in_c(raw)
    assert stopped == len(raw)
    assert in_c[0].stamps.time_ms == time_ms
    assert outcome(raw, in_c=False) == outcome(raw, in_c=True)
    assert mqtt5.stamp_time_ms(received_at, message_id) == time_ms


def test_the_c_reader_keeps_no_reference_and_leaks_no_memory() -> None:
    raw = b"".join(publish(b"devices/%d/up" % i, b"x" * 100, stamps()) for i in range(10))
    received = float(RECEIVED)  # an object of its own, counted
    before = sys.getrefcount(received), sys.getrefcount(NO_STAMPS)
    messages: list[Message] = []
    mqtt5._publish.read_publishes(raw + publish(b"t", b"", qos=0), 0, received, messages)
    assert sys.getrefcount(received) == before[0] + 11  # one per message
    del messages
    assert sys.getrefcount(received) == before[0]
    assert sys.getrefcount(NO_STAMPS) == before[1]

    def decode_many() -> None:
        for _ in range(2_000):
            mqtt5._publish.read_publishes(raw, 0, received, [])

    decode_many()  # warm
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        decode_many()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    # 20,000 messages went through: one string kept of each would be over a megabyte.
    assert grown < 50_000, grown


def test_the_c_reader_refuses_a_message_or_stamps_shape_it_does_not_know() -> None:
    # A slot added to Message (or a field to Stamps) without _publish.c would be left unset by it.
    heads = (b"a", b"b", b"c", b"d")

    class Wider:
        __slots__ = (*SLOTS, "extra")

    with pytest.raises(TypeError, match=r"__slots__ has 11 entries, _publish.c knows 10"):
        mqtt5._publish.configure(Wider, Stamps, NO_STAMPS, heads)
    wider_stamps = NamedTuple("WiderStamps", [(name, Any) for name in (*Stamps._fields, "extra")])
    with pytest.raises(TypeError, match=r"_fields has 6 entries, _publish.c knows 5"):
        mqtt5._publish.configure(Message, wider_stamps, NO_STAMPS, heads)
    # Refused before anything changed: the reader still reads with what mqtt5 gave it.
    raw = publish(b"t", b"p", stamps())
    assert read_in_c(raw)[0][0].stamps.client_id == "dev-1"
