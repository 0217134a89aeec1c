"""What flows through every pipeline: the MQTT message taken, the records sinks deliver, Skip and Reject.

Neutral ground for the sources, mappings, sinks and dead letters: none of them needs the MQTT 5 codec
(`mqtt5.py`, which builds `Message` and `Properties` from the wire and is imported only by the MQTT
client, source and sink) or another integration's mapping to name what it handles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NamedTuple


@dataclass(slots=True)
class Properties:
    """The MQTT 5 properties of one packet; absent properties are None / empty."""

    payload_format: int | None = None
    message_expiry: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    subscription_ids: list[int] = field(default_factory=list)
    session_expiry: int | None = None
    assigned_client_id: str | None = None
    server_keep_alive: int | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    maximum_packet_size: int | None = None
    shared_sub_available: int | None = None
    other: dict[int, object] = field(default_factory=dict)


# The broker plugin's stamps: MQTT 5 user properties under the prefix `mqtt-operator/`, which only the
# broker sets.
STAMP_CLIENT_ID: Final = "mqtt-operator/clientId"
STAMP_CLIENT_ADDRESS: Final = "mqtt-operator/clientAddress"
STAMP_MESSAGE_ID: Final = "mqtt-operator/messageId"
STAMP_RECEIVED_AT: Final = "mqtt-operator/receivedAt"


class Stamps(NamedTuple):
    """What the broker's plugin stamped on a message, as it sent it (docs/broker-plugin.md): the
    `mqtt-operator/...` user properties, each None when that stamp is off or the plugin absent.

    They travel apart from the publisher's own user properties (`Message.props`): the MQTT codec takes
    them out, so a mapping reads them without going through the property list, and a message that
    carries nothing but stamps needs no `Properties` at all (the common case on a broker with the plugin).
    """

    client_id: str | None = None
    client_address: str | None = None
    message_id: str | None = None
    received_at: str | None = None  # epoch milliseconds as text (off by default)
    # Not a stamp of its own: the broker's receive time in epoch milliseconds, which the codec reads out
    # of `received_at` or else the UUIDv7 `message_id` (`mqtt5.stamp_time_ms`), once per message.
    time_ms: int | None = None


NO_STAMPS: Final = Stamps()


class Message:
    """One PUBLISH received from the broker."""

    __slots__ = (
        "dup",
        "malformed",
        "packet_id",
        "payload",
        "props",
        "qos",
        "received",
        "retain",
        "stamps",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        props: Properties | None,
        received: float = 0.0,
        malformed: str | None = None,
        stamps: Stamps = NO_STAMPS,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.props = props
        self.received = received
        # Why the PUBLISH could not be read (its topic or properties are not MQTT 5), else None: such a
        # message still has its packet id and place in the stream, and every mapping rejects it.
        self.malformed = malformed
        self.stamps = stamps

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, qos={self.qos}, packet_id={self.packet_id}, {len(self.payload)} B)"


Header = tuple[str, bytes]


class KafkaRecord(NamedTuple):
    """What the Kafka sink produces (the uplink's, the device events' and the dead letters' records)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[Header]
    timestamp_ms: int


class MqttPublish(NamedTuple):
    """What the MQTT sink publishes (the downlinks', the replies' and the MQTT dead letters' records)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: list[tuple[str, str]]
    # Further MQTT 5 properties (content type, correlation data); when given, they are sent as they
    # are and `user_properties` is ignored (put them in `props.user_properties`).
    props: Properties | None = None


class Skip(NamedTuple):
    """A mapping's answer for a message that is counted and acknowledged, not delivered."""

    reason: str


class Reject(NamedTuple):
    """A mapping's answer for a message that goes to the dead letter, with the reason."""

    reason: str
