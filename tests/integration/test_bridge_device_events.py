"""Device lifecycle events through the real worker, real Mosquitto (its notices on `$SYS/broker/log/N`
through `log_dest topic`) and real Kafka."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from test_bridge_helpers import (
    NO_DROP_CONF,
    WorkerProcess,
    consume,
    create_topic,
    unique,
    wait_for,
    worker_config,
)

from testenv.device import Device
from testenv.kafka import Kafka
from testenv.mosquitto import Mosquitto, stamp_plugin

pytestmark = pytest.mark.integration
EVENTS = "device_events"
PLUGIN_EVENTS = "$SYS/mqtt-operator/client-events"


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    # What the operator's mosquitto.conf says about logs (templates/mosquitto.conf.j2).
    b = Mosquitto(
        config=NO_DROP_CONF
        + "log_dest topic\nlog_type notice\nconnection_messages true\n"
        + "log_timestamp true\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n"
    ).start()
    yield b
    b.stop()


def mqtt311_connect_then_drop(port: int, client_id: str) -> None:
    """A device whose socket closes without DISCONNECT (power loss)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        assert sock.recv(4)[:2] == b"\x20\x02"  # CONNACK


def test_connects_and_disconnects_become_records_keyed_by_client_id(broker: Mosquitto, kafka: Kafka) -> None:
    connects, disconnects = unique("mqtt-device-connect"), unique("mqtt-device-disconnect")
    for topic in (connects, disconnects):
        create_topic(kafka.bootstrap, topic)
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": unique("g"), "kafkaTopic": unique("cars")},
        deviceEvents={"connectTopic": connects, "disconnectTopic": disconnects},
    )
    first, second = WorkerProcess(config, replica_id="bridge-0"), WorkerProcess(config, replica_id="bridge-1")
    try:
        first.start()
        second.start()
        car = Device(broker.port, None, None, client_id="car-42")
        assert car.connect() == 0
        car.close()
        mqtt311_connect_then_drop(broker.port, "pile-7")

        wait_for("4 events mapped", lambda: first.metric("bridge_delivered_total", direction=EVENTS) >= 4)
        came = consume(kafka.bootstrap, connects, 2, settle=1.0)
        gone = consume(kafka.bootstrap, disconnects, 2, settle=1.0)
        # The workers' own connections are events too: look at the two devices only.
        by_client = {
            json.loads(r.value)["clientid"]: r for r in came + gone if r.key in (b"car-42", b"pile-7")
        }
        assert set(by_client) == {"car-42", "pile-7"}
        connect_car = next(json.loads(r.value) for r in came if r.key == b"car-42")
        assert connect_car["event"] == "connect" and connect_car["protocol"] == 5
        assert connect_car["address"].startswith("127.0.0.1:") and connect_car["ts"] > 0
        reasons = {r.key: json.loads(r.value)["reason"] for r in gone if r.key in (b"car-42", b"pile-7")}
        assert reasons == {b"car-42": "disconnected", b"pile-7": "connection_closed"}
        assert all(r.headers["mqtt.event"] in (b"connect", b"disconnect") for r in came + gone)
        # Only ordinal 0 reads the notices: each event is written once.
        assert second.metric("bridge_received_total", direction=EVENTS) == 0
        assert len([r for r in came if r.key == b"car-42"]) == 1
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def plugin_broker() -> Iterator[Mosquitto]:
    # The operator's setup: the broker plugin's client table and events, then the log on a topic.
    b = Mosquitto(
        config=f"plugin {stamp_plugin()}\nplugin_opt_clients on\nplugin_opt_access allow\n"
        + NO_DROP_CONF
        + "log_dest topic\nlog_type notice\nconnection_messages true\n"
        + "log_timestamp true\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n"
    ).start()
    yield b
    b.stop()


def test_with_the_plugins_events_records_have_ms_times_and_the_logs_port_and_reason(
    plugin_broker: Mosquitto, kafka: Kafka
) -> None:
    broker = plugin_broker
    connects, disconnects = unique("mqtt-device-connect"), unique("mqtt-device-disconnect")
    for topic in (connects, disconnects):
        create_topic(kafka.bootstrap, topic)
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": unique("g"), "kafkaTopic": unique("cars")},
        deviceEvents={"connectTopic": connects, "disconnectTopic": disconnects, "pluginTopic": PLUGIN_EVENTS},
    )
    worker = WorkerProcess(config, replica_id="bridge-0")
    try:
        worker.start()
        before = int(time.time() * 1000)
        car = Device(broker.port, "car-user", None, client_id="car-42")
        assert car.connect() == 0
        car.close()
        mqtt311_connect_then_drop(broker.port, "pile-7")
        wait_for("4 events mapped", lambda: worker.metric("bridge_delivered_total", direction=EVENTS) >= 4)
        came = [
            r for r in consume(kafka.bootstrap, connects, 2, settle=1.0) if r.key in (b"car-42", b"pile-7")
        ]
        gone = [
            r for r in consume(kafka.bootstrap, disconnects, 2, settle=1.0) if r.key in (b"car-42", b"pile-7")
        ]
        after = int(time.time() * 1000)
    finally:
        worker.stop()
    # One record per connect and per disconnect, each at the broker's millisecond.
    assert sorted(r.key for r in came) == sorted(r.key for r in gone) == [b"car-42", b"pile-7"]
    for record in came + gone:
        body = json.loads(record.value)
        assert before <= body["ts"] == record.timestamp <= after
    car_came = next(json.loads(r.value) for r in came if r.key == b"car-42")
    assert car_came["address"].startswith("127.0.0.1:")  # the port from the broker's log line
    assert (car_came["username"], car_came["protocol"], car_came["cleanStart"]) == ("car-user", 5, True)
    reasons = {r.key: json.loads(r.value)["reason"] for r in gone}
    assert reasons == {b"car-42": "disconnected", b"pile-7": "connection_closed"}
