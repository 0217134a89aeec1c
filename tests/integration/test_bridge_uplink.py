"""MQTT -> Kafka through the real worker process, real Mosquitto and real Kafka.

Every mapping option is checked on the records a Kafka consumer reads back.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from test_bridge_helpers import (
    WorkerProcess,
    consume,
    create_topic,
    no_drop_broker,
    paho_publish,
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


def start_worker(broker: Mosquitto, kafka: Kafka, replica: str = "r0", **up: object) -> WorkerProcess:
    spec = {"topicFilters": ["cars/#"], "shareGroup": unique("g"), **up}
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka=spec,
        dead_letter_topic=unique("dlq"),
    )
    return WorkerProcess(config, replica_id=replica).start()


def test_payload_field_key_envelope_and_headers(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    create_topic(kafka.bootstrap, topic, partitions=4)
    worker = start_worker(
        broker, kafka, kafkaTopic=topic, key={"source": "payloadField", "path": "$.plate"}, value="envelope"
    )
    try:
        plates = ["B-1", "B-2", "M-3"]
        messages = [
            (
                f"cars/car-{i % 3}/state",
                json.dumps({"plate": plates[i % 3], "seq": i}).encode(),
                {
                    "user_properties": [("clientId", f"car-{i % 3}"), ("fw", "1.2")],
                    "content_type": "application/json",
                    "correlation_data": b"c%d" % i,
                },
            )
            for i in range(30)
        ]
        paho_publish(broker.port, messages)
        records = consume(kafka.bootstrap, topic, 30)
    finally:
        worker.stop()
    assert len(records) == 30
    by_plate: dict[bytes, set[int]] = {}
    for rec in records:
        assert rec.key is not None
        by_plate.setdefault(rec.key, set()).add(rec.partition)
        env = json.loads(rec.value)
        body = json.loads(env["payload"])
        assert set(env) == {"clientId", "topic", "payload", "ts"}
        assert rec.key == body["plate"].encode()
        assert env["topic"] == f"cars/car-{body['seq'] % 3}/state"
        assert env["clientId"] == f"car-{body['seq'] % 3}"
        assert abs(env["ts"] - time.time() * 1000) < 120_000
        h = rec.headers
        assert h["mqtt.topic"] == env["topic"].encode()
        assert (h["mqtt.qos"], h["mqtt.retain"], h["mqtt.dup"]) == (b"1", b"false", b"false")
        assert int(h["mqtt.packetId"]) > 0
        assert h["mqtt.clientId"] == env["clientId"].encode()
        assert h["mqtt.contentType"] == b"application/json"
        assert h["mqtt.correlationData"] == b"c%d" % body["seq"]
        assert (h["clientId"], h["fw"]) == (env["clientId"].encode(), b"1.2")
    # One plate, one partition (per-key order); three plates spread over the four partitions.
    assert set(by_plate) == {b"B-1", b"B-2", b"M-3"}
    assert all(len(parts) == 1 for parts in by_plate.values())
    assert len({rec.headers["mqtt.messageId"] for rec in records}) == 30
    # Per-key order holds within the partition.
    for plate in by_plate:
        seqs = [json.loads(json.loads(r.value)["payload"])["seq"] for r in records if r.key == plate]
        assert seqs == sorted(seqs)


def test_parent_topic_routing_topic_key_raw_round_robin(broker: Mosquitto, kafka: Kafka) -> None:
    cars, trucks = unique("cars"), unique("trucks")
    create_topic(kafka.bootstrap, cars, partitions=3)
    worker = start_worker(
        broker,
        kafka,
        topicFilters=[f"{cars}/#", f"{trucks}/#", "bikes/#"],
        parentTopics=[cars, trucks],
        key={"source": "topic"},
        partitioning="roundRobin",
    )
    try:
        messages = [(f"{cars}/c{i}/s", b"\xff\x00raw%d" % i, {}) for i in range(9)]
        messages += [(f"{trucks}/t/s", b"truck", {}), ("bikes/b/s", b"bike", {})]
        paho_publish(broker.port, messages)
        car_records = consume(kafka.bootstrap, cars, 9)
        truck_records = consume(kafka.bootstrap, trucks, 1)
        wait_for(
            "the skipped message counted", lambda: worker.metric("bridge_skipped_total", direction=UP) == 1
        )
        assert worker.metric("bridge_delivered_total", direction=UP) == 10
    finally:
        worker.stop()
    assert sorted(r.value for r in car_records) == sorted(b"\xff\x00raw%d" % i for i in range(9))
    assert {r.key for r in car_records} == {f"{cars}/c{i}/s".encode() for i in range(9)}
    # Round robin: the nine records are spread evenly whatever their keys.
    assert Counter(r.partition for r in car_records) == {0: 3, 1: 3, 2: 3}
    assert [(r.value, r.key) for r in truck_records] == [(b"truck", f"{trucks}/t/s".encode())]


def test_client_id_from_topic_level_no_key_no_headers(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    worker = start_worker(
        broker,
        kafka,
        kafkaTopic=topic,
        key={"source": "none"},
        value="envelope",
        clientIdTopicLevel=1,
        systemHeaders=False,
        userPropertyHeaders=False,
    )
    try:
        paho_publish(
            broker.port,
            [("cars/car-9/state", b"\x89PNG\x00", {"user_properties": [("clientId", "spoofed")]})],
        )
        [rec] = consume(kafka.bootstrap, topic, 1)
    finally:
        worker.stop()
    assert rec.key is None
    assert rec.header_list == []
    env = json.loads(rec.value)
    assert env["clientId"] == "car-9"  # the ACL-protected topic level, not the device's own claim
    assert (env["payloadEncoding"], base64.b64decode(env["payload"])) == ("base64", b"\x89PNG\x00")


def test_oversize_message_goes_to_the_dead_letter_and_one_mib_passes(broker: Mosquitto, kafka: Kafka) -> None:
    topic, dlq = unique("cars"), unique("dlq")
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": "g", "kafkaTopic": topic},
        dead_letter_topic=dlq,
    )
    config["kafka"]["maxRecordBytes"] = 2 * 1024 * 1024
    worker = WorkerProcess(config).start()
    one_mib = bytes(range(256)) * 4096
    oversize = b"z" * (3 * 1024 * 1024)
    try:
        paho_publish(
            broker.port,
            [
                ("cars/big/state", one_mib, {}),
                ("cars/huge/state", oversize, {}),
                ("cars/after/state", b"ok", {}),
            ],
        )
        records = consume(kafka.bootstrap, topic, 2)
        [dead] = consume(kafka.bootstrap, dlq, 1)
        wait_for(
            "dead letter counted", lambda: worker.metric("bridge_dead_lettered_total", direction=UP) == 1
        )
        assert worker.metric("bridge_failed_total", direction=UP, kind="permanent") == 1
        assert worker.metric("bridge_delivered_total", direction=UP) == 2
    finally:
        worker.stop()
    assert [r.value for r in records] == [one_mib, b"ok"]
    assert dead.headers["dlq.reason"].startswith(b"record too large")
    assert dead.headers["dlq.originalTopic"] == b"cars/huge/state"
    assert dead.headers["dlq.truncatedFrom"] == str(len(oversize)).encode()
    assert dead.value == oversize[: len(dead.value)] and 0 < len(dead.value) < 2 * 1024 * 1024


def test_two_workers_share_the_stream_with_distinct_client_ids(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": "g", "kafkaTopic": topic},
    )
    workers = [WorkerProcess(config, replica_id=f"w{i}").start() for i in range(2)]
    try:
        publish_fast(broker.port, ((f"cars/c{i % 50}/s", b"%d" % i) for i in range(4000)))
        records = consume(kafka.bootstrap, topic, 4000)
        shares = [w.metric("bridge_delivered_total", direction=UP) for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert sorted(int(r.value) for r in records) == list(range(4000))
    assert sum(shares) == 4000 and all(share > 0 for share in shares), shares
    log = (broker.root / "mosquitto.log").read_text()
    prefix = config["mqtt"]["clientIdPrefix"]
    assert f"{prefix}-w0" in log and f"{prefix}-w1" in log


def test_sigterm_drains_acks_and_exits_zero(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": "g", "kafkaTopic": topic},
        drainSeconds=10,
    )
    worker = WorkerProcess(config).start()
    publish_fast(broker.port, ((f"cars/c{i % 10}/s", b"%d" % i) for i in range(20000)))
    wait_for("messages flowing", lambda: worker.metric("bridge_delivered_total", direction=UP) > 0, 30, 0.01)
    started = time.monotonic()
    code = worker.terminate()
    took = time.monotonic() - started
    log = worker.log()
    assert code == 0, log[-3000:]
    assert took < 10, (took, log[-3000:])
    assert "bridge worker stopped" in log
    # Whatever was not taken before SIGTERM waited in the session: the restarted replica brings it.
    worker.start()
    try:
        records = consume(kafka.bootstrap, topic, 20000)
    finally:
        worker.stop()
    values = Counter(int(r.value) for r in records)
    assert set(values) == set(range(20000)), sorted(set(range(20000)) - set(values))[:20]
    # A clean drain acknowledged everything it delivered: nothing came twice.
    assert sum(values.values()) == 20000, ([v for v, n in values.items() if n > 1][:20], worker.log()[-3000:])


def test_ordered_mode_keeps_per_key_order(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    create_topic(kafka.bootstrap, topic, partitions=3)
    worker = start_worker(
        broker, kafka, kafkaTopic=topic, key={"source": "clientId"}, clientIdTopicLevel=1, ordered=True
    )
    try:
        publish_fast(broker.port, ((f"cars/car-{i % 20}/s", b"%d" % i) for i in range(5000)))
        records = consume(kafka.bootstrap, topic, 5000)
    finally:
        worker.stop()
    per_key: dict[bytes, list[int]] = {}
    for rec in records:
        assert rec.key is not None
        per_key.setdefault(rec.key, []).append(int(rec.value))
    assert len(per_key) == 20
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), key
        assert len({r.partition for r in records if r.key == key}) == 1
