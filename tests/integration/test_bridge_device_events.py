"""Device lifecycle events through the real worker, real Mosquitto (its notices on `$SYS/broker/log/N`
through `log_dest topic`) and real Kafka."""

from __future__ import annotations

import json
import socket
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
from testenv.mosquitto import Mosquitto

pytestmark = pytest.mark.integration
EVENTS = "device_events"


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
