"""Kafka -> MQTT through the real worker process: header-chosen topics, QoS and retain reach MQTT
subscribers; invalid topics go to the dead letter; offsets are committed only after the PUBACKs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_bridge_helpers import (
    Subscriber,
    WorkerProcess,
    consume,
    no_drop_broker,
    produce,
    unique,
    wait_for,
    worker_config,
)

from testenv.kafka import Kafka
from testenv.mosquitto import Mosquitto

pytestmark = pytest.mark.integration

DOWN = "kafka_to_mqtt"


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = no_drop_broker()
    yield b
    b.stop()


def downlink_worker(
    broker: Mosquitto, kafka: Kafka, commands: str, dlq: str, **spec: object
) -> WorkerProcess:
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        kafka_to_mqtt={
            "kafkaTopic": commands,
            "consumerGroup": unique("grp"),
            "startFrom": "earliest",
            **spec,
        },
        dead_letter_topic=dlq,
    )
    config["kafka"]["maxRecordBytes"] = 2 * 1024 * 1024
    return WorkerProcess(config).start()


def test_headers_choose_topic_qos_retain_and_bad_topics_are_dead_lettered(
    broker: Mosquitto, kafka: Kafka
) -> None:
    commands, dlq = unique("cmd"), unique("dlq")
    sub = Subscriber(broker.port, "cars/#", qos=1)
    one_mib = bytes(range(256)) * 4096
    produce(
        kafka.bootstrap,
        commands,
        [
            (b"car-1", b"unlock", [("mqttTopic", b"cars/1/cmd"), ("qosLevel", b"1"), ("trace", b"t-1")]),
            (b"car-2", b"lock", [("mqttTopic", b"cars/2/cmd"), ("qosLevel", b"0")]),
            (b"car-3", b"fw", [("mqttTopic", b"cars/3/cfg"), ("retain", b"true")]),
            (None, b"nowhere", [("mqttTopic", b"cars/+/cmd")]),
            (None, b"no topic", []),
            (b"car-4", one_mib, [("mqttTopic", b"cars/4/blob")]),
            (b"car-5", b"last", [("mqttTopic", b"cars/5/cmd"), ("qosLevel", b"1"), ("retain", b"false")]),
        ],
    )
    worker = downlink_worker(broker, kafka, commands, dlq)
    try:
        wait_for("five messages at the subscriber", lambda: len(sub.messages) >= 5, 60)
        dead = consume(kafka.bootstrap, dlq, 2)
        wait_for(
            "two dead letters counted",
            lambda: worker.metric("bridge_dead_lettered_total", direction=DOWN) == 2,
        )
        wait_for("five delivered", lambda: worker.metric("bridge_delivered_total", direction=DOWN) == 5)
    finally:
        worker.stop()
        sub.close()
    got = {topic: (payload, qos, retain, props) for topic, payload, qos, retain, props in sub.messages}
    assert got["cars/1/cmd"] == (b"unlock", 1, False, [("trace", "t-1")])
    assert got["cars/2/cmd"][:2] == (b"lock", 0)
    # A live subscriber gets the message with retain cleared; the broker stored it as retained:
    assert got["cars/3/cfg"][:2] == (b"fw", 1)
    late = Subscriber(broker.port, "cars/3/cfg")
    try:
        wait_for("the retained message", lambda: late.messages, 10)
        assert late.messages[0][:4] == ("cars/3/cfg", b"fw", 1, True)
    finally:
        late.close()
    assert got["cars/4/blob"][0] == one_mib
    assert got["cars/5/cmd"][:3] == (b"last", 1, False)
    reasons = sorted(d.headers["dlq.reason"].decode() for d in dead)
    assert "wildcard" in reasons[0] or "wildcard" in reasons[1]
    assert any("no 'mqttTopic' header" in r for r in reasons)
    for d in dead:
        assert d.headers["dlq.source"] == b"kafka"
        assert d.headers["dlq.originalTopic"] == commands.encode()
        assert d.value in (b"nowhere", b"no topic")


def test_offsets_are_committed_only_after_the_broker_confirmed(broker: Mosquitto, kafka: Kafka) -> None:
    """A second worker of the same group started after the first stopped sees nothing again."""
    commands, dlq = unique("cmd"), unique("dlq")
    sub = Subscriber(broker.port, "cars/#", qos=1)
    produce(
        kafka.bootstrap,
        commands,
        [(None, b"%d" % i, [("mqttTopic", b"cars/%d/cmd" % (i % 7))]) for i in range(3000)],
    )
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        kafka_to_mqtt={"kafkaTopic": commands, "consumerGroup": unique("grp"), "startFrom": "earliest"},
        dead_letter_topic=dlq,
    )
    worker = WorkerProcess(config).start()
    try:
        wait_for("3000 messages", lambda: len(sub.messages) >= 3000, 60)
        assert worker.terminate() == 0
        worker.start()
        time.sleep(3)
        assert worker.metric("bridge_received_total", direction=DOWN) == 0
    finally:
        worker.stop()
        sub.close()
    assert sorted(int(p) for _, p, *_ in sub.messages) == list(range(3000))


def test_qos2_records_reach_a_qos2_subscriber_at_qos2_with_the_seeds_headers(
    broker: Mosquitto, kafka: Kafka
) -> None:
    """The cloud service's Java sample sends `mqttTopic`, `qosLevel` and `cleanSession` (its table spells
    the QoS header `qoslevel`): as written, QoS 2 reaches a QoS 2 subscriber at QoS 2 (PUBREC, PUBREL,
    PUBCOMP between worker and broker), and the offset is committed after PUBCOMP."""
    commands, dlq = unique("mq2mqtt"), unique("dlq")
    sub = Subscriber(broker.port, "devices/#", qos=2)
    produce(
        kafka.bootstrap,
        commands,
        [
            (
                None,
                b"exactly",
                [("mqttTopic", b"devices/1/cmd"), ("qosLevel", b"2"), ("cleanSession", b"false")],
            ),
            (
                None,
                b"lower",
                [("mqttTopic", b"devices/2/cmd"), ("qoslevel", b"2"), ("cleanSession", b"true")],
            ),
            (None, b"once", [("mqttTopic", b"devices/3/cmd"), ("qosLevel", b"1")]),
        ],
    )
    worker = downlink_worker(broker, kafka, commands, dlq)
    try:
        wait_for("three messages at the subscriber", lambda: len(sub.messages) >= 3, 60)
        wait_for("three delivered", lambda: worker.metric("bridge_delivered_total", direction=DOWN) == 3)
        assert worker.metric("bridge_dead_lettered_total", direction=DOWN) == 0
    finally:
        worker.stop()
        sub.close()
    got = {topic: (payload, qos) for topic, payload, qos, _, _ in sub.messages}
    assert got == {
        "devices/1/cmd": (b"exactly", 2),
        "devices/2/cmd": (b"lower", 2),
        "devices/3/cmd": (b"once", 1),
    }
    assert len(sub.messages) == 3  # exactly once to the device
