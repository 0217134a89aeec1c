"""Our broker plugin (broker-plugin/mqtt_operator_stamp.c) in a real Mosquitto: stamps and client events.

The plugin is built by hack/testenv/build-broker-plugin.sh against the host's Mosquitto headers and loaded
the way the operator's mosquitto.conf loads it; clients are paho-mqtt MQTT 5 clients and raw sockets.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.mosquitto_conf import render_mosquitto_conf
from testenv.mosquitto import Mosquitto, from_rendered, stamp_plugin
from testenv.process import StartError, free_port

pytestmark = pytest.mark.integration

PREFIX = "mqtt-operator/"
CLIENT_ID = PREFIX + "clientId"
ADDRESS = PREFIX + "clientAddress"
MESSAGE_ID = PREFIX + "messageId"
RECEIVED_AT = PREFIX + "receivedAt"
EVENTS = "$SYS/mqtt-operator/client-events"
TIMEOUT = 10.0


def broker_with(options: str = "") -> Mosquitto:
    return Mosquitto(config=f"allow_anonymous true\nplugin {stamp_plugin()}\n{options}").start()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = broker_with("plugin_opt_fields clientid,address,messageid,time\n")
    yield b
    b.stop()


class Client:
    """An MQTT 5 paho client that records what it receives."""

    def __init__(self, port: int, client_id: str, username: str | None = None) -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, "pw")
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        connected: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: connected.put(rc)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert not connected.get(timeout=TIMEOUT).is_failure

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: done.put(codes)
        self.client.subscribe(topic, qos=1)
        (code,) = done.get(timeout=TIMEOUT)
        assert not code.is_failure

    def publish(self, topic: str, payload: bytes, user: list[tuple[str, str]] | None = None) -> None:
        props = None
        if user:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = user
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(TIMEOUT)

    def next(self) -> mqtt.MQTTMessage:
        return self.received.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def relay(port: int, user: list[tuple[str, str]] | None = None, client_id: str = "dev") -> mqtt.MQTTMessage:
    """One message published by `client_id` on topic t, as a subscriber receives it."""
    sub = Client(port, "watcher")
    sub.subscribe("t")
    pub = Client(port, client_id)
    try:
        pub.publish("t", b"x", user=user)
        return sub.next()
    finally:
        pub.close()
        sub.close()


def user_properties(msg: mqtt.MQTTMessage) -> list[tuple[str, str]]:
    return list(getattr(msg.properties, "UserProperty", []) or [])


def stamps(msg: mqtt.MQTTMessage) -> dict[str, str]:
    """The mqtt-operator/* properties, each seen exactly once."""
    found = [(k, v) for k, v in user_properties(msg) if k.lower().startswith(PREFIX)]
    names = [k for k, _ in found]
    assert len(names) == len(set(names)), f"a stamp appears twice: {found}"
    return dict(found)


def test_every_message_is_stamped_with_publisher_address_unique_ordered_id_and_time(
    broker: Mosquitto,
) -> None:
    sub = Client(broker.port, "watcher")
    sub.subscribe("sensors/#")
    pub = Client(broker.port, "device-7")
    try:
        before = int(time.time() * 1000)
        for n in range(50):
            pub.publish("sensors/t", str(n).encode())
        after = int(time.time() * 1000)
        messages = [sub.next() for _ in range(50)]
    finally:
        pub.close()
        sub.close()
    assert [m.payload for m in messages] == [str(n).encode() for n in range(50)]
    ids = []
    for msg in messages:
        got = stamps(msg)
        assert set(got) == {CLIENT_ID, ADDRESS, MESSAGE_ID, RECEIVED_AT}
        assert got[CLIENT_ID] == "device-7"
        # Mosquitto 2.0's plugin API gives the IP only (no port).
        assert got[ADDRESS] == "127.0.0.1"
        received = int(got[RECEIVED_AT])
        assert before <= received <= after
        ident = uuid.UUID(got[MESSAGE_ID])
        assert ident.version == 7 and ident.variant == uuid.RFC_4122
        assert got[MESSAGE_ID] == str(ident)  # the canonical text: 36 characters, lowercase, dashed
        # The first 48 bits are the receive millisecond (the counter can only push it later).
        assert received <= ident.int >> 80 <= after + 1
        ids.append(got[MESSAGE_ID])
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids are not in receive order"


def test_ids_stay_unique_and_ordered_across_a_broker_restart() -> None:
    ids: list[str] = []
    for _ in range(2):
        b = broker_with()
        try:
            sub = Client(b.port, "watcher")
            sub.subscribe("a")
            pub = Client(b.port, "device")
            for _ in range(20):
                pub.publish("a", b"x")
            ids += [stamps(sub.next())[MESSAGE_ID] for _ in range(20)]
            pub.close()
            sub.close()
        finally:
            b.stop()
    assert len(set(ids)) == 40
    assert ids == sorted(ids)


def test_a_publisher_cannot_forge_or_change_the_stamps(broker: Mosquitto) -> None:
    sub = Client(broker.port, "watcher")
    sub.subscribe("x/#")
    pub = Client(broker.port, "honest-id")
    forged = [
        ("clientId", "plain-is-kept"),
        (CLIENT_ID, "forged"),
        ("MQTT-Operator/clientAddress", "10.0.0.1"),
        (MESSAGE_ID, "00000000-0000-7000-8000-000000000000"),
        (RECEIVED_AT, "1"),
        (PREFIX + "anything", "dropped"),
        ("note", "kept"),
    ]
    try:
        pub.publish("x/1", b"p", user=forged)
        msg = sub.next()
    finally:
        pub.close()
        sub.close()
    got = stamps(msg)
    assert got[CLIENT_ID] == "honest-id"
    assert got[ADDRESS] == "127.0.0.1"
    assert got[MESSAGE_ID] != "00000000-0000-7000-8000-000000000000"
    assert int(got[RECEIVED_AT]) > 1
    assert set(got) == {CLIENT_ID, ADDRESS, MESSAGE_ID, RECEIVED_AT}
    # The publisher's own properties stay, in their order, before the stamps.
    others = [(k, v) for k, v in user_properties(msg) if not k.lower().startswith(PREFIX)]
    assert others == [("clientId", "plain-is-kept"), ("note", "kept")]


@pytest.mark.parametrize(
    "sent",
    [
        [(CLIENT_ID, "forged"), ("a", "1"), (RECEIVED_AT, "1"), ("b", "2")],
        [(CLIENT_ID, "forged"), (MESSAGE_ID, "forged"), ("a", "1"), ("b", "2")],
        [("a", "1"), ("b", "2"), (CLIENT_ID, "forged")],
        [(CLIENT_ID, "forged"), (ADDRESS, "forged")],
    ],
)
def test_forged_properties_go_wherever_they_stand(broker: Mosquitto, sent: list[tuple[str, str]]) -> None:
    # A forged first property is the case where Mosquitto's versions differ (from 2.0.15 the broker frees
    # the list it passed to the plugin when the plugin leaves another head).
    msg = relay(broker.port, user=sent, client_id="real")
    assert stamps(msg)[CLIENT_ID] == "real"
    assert "forged" not in stamps(msg).values()
    assert [(k, v) for k, v in user_properties(msg) if not k.startswith(PREFIX)] == [
        (k, v) for k, v in sent if not k.startswith(PREFIX)
    ]
    assert [k for k, _ in user_properties(msg)][-4:] == [CLIENT_ID, ADDRESS, MESSAGE_ID, RECEIVED_AT]


def test_other_publish_properties_survive_the_rebuild(broker: Mosquitto) -> None:
    sub = Client(broker.port, "watcher")
    sub.subscribe("rpc/#")
    pub = Client(broker.port, "caller")
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = "rpc/reply"
    props.CorrelationData = b"\x00\x01corr"
    props.PayloadFormatIndicator = 1
    props.UserProperty = [(CLIENT_ID, "forged"), ("k", "v")]
    try:
        pub.client.publish("rpc/call", b"{}", qos=1, properties=props).wait_for_publish(TIMEOUT)
        msg = sub.next()
    finally:
        pub.close()
        sub.close()
    assert msg.properties.ContentType == "application/json"
    assert msg.properties.ResponseTopic == "rpc/reply"
    assert msg.properties.CorrelationData == b"\x00\x01corr"
    assert msg.properties.PayloadFormatIndicator == 1
    assert stamps(msg)[CLIENT_ID] == "caller"
    assert ("k", "v") in user_properties(msg)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("clientid", {CLIENT_ID}),
        ("address,time", {ADDRESS, RECEIVED_AT}),
        ("messageid", {MESSAGE_ID}),
        ("none", set()),
    ],
)
def test_plugin_options_choose_the_stamps(fields: str, expected: set[str]) -> None:
    b = broker_with(f"plugin_opt_fields {fields}\n")
    try:
        # Forged stamps are removed even for fields that are off.
        msg = relay(b.port, user=[(CLIENT_ID, "forged"), (ADDRESS, "forged")])
    finally:
        b.stop()
    assert set(stamps(msg)) == expected
    assert "forged" not in stamps(msg).values()


def test_default_fields_leave_out_the_receive_time() -> None:
    b = broker_with()
    try:
        msg = relay(b.port)
    finally:
        b.stop()
    assert set(stamps(msg)) == {CLIENT_ID, ADDRESS, MESSAGE_ID}


def test_mqtt311_publishers_are_stamped_too(broker: Mosquitto) -> None:
    sub = Client(broker.port, "watcher")
    sub.subscribe("old/#")
    old = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="legacy", protocol=mqtt.MQTTv311)
    old.connect("127.0.0.1", broker.port)
    old.loop_start()
    try:
        old.publish("old/1", b"x", qos=1).wait_for_publish(TIMEOUT)
        msg = sub.next()
    finally:
        old.disconnect()
        old.loop_stop()
        sub.close()
    assert stamps(msg)[CLIENT_ID] == "legacy"


def mqtt311_connect(port: int, client_id: str, username: str | None = None) -> socket.socket:
    """A raw MQTT 3.1.1 connection (CONNECT, CONNACK read), to drop without a DISCONNECT."""

    def utf8(s: str) -> bytes:
        return struct.pack("!H", len(s.encode())) + s.encode()

    flags = 0x02 | (0xC0 if username is not None else 0)
    body = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + utf8(client_id)
    if username is not None:
        body += utf8(username) + utf8("pw")
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def test_disconnects_are_published_as_json_events(broker: Mosquitto) -> None:
    watcher = Client(broker.port, "watcher")
    watcher.subscribe(EVENTS)
    try:
        before = int(time.time() * 1000)
        clean = Client(broker.port, "clean-device", username="alice")
        clean.close()
        dropped = mqtt311_connect(broker.port, "dropped-device", username="bob")
        dropped.close()  # no DISCONNECT packet: the socket just goes
        events = [json.loads(watcher.next().payload) for _ in range(2)]
        after = int(time.time() * 1000)
    finally:
        watcher.close()
    by_client = {e["clientId"]: e for e in events}
    assert set(by_client) == {"clean-device", "dropped-device"}
    for client, user in (("clean-device", "alice"), ("dropped-device", "bob")):
        event = by_client[client]
        assert event["event"] == "disconnect"
        assert event["address"] == "127.0.0.1"
        assert event["username"] == user
        assert before <= event["timestampMs"] <= after
        # Mosquitto 2.0 gives no reason to the plugin: it stays in the broker's log.
        assert event["reason"] is None
    # Why each went is in the broker's log only (docs/broker-plugin.md).
    log = (broker.root / "mosquitto.log").read_text(errors="replace")
    assert "Client clean-device disconnected." in log
    assert "Client dropped-device closed its connection." in log


def test_events_can_be_turned_off_or_moved() -> None:
    b = broker_with("plugin_opt_events_topic devices/lifecycle\n")
    try:
        watcher = Client(b.port, "watcher")
        watcher.subscribe("devices/lifecycle")
        watcher.subscribe(EVENTS)
        mqtt311_connect(b.port, "gone").close()
        event = watcher.next()
        assert event.topic == "devices/lifecycle"
        assert json.loads(event.payload)["clientId"] == "gone"
        watcher.close()
    finally:
        b.stop()
    b = broker_with("plugin_opt_events off\n")
    try:
        watcher = Client(b.port, "watcher")
        watcher.subscribe(EVENTS)
        mqtt311_connect(b.port, "gone").close()
        with pytest.raises(queue.Empty):
            watcher.received.get(timeout=1.5)
        watcher.close()
    finally:
        b.stop()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("plugin_opt_fields clientid,bogus", "unknown field 'bogus'"),
        ("plugin_opt_share_wait 1m", "plugin_opt_share_wait takes whole seconds from 0 to 86400, not '1m'"),
        ("plugin_opt_share_wait 86401", "plugin_opt_share_wait takes whole seconds"),
        (
            "plugin_opt_share_state shares.json",
            "plugin_opt_share_state takes an absolute path, not 'shares.json'",
        ),
        ("plugin_opt_dynsec_batch_saves yes", "plugin_opt_dynsec_batch_saves takes on or off, not 'yes'"),
    ],
)
def test_a_bad_option_stops_the_broker_from_starting(option: str, message: str) -> None:
    b = Mosquitto(config=f"allow_anonymous true\nplugin {stamp_plugin()}\n{option}\n")
    with pytest.raises(StartError, match=re.escape(message)):
        b.start()
    b.stop()


def test_the_operators_conf_loads_the_plugin_with_the_specs_options() -> None:
    spec = MqttInstanceSpec.model_validate(
        {
            "authorization": {"enabled": False},
            "persistence": {"enabled": False},
            "messageStamps": {"clientAddress": False, "receivedAt": True},
        }
    )
    conf = render_mosquitto_conf(spec)
    broker = from_rendered(conf, 1883, free_port(), admin=None).start()
    try:
        msg = relay(broker.port, user=[(ADDRESS, "forged")])
    finally:
        broker.stop()
    assert set(stamps(msg)) == {CLIENT_ID, MESSAGE_ID, RECEIVED_AT}
