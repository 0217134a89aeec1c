"""The broker plugin's client table, connect/disconnect events and admin interface, in a real Mosquitto
with dynamic security, configured by the mosquitto.conf the operator renders (docs/broker-plugin.md).

The admin side is the kubectl plugin's own `Session.command`; devices are paho MQTT 5 / 3.1.1 clients
and raw sockets.
"""

from __future__ import annotations

import json
import queue
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.kubectl.broker import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    CommandFailed,
    Session,
    session,
)
from mqtt_operator.kubectl.cluster import Login
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from mqtt_operator.resources.mosquitto_conf import render_mosquitto_conf
from testenv.cluster import wait_for
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.paths import tool
from testenv.process import free_port

pytestmark = pytest.mark.integration

ADMIN = Login(ADMIN_USERNAME, "admin-secret-pw")
DEVICE_USER, DEVICE_PASSWORD = "fleet", "fleet-pw"
EVENTS = "$SYS/mqtt-operator/client-events"
TIMEOUT = 10.0


def ctrl(broker: Mosquitto, *args: str) -> None:
    subprocess.run(
        [tool("mosquitto_ctrl"), "-h", "127.0.0.1", "-p", str(broker.port), "-u", ADMIN.username, "-P",
         ADMIN.password, "dynsec", *args],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    spec = MqttInstanceSpec.model_validate({"authorization": {"enabled": True}})
    b = from_rendered(
        render_mosquitto_conf(spec), 1883, free_port(), (ADMIN.username, ADMIN.password)
    ).start()
    # One device account with a role that may publish and subscribe anywhere.
    ctrl(b, "createClient", DEVICE_USER, "-p", DEVICE_PASSWORD)
    ctrl(b, "createRole", "device")
    for acl in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern"):
        ctrl(b, "addRoleACL", "device", acl, "#", "allow")
    ctrl(b, "addClientRole", DEVICE_USER, "device")
    yield b
    b.stop()


@pytest.fixture
def admin(broker: Mosquitto) -> Iterator[Session]:
    with session("127.0.0.1", broker.port, ADMIN, f"admin-{time.monotonic_ns()}") as s:
        yield s


class Device:
    """A paho client that records what it receives and how it was disconnected."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        protocol: int = mqtt.MQTTv5,
        keepalive: int = 60,
        clean: bool = True,
        password: str = DEVICE_PASSWORD,
        reconnect: bool = False,
    ) -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.connects: queue.Queue[Any] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  clean_session=None if protocol == mqtt.MQTTv5 else clean)  # fmt: skip
        self.client.username_pw_set(DEVICE_USER, password)
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connects.put(rc)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.put(rc)
        if not reconnect:
            self.client.reconnect_delay_set(1, 1)
        props = None
        kwargs: dict[str, Any] = {}
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if clean else 3600
            kwargs = {"clean_start": clean, "properties": props}
        self.client.connect("127.0.0.1", port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        self.first_connect = self.connects.get(timeout=TIMEOUT)

    @property
    def refused(self) -> bool:
        return bool(getattr(self.first_connect, "is_failure", self.first_connect != 0))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: done.put(codes)
        self.client.subscribe(topic, qos=qos)
        (code,) = done.get(timeout=TIMEOUT)
        assert not getattr(code, "is_failure", False), code

    def unsubscribe(self, topic: str) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.client.on_unsubscribe = lambda *_a: done.put(True)
        self.client.unsubscribe(topic)
        done.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT)

    def next(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        return self.received.get(timeout=timeout)

    def nothing(self, within: float = 1.0) -> bool:
        try:
            self.received.get(timeout=within)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def raw_mqtt311(port: int, client_id: str) -> socket.socket:
    """An MQTT 3.1.1 login over a raw socket (CONNACK read), to drop without DISCONNECT."""

    def utf8(s: str) -> bytes:
        return struct.pack("!H", len(s.encode())) + s.encode()

    body = utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 45) + utf8(client_id)
    body += utf8(DEVICE_USER) + utf8(DEVICE_PASSWORD)
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def listed(admin: Session, **fields: Any) -> dict[str, dict[str, Any]]:
    data = admin.command("listClients", **fields)
    return {c["clientId"]: c for c in data["clients"]}  # type: ignore[union-attr]


def events_of(admin: Session, client_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for msg in admin.messages(timeout=TIMEOUT):
        event = json.loads(msg.payload)
        if event["clientId"] == client_id:
            found.append(event)
            if len(found) == count:
                break
    return found


def test_a_device_is_listed_with_its_connection_and_subscriptions(broker: Mosquitto, admin: Session) -> None:
    before = int(time.time() * 1000)
    car = Device(broker.port, "car-17", keepalive=33)
    old = Device(broker.port, "meter-3", protocol=mqtt.MQTTv311, keepalive=20)
    try:
        car.subscribe("cmd/car-17/#", qos=1)
        car.subscribe("fleet/broadcast", qos=0)
        after = int(time.time() * 1000)
        clients = listed(admin)
        assert {"car-17", "meter-3"} <= set(clients)
        row = clients["car-17"]
        assert row["online"] is True
        assert (row["address"], row["username"]) == ("127.0.0.1", DEVICE_USER)
        assert (row["protocolVersion"], row["keepalive"], row["cleanStart"]) == (5, 33, True)
        assert before <= row["connectedAtMs"] <= after
        assert row["subscriptionCount"] == 2
        assert (clients["meter-3"]["protocolVersion"], clients["meter-3"]["keepalive"]) == (4, 20)

        detail = admin.command("getClient", clientId="car-17")["client"]
        subs = {(s["topicFilter"], s["qos"]) for s in detail["subscriptions"]}  # type: ignore[index]
        assert subs == {("cmd/car-17/#", 1), ("fleet/broadcast", 0)}

        car.unsubscribe("fleet/broadcast")
        detail = admin.command("getClient", clientId="car-17")["client"]
        assert [s["topicFilter"] for s in detail["subscriptions"]] == ["cmd/car-17/#"]  # type: ignore[index]
    finally:
        car.close()
        old.close()
    wait_for("car-17 to go from the online list", lambda: "car-17" not in listed(admin, onlineOnly=True))


def test_a_refused_login_is_neither_listed_nor_an_event(broker: Mosquitto, admin: Session) -> None:
    admin.subscribe(EVENTS)
    intruder = Device(broker.port, "intruder", password="wrong")
    intruder.close()
    assert intruder.refused
    probe = Device(broker.port, "probe-after-intruder")
    probe.close()
    # The probe's connect event comes after where the intruder's would have been.
    kinds = [(e["clientId"], e["event"]) for e in (json.loads(m.payload) for m in admin.messages(timeout=3))]
    assert ("probe-after-intruder", "connect") in kinds
    assert not [k for k in kinds if k[0] == "intruder"]
    assert "intruder" not in listed(admin)


def test_connect_clean_disconnect_and_dropped_socket_are_events_with_ms_and_address(
    broker: Mosquitto, admin: Session
) -> None:
    admin.subscribe(EVENTS)
    before = int(time.time() * 1000)
    clean = Device(broker.port, "lifecycle-clean", keepalive=25)
    clean.close()
    dropped = raw_mqtt311(broker.port, "lifecycle-dropped")
    dropped.close()  # the socket just goes: no DISCONNECT packet
    clean_events = events_of(admin, "lifecycle-clean", 2)
    dropped_events = events_of(admin, "lifecycle-dropped", 2)
    after = int(time.time() * 1000)
    for events, protocol in ((clean_events, 5), (dropped_events, 4)):
        assert [e["event"] for e in events] == ["connect", "disconnect"]
        connect, disconnect = events
        assert connect["address"] == disconnect["address"] == "127.0.0.1"
        assert connect["username"] == disconnect["username"] == DEVICE_USER
        assert connect["protocolVersion"] == protocol
        assert before <= connect["timestampMs"] <= disconnect["timestampMs"] <= after
        assert disconnect["connectedAtMs"] == connect["timestampMs"]
    assert clean_events[0]["keepalive"] == 25


def test_kick_disconnects_the_device_with_administrative_action(broker: Mosquitto, admin: Session) -> None:
    car = Device(broker.port, "car-kick")
    try:
        assert admin.command("kickClient", clientId="car-kick") == {"clientId": "car-kick"}
        reason = car.disconnects.get(timeout=TIMEOUT)
        assert getattr(reason, "value", reason) == 0x98  # MQTT 5: administrative action
        wait_for("the kicked client to go", lambda: "car-kick" not in listed(admin, onlineOnly=True))
        with pytest.raises(CommandFailed, match="client car-kick is not connected"):
            admin.command("kickClient", clientId="car-kick")
    finally:
        car.close()


def test_publish_reaches_subscribers_or_one_client(broker: Mosquitto, admin: Session) -> None:
    a, b = Device(broker.port, "car-pub-a"), Device(broker.port, "car-pub-b")
    try:
        for d in (a, b):
            d.subscribe("cmd/all", qos=2)
        admin.command("publish", topic="cmd/all", payload="unlock", qos=2,
                      userProperties=[{"name": "requestedBy", "value": "oncall"}])  # fmt: skip
        for d in (a, b):
            msg = d.next()
            assert (msg.payload, msg.qos) == (b"unlock", 2)
            assert ("requestedBy", "oncall") in msg.properties.UserProperty
        # Only to one client, and binary through base64.
        admin.command(
            "publish", topic="cmd/all", payload="AAEC/w==", payloadEncoding="base64", clientId="car-pub-b"
        )
        assert b.next().payload == b"\x00\x01\x02\xff"
        assert a.nothing()
        with pytest.raises(CommandFailed, match="mqtt-operator/ are the broker's own"):
            admin.command(
                "publish", topic="cmd/all", userProperties=[{"name": "mqtt-operator/clientId", "value": "x"}]
            )
        with pytest.raises(CommandFailed, match="no \\+ or #"):
            admin.command("publish", topic="cmd/#")
        with pytest.raises(CommandFailed, match="not valid base64"):
            admin.command("publish", topic="cmd/all", payload="abc", payloadEncoding="base64")
    finally:
        a.close()
        b.close()


def test_unsubscribe_stops_deliveries_on_that_filter_only(broker: Mosquitto, admin: Session) -> None:
    car, sender = Device(broker.port, "car-unsub"), Device(broker.port, "sender-unsub")
    try:
        car.subscribe("fleet/news/#")
        car.subscribe("cmd/car-unsub")
        admin.command("unsubscribeClient", clientId="car-unsub", topicFilter="fleet/news/#")
        sender.publish("fleet/news/today", b"dropped for car-unsub")
        sender.publish("cmd/car-unsub", b"still delivered")
        assert car.next().payload == b"still delivered"
        assert car.nothing()
        detail = admin.command("getClient", clientId="car-unsub")["client"]
        assert [s["topicFilter"] for s in detail["subscriptions"]] == ["cmd/car-unsub"]  # type: ignore[index]
        with pytest.raises(CommandFailed, match="has no subscription fleet/news/#"):
            admin.command("unsubscribeClient", clientId="car-unsub", topicFilter="fleet/news/#")
        # Subscribing again undoes it.
        car.subscribe("fleet/news/#")
        sender.publish("fleet/news/today", b"back")
        assert car.next().payload == b"back"
    finally:
        car.close()
        sender.close()


def test_a_persistent_session_keeps_its_subscriptions_across_reconnects(
    broker: Mosquitto, admin: Session
) -> None:
    car = Device(broker.port, "car-persistent", clean=False)
    car.subscribe("cmd/car-persistent")
    car.close()
    offline = wait_for(
        "the session to show offline",
        lambda: listed(admin).get("car-persistent", {}).get("online") is False and listed(admin),
    )
    assert offline["car-persistent"]["disconnectedAtMs"] is not None
    assert "car-persistent" not in listed(admin, onlineOnly=True)
    back = Device(broker.port, "car-persistent", clean=False)
    try:
        detail = admin.command("getClient", clientId="car-persistent")["client"]
        assert [s["topicFilter"] for s in detail["subscriptions"]] == ["cmd/car-persistent"]  # type: ignore[index]
    finally:
        back.close()
    # A clean start ends the session, here and in the broker.
    fresh = Device(broker.port, "car-persistent", clean=True)
    try:
        assert admin.command("getClient", clientId="car-persistent")["client"]["subscriptions"] == []  # type: ignore[index]
    finally:
        fresh.close()


def test_listing_pages_through_many_clients(broker: Mosquitto, admin: Session) -> None:
    socks = [raw_mqtt311(broker.port, f"page-{i:03d}") for i in range(45)]
    try:
        seen: list[str] = []
        offset = 0
        while True:
            data = admin.command("listClients", offset=offset, limit=20, match="page-*")
            assert data["totalCount"] == 45
            page = [c["clientId"] for c in data["clients"]]  # type: ignore[union-attr]
            if not page:
                break
            seen += page
            offset += len(page)
        assert seen == [f"page-{i:03d}" for i in range(45)]
        with pytest.raises(CommandFailed, match="limit must be"):
            admin.command("listClients", limit=0)
    finally:
        for s in socks:
            s.close()


def test_bad_requests_get_an_error_and_others_cannot_use_the_control_topic(
    broker: Mosquitto, admin: Session
) -> None:
    with pytest.raises(CommandFailed, match="unknown command"):
        admin.command("dropEverything")
    with pytest.raises(CommandFailed, match="clientId \\(a string\\) is required"):
        admin.command("getClient")
    device = Device(broker.port, "curious-device")
    try:
        done: queue.Queue[Any] = queue.Queue()
        device.client.on_subscribe = lambda _c, _u, _m, codes, _p: done.put(codes)
        device.client.subscribe(CONTROL_RESPONSE_TOPIC, qos=1)
        (code,) = done.get(timeout=TIMEOUT)
        assert code.is_failure  # refused by the plugin, whatever dynamic security would allow
        acks: queue.Queue[Any] = queue.Queue()
        device.client.on_publish = lambda _c, _u, _m, rc, _p: acks.put(rc)
        device.client.publish(CONTROL_TOPIC, json.dumps({"commands": [{"command": "listClients"}]}), qos=1)
        assert acks.get(timeout=TIMEOUT).is_failure  # PUBACK "not authorized"
        assert device.nothing()
    finally:
        device.close()


def test_connection_info_is_right_after_a_broker_restart(broker: Mosquitto) -> None:
    car = Device(broker.port, "car-restart", reconnect=True)
    try:
        broker.stop(keep=True)
        car.disconnects.get(timeout=TIMEOUT)
        restarted = time.time() * 1000
        broker.start()
        car.connects.get(timeout=30)
        with session("127.0.0.1", broker.port, ADMIN, "admin-after-restart") as admin:
            row = wait_for(
                "car-restart to be back", lambda: listed(admin, onlineOnly=True).get("car-restart")
            )
        assert row["connectedAtMs"] >= restarted
        assert row["address"] == "127.0.0.1"
    finally:
        car.close()
