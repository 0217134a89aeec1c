"""Scale-down without loss: a retiring worker hands its share of the shared subscription back.

Mosquitto routes a share of a `$share` group to a subscriber's offline persistent session too (measured:
with one of two subscribers offline, half of 20 messages queued for it). A replica removed by a
scale-down would leave such a session behind, receiving messages nobody reads until it expires. So the
operator first POSTs /retire: the worker unsubscribes, processes what was queued for it, and ends its
session; only then the StatefulSet shrinks.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_bridge_helpers import (
    WorkerProcess,
    consume,
    create_topic,
    no_drop_broker,
    publish_fast,
    unique,
    wait_for,
    worker_config,
)

from testenv.kafka import Kafka
from testenv.mosquitto import Mosquitto

pytestmark = pytest.mark.integration
UP = "mqtt_to_kafka"


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = no_drop_broker()
    yield b
    b.stop()


def retire(worker: WorkerProcess) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{worker.port}/retire", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a loopback http URL
        return str(response.read().decode().strip())


def session_present(port: int, client_id: str) -> bool:
    """Whether the broker still holds a session for `client_id` (taken over, then left as it was)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    flags: list[bool] = []
    client.on_connect = lambda _c, _u, f, _rc, _p: flags.append(bool(f.session_present))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
    client.loop_start()
    try:
        wait_for("CONNACK", lambda: flags, 10)
    finally:
        client.disconnect()
        client.loop_stop()
    return flags[0]


def test_a_retired_worker_leaves_no_session_and_loses_nothing(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    create_topic(kafka.bootstrap, topic, partitions=2)
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": unique("g"), "kafkaTopic": topic},
    )
    prefix = config["mqtt"]["clientIdPrefix"]
    stays, leaves = WorkerProcess(config, replica_id="bridge-0"), WorkerProcess(config, replica_id="bridge-1")
    try:
        stays.start()
        leaves.start()
        publish_fast(broker.port, ((f"cars/c{i % 7}/state", f"{i}".encode()) for i in range(2000)))
        wait_for(
            "both workers took a share", lambda: leaves.metric("bridge_delivered_total", direction=UP) > 0
        )

        assert retire(leaves) in ("retiring", "retired")
        wait_for("retired", lambda: retire(leaves) == "retired", 60)
        assert leaves.metric("bridge_retired") == 1
        assert leaves.alive()  # it idles until stopped: a new process would join the group again
        # Messages published now all go to the replica that stays.
        before = leaves.metric("bridge_received_total", direction=UP)
        publish_fast(broker.port, ((f"cars/c{i % 7}/state", f"{i}".encode()) for i in range(2000, 4000)))
        assert leaves.terminate() == 0
        publish_fast(broker.port, ((f"cars/c{i % 7}/state", f"{i}".encode()) for i in range(4000, 5000)))

        records = consume(kafka.bootstrap, topic, 5000, timeout=90)
        assert {int(r.value) for r in records} == set(range(5000))
        assert leaves.server is None and before > 0
        assert not session_present(broker.port, f"{prefix}-bridge-1")
        assert session_present(broker.port, f"{prefix}-bridge-0")
    finally:
        stays.stop()
        leaves.stop()
