"""The broker's stamps (docs/broker-plugin.md) through a real broker with the project's plugin, a real
worker and real Kafka: every record carries who published it, from where, a message id and the
broker's receive time; a device cannot forge them; and after a worker SIGKILL mid-stream each
redelivered record has the same `mqtt.messageId` as its first copy, so a consumer deduplicates to
exactly the messages sent."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_bridge_helpers import WorkerProcess, consume, create_topic, unique, wait_for, worker_config

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.api.kinds import KAFKA_CONNECTOR
from mqtt_operator.resources.connector_config import connector_config
from mqtt_operator.resources.worker_config import BrokerTarget
from mqtt_operator.resources.worker_names import WorkerNames
from testenv.kafka import Kafka
from testenv.mosquitto import Mosquitto, stamp_plugin

pytestmark = pytest.mark.integration

UP = "mqtt_to_kafka"
COUNT = 3000
RECEIVE_MAXIMUM = 200
FORGED = [
    ("clientId", "car-99"),  # a claim: not who the device is
    ("mqtt-operator/clientId", "forged"),
    ("MQTT-OPERATOR/messageId", "forged"),  # any letter case is the broker's prefix
    ("mqtt-operator/receivedAt", "1"),
]


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    server = Mosquitto(
        config=(
            f"plugin {stamp_plugin()}\n"
            "plugin_opt_fields clientid,address,messageid,time\n"
            "allow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 0\npersistence false\n"
        )
    ).start()
    yield server
    server.stop()


def publish_stream(port: int, count: int, seconds: float) -> threading.Thread:
    """Device `car-7` publishes `count` numbered QoS 1 messages with forged properties, over `seconds`."""

    def run() -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="car-7", protocol=paho.MQTTv5)
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port, 30)
        client.loop_start()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = FORGED
        infos = []
        for i in range(count):
            infos.append(client.publish("cars/car-7/state", b"%d" % i, qos=1, properties=props))
            if i % 100 == 99:
                time.sleep(seconds / (count / 100))
        for info in infos:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_stamps_are_the_brokers_and_a_redelivered_record_keeps_its_id(
    broker: Mosquitto, kafka: Kafka
) -> None:
    topic = unique("cars")
    create_topic(kafka.bootstrap, topic, 2)
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={
            "topicFilters": ["cars/#"],
            "shareGroup": "g",
            "kafkaTopic": topic,
            "value": "envelope",
            "key": {"source": "clientId"},
        },
    )
    config["mqtt"]["receiveMaximum"] = RECEIVE_MAXIMUM  # type: ignore[index]
    worker = WorkerProcess(config, replica_id="w0").start()
    started_ms = int(time.time() * 1000)
    publisher = publish_stream(broker.port, COUNT, seconds=6)
    try:
        wait_for(
            "the stream flowing",
            lambda: worker.metric("bridge_delivered_total", direction=UP) > 300,
            60,
            0.01,
        )
        worker.kill()  # mid-stream: what it had taken but not acknowledged comes again
        time.sleep(1)
        worker.start()
        publisher.join(60)
        records = consume(kafka.bootstrap, topic, COUNT, timeout=120, settle=2)
    finally:
        worker.stop()
    ended_ms = int(time.time() * 1000)

    by_id: dict[bytes, set[bytes]] = {}
    for rec in records:
        h = rec.headers
        assert h["mqtt.publisherClientId"] == b"car-7"
        assert h["mqtt.clientId"] == b"car-7"
        assert rec.key == b"car-7"
        assert h["mqtt.publisherAddress"] == b"127.0.0.1"
        assert h["mqtt.messageId"] != b"forged"
        envelope = json.loads(rec.value)
        assert set(envelope) == {"clientId", "topic", "payload", "ts"}
        assert envelope["clientId"] == "car-7"
        assert started_ms <= envelope["ts"] <= ended_ms  # the broker's receive time
        assert rec.timestamp == envelope["ts"]
        # The device's own claim travels as a user property header, the broker's stamps do not.
        assert not any(name.lower().startswith("mqtt-operator/") for name, _ in rec.header_list)
        by_id.setdefault(h["mqtt.messageId"], set()).add(rec.value)
    # One id per message, whatever the redeliveries: a consumer deduplicates to exactly what was sent.
    assert len(by_id) == COUNT
    assert all(len(values) == 1 for values in by_id.values())
    numbers = Counter(int(json.loads(v)["payload"]) for values in by_id.values() for v in values)
    assert set(numbers) == set(range(COUNT))
    duplicates = len(records) - COUNT
    assert 0 <= duplicates <= RECEIVE_MAXIMUM, duplicates


def test_a_parent_topic_record_is_exactly_the_seeds_four_keys_with_the_real_client_id(
    broker: Mosquitto, kafka: Kafka
) -> None:
    # The worker's config as the operator writes it for a KafkaConnector that sets nothing but the
    # parent topic routing (every other field at its default).
    parent = unique("vehicles")
    create_topic(kafka.bootstrap, parent)
    spec = KafkaConnectorSpec.model_validate(
        {
            "instanceRef": {"name": "devices"},
            "direction": "mqttToKafka",
            "kafka": {"bootstrapServers": kafka.bootstrap},
            "mqttToKafka": {
                "topicFilters": [f"{parent}/#"],
                "routing": {"byParentTopic": {"allowed": [parent]}},
            },
        }
    )
    names = WorkerNames(KAFKA_CONNECTOR.kind, "iot", "vehicles")
    target = BrokerTarget(host="127.0.0.1", port=broker.port, session_expiry_seconds=600)
    config = connector_config(names, spec, target, None).model_dump(mode="json", by_alias=True)
    config["metricsPort"] = 0
    worker = WorkerProcess(config, replica_id="w0").start()
    try:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="car-77", protocol=paho.MQTTv5)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("clientId", "someone-else")]  # a device's own claim changes nothing
        client.publish(f"{parent}/car-77/state", b'{"speed": 42}', qos=1, properties=props).wait_for_publish(
            10
        )
        client.disconnect()
        client.loop_stop()
        [record] = consume(kafka.bootstrap, parent, 1)
    finally:
        worker.stop()
    value = json.loads(record.value)
    assert set(value) == {"clientId", "topic", "payload", "ts"}
    assert value["clientId"] == "car-77"
    assert (value["topic"], value["payload"]) == (f"{parent}/car-77/state", '{"speed": 42}')
    # The broker's receive time (stamped), the record's timestamp too.
    assert value["ts"] == record.timestamp
