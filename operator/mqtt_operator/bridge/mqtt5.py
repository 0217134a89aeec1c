"""The MQTT 5 wire format: encoding the packets the bridge sends and decoding the ones it receives.

Pure functions over bytes, no I/O: the connection in `mqtt_client.py` uses them. Only what a
QoS 0/1 client needs is here (no QoS 2 flows, no AUTH exchange, no topic aliases: the worker
announces Topic Alias Maximum 0, so the broker never sends one). The PUBLISH decoder is the hot
path of the uplink and is written for speed: one pass over a buffer holding many packets, the common
PUBLISHes read in C (`_publish.c`), the rest and every error here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from mqtt_operator.bridge.records import (
    NO_STAMPS,
    STAMP_CLIENT_ADDRESS,
    STAMP_CLIENT_ID,
    STAMP_MESSAGE_ID,
    STAMP_RECEIVED_AT,
    Message,
    Properties,
    Stamps,
)

# Packet types (the high nibble of the first byte).
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14
AUTH: Final = 15

# Property identifiers (MQTT 5.0, section 2.2.2.2).
PAYLOAD_FORMAT: Final = 0x01
MESSAGE_EXPIRY: Final = 0x02
CONTENT_TYPE: Final = 0x03
RESPONSE_TOPIC: Final = 0x08
CORRELATION_DATA: Final = 0x09
SUBSCRIPTION_ID: Final = 0x0B
SESSION_EXPIRY: Final = 0x11
ASSIGNED_CLIENT_ID: Final = 0x12
SERVER_KEEP_ALIVE: Final = 0x13
AUTH_METHOD: Final = 0x15
AUTH_DATA: Final = 0x16
REQUEST_PROBLEM_INFO: Final = 0x17
WILL_DELAY: Final = 0x18
REQUEST_RESPONSE_INFO: Final = 0x19
RESPONSE_INFO: Final = 0x1A
SERVER_REFERENCE: Final = 0x1C
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
TOPIC_ALIAS_MAXIMUM: Final = 0x22
TOPIC_ALIAS: Final = 0x23
MAXIMUM_QOS: Final = 0x24
RETAIN_AVAILABLE: Final = 0x25
USER_PROPERTY: Final = 0x26
MAXIMUM_PACKET_SIZE: Final = 0x27
WILDCARD_SUB_AVAILABLE: Final = 0x28
SUB_ID_AVAILABLE: Final = 0x29
SHARED_SUB_AVAILABLE: Final = 0x2A

_BYTE_PROPS = frozenset(
    {
        PAYLOAD_FORMAT,
        REQUEST_PROBLEM_INFO,
        REQUEST_RESPONSE_INFO,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        WILDCARD_SUB_AVAILABLE,
        SUB_ID_AVAILABLE,
        SHARED_SUB_AVAILABLE,
    }
)
_U16_PROPS = frozenset({SERVER_KEEP_ALIVE, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS})
_U32_PROPS = frozenset({MESSAGE_EXPIRY, SESSION_EXPIRY, WILL_DELAY, MAXIMUM_PACKET_SIZE})
_STR_PROPS = frozenset(
    {
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        ASSIGNED_CLIENT_ID,
        AUTH_METHOD,
        RESPONSE_INFO,
        SERVER_REFERENCE,
        REASON_STRING,
    }
)
_BIN_PROPS = frozenset({CORRELATION_DATA, AUTH_DATA})

REASON_NAMES: Final = {
    0x00: "Success",
    0x04: "Disconnect with will message",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed packet",
    0x82: "Protocol error",
    0x83: "Implementation specific error",
    0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid",
    0x86: "Bad user name or password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic filter invalid",
    0x90: "Topic name invalid",
    0x91: "Packet identifier in use",
    0x92: "Packet identifier not found",
    0x93: "Receive maximum exceeded",
    0x94: "Topic alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription identifiers not supported",
    0xA2: "Wildcard subscriptions not supported",
}

_U16 = struct.Struct(">H")
_ACKS = frozenset({PUBACK, PUBREC, PUBREL, PUBCOMP})
_U32 = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent bytes that are not valid MQTT 5."""


def reason_text(code: int) -> str:
    return f"0x{code:02X} {REASON_NAMES.get(code, 'Unknown reason')}"


# --- primitives ---------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); raises IndexError when the buffer ends inside it."""
    value = 0
    shift = 0
    for _ in range(4):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ProtocolError("variable byte integer longer than 4 bytes")


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def _binary(data: bytes) -> bytes:
    return _U16.pack(len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


# --- properties ---------------------------------------------------------------------------


_ATTR = {
    PAYLOAD_FORMAT: "payload_format",
    MESSAGE_EXPIRY: "message_expiry",
    CONTENT_TYPE: "content_type",
    RESPONSE_TOPIC: "response_topic",
    CORRELATION_DATA: "correlation_data",
    SESSION_EXPIRY: "session_expiry",
    ASSIGNED_CLIENT_ID: "assigned_client_id",
    SERVER_KEEP_ALIVE: "server_keep_alive",
    REASON_STRING: "reason_string",
    RECEIVE_MAXIMUM: "receive_maximum",
    TOPIC_ALIAS_MAXIMUM: "topic_alias_maximum",
    TOPIC_ALIAS: "topic_alias",
    MAXIMUM_QOS: "maximum_qos",
    RETAIN_AVAILABLE: "retain_available",
    MAXIMUM_PACKET_SIZE: "maximum_packet_size",
    SHARED_SUB_AVAILABLE: "shared_sub_available",
}


def decode_properties(buf: bytes, pos: int, end: int) -> Properties:
    """Decode the properties between `pos` and `end` (the property length already consumed)."""
    props = Properties()
    try:
        while pos < end:
            ident = buf[pos]
            pos += 1
            value: object
            if ident == USER_PROPERTY:
                klen = (buf[pos] << 8) | buf[pos + 1]
                key = buf[pos + 2 : pos + 2 + klen].decode()
                pos += 2 + klen
                vlen = (buf[pos] << 8) | buf[pos + 1]
                val = buf[pos + 2 : pos + 2 + vlen].decode()
                pos += 2 + vlen
                props.user_properties.append((key, val))
                continue
            if ident == SUBSCRIPTION_ID:
                sub_id, pos = decode_varint(buf, pos)
                props.subscription_ids.append(sub_id)
                continue
            if ident in _BYTE_PROPS:
                value = buf[pos]
                pos += 1
            elif ident in _U16_PROPS:
                value = (buf[pos] << 8) | buf[pos + 1]
                pos += 2
            elif ident in _U32_PROPS:
                value = _U32.unpack_from(buf, pos)[0]
                pos += 4
            elif ident in _STR_PROPS or ident in _BIN_PROPS:
                length = (buf[pos] << 8) | buf[pos + 1]
                raw = bytes(buf[pos + 2 : pos + 2 + length])
                pos += 2 + length
                value = raw.decode() if ident in _STR_PROPS else raw
            else:
                raise ProtocolError(f"unknown property 0x{ident:02X}")
            attr = _ATTR.get(ident)
            if attr is None:
                props.other[ident] = value
            else:
                setattr(props, attr, value)
    except (IndexError, struct.error, UnicodeDecodeError) as err:
        raise ProtocolError(f"malformed properties: {err}") from err
    if pos != end:
        raise ProtocolError("properties overrun their length")
    return props


# --- the broker's stamps -------------------------------------------------------------------------


def _user_property_head(name: str) -> bytes:
    """A user property's identifier and name, as they are on the wire."""
    raw = name.encode()
    return bytes((USER_PROPERTY,)) + _U16.pack(len(raw)) + raw


# The plugin adds its stamps after the publisher's own user properties, in this order
# (broker-plugin/stamp.c).
_HEAD_CLIENT_ID: Final = _user_property_head(STAMP_CLIENT_ID)
_HEAD_CLIENT_ADDRESS: Final = _user_property_head(STAMP_CLIENT_ADDRESS)
_HEAD_MESSAGE_ID: Final = _user_property_head(STAMP_MESSAGE_ID)
_HEAD_RECEIVED_AT: Final = _user_property_head(STAMP_RECEIVED_AT)
# Their lengths as constants: len() on every message was a tenth of this path.
_AFTER_CLIENT_ID: Final = len(_HEAD_CLIENT_ID)
_AFTER_CLIENT_ADDRESS: Final = len(_HEAD_CLIENT_ADDRESS)
_AFTER_MESSAGE_ID: Final = len(_HEAD_MESSAGE_ID)
_AFTER_RECEIVED_AT: Final = len(_HEAD_RECEIVED_AT)
_STAMP_NAMES: Final = frozenset({STAMP_CLIENT_ID, STAMP_CLIENT_ADDRESS, STAMP_MESSAGE_ID, STAMP_RECEIVED_AT})
_EMPTY_PROPERTIES: Final = Properties()
_new_stamps = tuple.__new__


# The common PUBLISHes (a UTF-8 topic; no properties, or the stamps alone in the plugin's order) are read
# in C (`_publish.c`, built with the package): in Python, reading the stamps cost about 1 µs of the
# worker's 5-7 µs per message. `decode_stream` reads the rest and decides every error. Without a compiler
# at install time the package still works, in Python alone (the worker says so when it starts); the image
# and the dev venv always have it (tests/unit/test_bridge_mqtt5_publish.py).
_read_publishes: Callable[[bytes, int, float, list[Message]], int] | None
try:
    from mqtt_operator.bridge import _publish
except ImportError:
    _read_publishes = None
else:
    _publish.configure(
        Message,
        Stamps,
        NO_STAMPS,
        (_HEAD_CLIENT_ID, _HEAD_CLIENT_ADDRESS, _HEAD_MESSAGE_ID, _HEAD_RECEIVED_AT),
    )
    _read_publishes = _publish.read_publishes


def reads_publishes_in_c() -> bool:
    """Whether the C PUBLISH reader was built and is in use."""
    return _read_publishes is not None


def stamp_time_ms(received_at: str | None, message_id: str | None) -> int | None:
    """The broker's receive time in epoch milliseconds: its `receivedAt` stamp, else the time in its
    UUIDv7 message id; None without either (`Stamps.time_ms`)."""
    # ASCII digits of a time before the year 10000 (what Kafka's 64-bit timestamp takes): without the
    # plugin a publisher can send any text under the prefix, and "²".isdigit() although int("²") raises.
    if received_at is not None and received_at.isascii() and received_at.isdigit() and len(received_at) <= 15:
        return int(received_at)
    return uuid7_ms(message_id) if message_id is not None else None


def uuid7_ms(text: str) -> int | None:
    """The receive time the broker wrote into its message id (a UUIDv7's first 48 bits are Unix
    milliseconds), so the time is known without the `receivedAt` stamp (off by default)."""
    if len(text) != 36 or text[14] != "7" or text[8] != "-" or text[13] != "-":
        return None
    digits = text[:8] + text[9:13]
    # Hex digits only: int(..., 16) also takes a sign, "_" and white space ("-fffffff-ffff-7..." was
    # negative), which isalnum() rules out; a letter past f still raises.
    if not (digits.isascii() and digits.isalnum()):
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def _only_stamps(buf: bytes, pos: int, end: int) -> Stamps | None:
    """The stamps when they are all a PUBLISH's properties, in the plugin's order; else None.

    What a device publishes through the plugin usually carries nothing else. The C reader reads these
    packets where it is built; this is the same reading in Python, for the packets it leaves (one whose
    topic is not UTF-8, say) and for an install without it: the names are compared where they lie,
    without a `Properties`, a list or a tuple per property.
    """
    # Written out four times, not looped: a loop with a list of values costs a third more here.
    client_id = address = message_id = received_at = None
    if buf.startswith(_HEAD_CLIENT_ID, pos):
        at = pos + _AFTER_CLIENT_ID
        pos = at + 2 + ((buf[at] << 8) | buf[at + 1])
        client_id = buf[at + 2 : pos].decode()
    if buf.startswith(_HEAD_CLIENT_ADDRESS, pos):
        at = pos + _AFTER_CLIENT_ADDRESS
        pos = at + 2 + ((buf[at] << 8) | buf[at + 1])
        address = buf[at + 2 : pos].decode()
    if buf.startswith(_HEAD_MESSAGE_ID, pos):
        at = pos + _AFTER_MESSAGE_ID
        pos = at + 2 + ((buf[at] << 8) | buf[at + 1])
        message_id = buf[at + 2 : pos].decode()
    if buf.startswith(_HEAD_RECEIVED_AT, pos):
        at = pos + _AFTER_RECEIVED_AT
        pos = at + 2 + ((buf[at] << 8) | buf[at + 1])
        received_at = buf[at + 2 : pos].decode()
    if pos != end:
        return None  # something else is there too (or the lengths run past the properties)
    return _new_stamps(
        Stamps, (client_id, address, message_id, received_at, stamp_time_ms(received_at, message_id))
    )


def split_stamps(props: Properties) -> tuple[Properties | None, Stamps]:
    """The broker's stamps taken out of `props`' user properties, and the rest (None when nothing is
    left); `props` itself is not changed.

    The last value of a name wins (with the plugin there is one: it drops what a publisher sent under
    the prefix); other names under the prefix stay the publisher's user properties.
    """
    users = props.user_properties
    if not any(name in _STAMP_NAMES for name, _ in users):
        return props, NO_STAMPS
    found: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    for name, value in users:
        if name in _STAMP_NAMES:
            found[name] = value
        else:
            kept.append((name, value))
    props = replace(props, user_properties=kept)
    message_id = found.get(STAMP_MESSAGE_ID)
    received_at = found.get(STAMP_RECEIVED_AT)
    stamped = Stamps(
        found.get(STAMP_CLIENT_ID),
        found.get(STAMP_CLIENT_ADDRESS),
        message_id,
        received_at,
        stamp_time_ms(received_at, message_id),
    )
    return (None if props == _EMPTY_PROPERTIES else props), stamped


def publish_properties(buf: bytes, pos: int, end: int) -> tuple[Properties | None, Stamps]:
    """A PUBLISH's properties between `pos` and `end`: the publisher's (None when there are none) and
    the broker's stamps."""
    try:
        stamped = _only_stamps(buf, pos, end)
    except (IndexError, UnicodeDecodeError):
        stamped = None  # the general decoding says what is wrong
    if stamped is not None:
        return None, stamped
    return split_stamps(decode_properties(buf, pos, end))


def encode_properties(props: Properties | None) -> bytes:
    if props is None:
        return b"\x00"
    out = bytearray()
    if props.payload_format is not None:
        out += bytes((PAYLOAD_FORMAT, props.payload_format))
    if props.message_expiry is not None:
        out += bytes((MESSAGE_EXPIRY,)) + _U32.pack(props.message_expiry)
    if props.content_type is not None:
        out += bytes((CONTENT_TYPE,)) + _utf8(props.content_type)
    if props.response_topic is not None:
        out += bytes((RESPONSE_TOPIC,)) + _utf8(props.response_topic)
    if props.correlation_data is not None:
        out += bytes((CORRELATION_DATA,)) + _binary(props.correlation_data)
    if props.session_expiry is not None:
        out += bytes((SESSION_EXPIRY,)) + _U32.pack(props.session_expiry)
    if props.receive_maximum is not None:
        out += bytes((RECEIVE_MAXIMUM,)) + _U16.pack(props.receive_maximum)
    if props.topic_alias_maximum is not None:
        out += bytes((TOPIC_ALIAS_MAXIMUM,)) + _U16.pack(props.topic_alias_maximum)
    if props.maximum_packet_size is not None:
        out += bytes((MAXIMUM_PACKET_SIZE,)) + _U32.pack(props.maximum_packet_size)
    if props.reason_string is not None:
        out += bytes((REASON_STRING,)) + _utf8(props.reason_string)
    for key, val in props.user_properties:
        out += bytes((USER_PROPERTY,)) + _utf8(key) + _utf8(val)
    return encode_varint(len(out)) + bytes(out)


# --- packets the client sends -------------------------------------------------------------


def connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = Properties(session_expiry=session_expiry, receive_maximum=receive_maximum, topic_alias_maximum=0)
    body = _utf8("MQTT") + bytes((5, flags)) + _U16.pack(keepalive) + encode_properties(props)
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _binary(password.encode())
    return _packet(CONNECT << 4, body)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE with (filter, max QoS) pairs; retain handling 0, no-local off (not allowed on shares)."""
    body = _U16.pack(packet_id) + b"\x00"
    for topic_filter, qos in filters:
        body += _utf8(topic_filter) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    """UNSUBSCRIBE; the broker answers UNSUBACK (decoded like a SUBACK: packet id, reason per filter)."""
    body = _U16.pack(packet_id) + b"\x00"
    for topic_filter in filters:
        body += _utf8(topic_filter)
    return _packet((UNSUBSCRIBE << 4) | 0x02, body)


def publish(
    topic: str | bytes,
    payload: bytes,
    *,
    qos: int,
    retain: bool = False,
    packet_id: int = 0,
    dup: bool = False,
    props: Properties | None = None,
) -> bytes:
    raw_topic = topic.encode() if isinstance(topic, str) else topic
    first = (PUBLISH << 4) | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    head = _U16.pack(len(raw_topic)) + raw_topic
    if qos:
        head += _U16.pack(packet_id)
    head += encode_properties(props) if props is not None else b"\x00"
    return bytes((first,)) + encode_varint(len(head) + len(payload)) + head + payload


def pubacks(packet_ids: list[int]) -> bytes:
    """Many success PUBACKs in one buffer, in the given order (one socket write for a whole batch)."""
    return b"".join([b"\x40\x02" + pid.to_bytes(2, "big") for pid in packet_ids])


def pubrel(packet_id: int) -> bytes:
    """PUBREL (success) of an outgoing QoS 2 PUBLISH, after its PUBREC (fixed header flags 0010)."""
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


PINGREQ_PACKET: Final = b"\xc0\x00"


def disconnect(reason: int = 0, session_expiry: int | None = None) -> bytes:
    if reason == 0 and session_expiry is None:
        return b"\xe0\x00"
    props = Properties(session_expiry=session_expiry) if session_expiry is not None else None
    return _packet(DISCONNECT << 4, bytes((reason,)) + encode_properties(props))


# --- packets the client receives ----------------------------------------------------------


@dataclass(slots=True)
class Connack:
    session_present: bool
    reason: int
    props: Properties


@dataclass(slots=True)
class Suback:
    packet_id: int
    reasons: list[int]
    props: Properties


@dataclass(slots=True)
class Ack:
    """PUBACK (and the other acknowledgements that carry a packet id and a reason)."""

    kind: int
    packet_id: int
    reason: int


@dataclass(slots=True)
class Disconnect:
    reason: int
    props: Properties


def _props_at(buf: bytes, pos: int) -> tuple[Properties, int]:
    length, pos = decode_varint(buf, pos)
    return decode_properties(buf, pos, pos + length), pos + length


def decode_connack(body: bytes) -> Connack:
    props, _ = _props_at(body, 2) if len(body) > 2 else (Properties(), 2)
    return Connack(bool(body[0] & 1), body[1], props)


def decode_suback(body: bytes) -> Suback:
    props, pos = _props_at(body, 2)
    return Suback(_U16.unpack_from(body, 0)[0], list(body[pos:]), props)


def decode_ack(kind: int, body: bytes) -> Ack:
    return Ack(kind, _U16.unpack_from(body, 0)[0], body[2] if len(body) > 2 else 0)


def decode_disconnect(body: bytes) -> Disconnect:
    if not body:
        return Disconnect(0, Properties())
    props, _ = _props_at(body, 1) if len(body) > 1 else (Properties(), 1)
    return Disconnect(body[0], props)


Control = Connack | Suback | Ack | Disconnect | int  # an int is a body-less packet type (PINGRESP)


def decode_stream(buf: bytes, received: float) -> tuple[list[Message], list[Control], int]:
    """Split `buf` into whole packets: (PUBLISHes, other packets, bytes consumed).

    The remainder (an incomplete packet) is left for the next call with more bytes. Each run of common
    PUBLISHes goes to the C reader first (`_read_publishes`); the loop below reads what it leaves.
    """
    messages: list[Message] = []
    controls: list[Control] = []
    pos = 0
    n = len(buf)
    append = messages.append
    read_publishes = _read_publishes
    try:
        while pos + 2 <= n:
            if read_publishes is not None:
                pos = read_publishes(buf, pos, received, messages)
                if pos + 2 > n:
                    break
            first = buf[pos]
            # Remaining length: one byte for every packet up to 127 bytes, up to four otherwise.
            length = buf[pos + 1]
            start = pos + 2
            if length >= 0x80:
                if pos + 5 > n and buf[n - 1] >= 0x80:
                    break  # the length itself is not complete yet
                length, start = decode_varint(buf, pos + 1)
            end = start + length
            if end > n:
                break
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 3
                if qos == 3:
                    raise ProtocolError("PUBLISH with both QoS bits set")
                tlen = (buf[start] << 8) | buf[start + 1]
                p = start + 2 + tlen
                # A topic or properties that cannot be read do not end the connection: the broker would
                # send the same PUBLISH again on the resumed session, forever, and nothing behind it
                # would come. As long as the packet's own lengths hold, it becomes a message marked
                # `malformed`, which every mapping rejects (dead letter) and the source acknowledges.
                malformed = None
                try:
                    topic = buf[start + 2 : p].decode()
                except UnicodeDecodeError as err:
                    topic = repr(buf[start + 2 : p])[2:-1]
                    malformed = f"the PUBLISH could not be read: its topic is not UTF-8 ({err.reason})"
                if not tlen:  # a topic alias would stand for it, but the worker allows none
                    malformed = "the PUBLISH could not be read: its topic is empty"
                packet_id = 0
                if qos:
                    packet_id = (buf[p] << 8) | buf[p + 1]
                    p += 2
                plen = buf[p]
                stamped = NO_STAMPS
                if plen == 0:
                    props = None
                    p += 1
                else:
                    if plen < 0x80:
                        p += 1
                    elif buf[p + 1] < 0x80:  # two bytes: the stamps alone take 128 and more
                        plen = (plen & 0x7F) | (buf[p + 1] << 7)
                        p += 2
                    else:
                        plen, p = decode_varint(buf, p)
                    try:
                        props, stamped = publish_properties(buf, p, p + plen)
                    except ProtocolError as err:
                        props = None
                        malformed = malformed or f"the PUBLISH could not be read: {err}"
                    p += plen
                if p > end:
                    raise ProtocolError("PUBLISH header longer than the packet")
                append(
                    Message(
                        topic,
                        buf[p:end],
                        qos,
                        bool(first & 1),
                        bool(first & 8),
                        packet_id,
                        props,
                        received,
                        malformed,
                        stamped,
                    )
                )
            elif kind in _ACKS:
                controls.append(decode_ack(kind, buf[start:end]))
            elif kind == CONNACK:
                controls.append(decode_connack(buf[start:end]))
            elif kind in (SUBACK, UNSUBACK):
                controls.append(decode_suback(buf[start:end]))
            elif kind == DISCONNECT:
                controls.append(decode_disconnect(buf[start:end]))
            elif kind in (PINGRESP, AUTH):
                controls.append(kind)
            else:
                raise ProtocolError(f"unexpected packet type {kind} from the server")
            pos = end
    except (IndexError, struct.error) as err:
        # An index past the end inside a complete packet (or a packet id cut short): the lengths lie.
        raise ProtocolError(f"malformed packet: {err}") from err
    return messages, controls, pos
