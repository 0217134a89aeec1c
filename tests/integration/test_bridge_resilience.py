"""At least once through failures: a worker SIGKILLed mid-stream, Kafka stopped for 30 s.

10,000 numbered QoS 1 messages go in; all of them must come out in Kafka, with no more duplicates
than the messages a killed worker can have delivered without acknowledging (its in-flight window,
the Receive Maximum), and Mosquitto must not have dropped a single one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from test_bridge_helpers import (
    SysDropped,
    WorkerProcess,
    consume,
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
COUNT = 10_000
RECEIVE_MAXIMUM = 500


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = no_drop_broker()
    yield b
    b.stop()


def publish_in_background(port: int, count: int, seconds: float) -> threading.Thread:
    """Publish `count` numbered messages spread over about `seconds` (a stream, not one burst)."""
    chunks = 20
    per_chunk = count // chunks

    def run() -> None:
        for c in range(chunks):
            publish_fast(
                port, ((f"cars/c{i % 100}/s", b"%d" % i) for i in range(c * per_chunk, (c + 1) * per_chunk))
            )
            time.sleep(seconds / chunks)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def uplink_config(broker: Mosquitto, bootstrap: str, topic: str) -> dict[str, object]:
    config = worker_config(
        mqtt_port=broker.port,
        bootstrap=bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": "g", "kafkaTopic": topic},
    )
    config["mqtt"]["receiveMaximum"] = RECEIVE_MAXIMUM  # type: ignore[index]
    return config


def test_a_worker_killed_mid_stream_loses_nothing(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    config = uplink_config(broker, kafka.bootstrap, topic)
    dropped = SysDropped(broker.port)
    workers = [WorkerProcess(config, replica_id=f"w{i}").start() for i in range(2)]
    publisher = publish_in_background(broker.port, COUNT, seconds=6)
    try:
        wait_for(
            "the stream flowing",
            lambda: workers[1].metric("bridge_delivered_total", direction=UP) > 1000,
            60,
            0.01,
        )
        workers[1].kill()
        time.sleep(1)
        # The same replica id is the same client id: the session and what waited in it come back.
        workers[1].start()
        publisher.join(60)
        records = consume(kafka.bootstrap, topic, COUNT, timeout=120, settle=2)
        assert dropped.value() == 0
    finally:
        dropped.__exit__()
        for w in workers:
            w.stop()
    seen = Counter(int(r.value) for r in records)
    assert set(seen) == set(range(COUNT)), f"missing: {sorted(set(range(COUNT)) - set(seen))[:20]}"
    duplicates = sum(seen.values()) - COUNT
    assert duplicates <= RECEIVE_MAXIMUM, duplicates


def test_kafka_down_for_30_seconds_loses_nothing(broker: Mosquitto) -> None:
    dropped = SysDropped(broker.port)
    own = Kafka().start()  # this test stops its Kafka: not the shared one
    try:
        topic = unique("cars")
        worker = WorkerProcess(uplink_config(broker, own.bootstrap, topic)).start()
        publisher = publish_in_background(broker.port, COUNT, seconds=20)
        try:
            wait_for(
                "the stream flowing",
                lambda: worker.metric("bridge_delivered_total", direction=UP) > 500,
                60,
                0.01,
            )
            own.stop(keep_data=True)
            time.sleep(30)
            assert worker.metric("bridge_failed_total", direction=UP, kind="transient") > 0
            assert not worker.ready()
            own.start()
            publisher.join(60)
            records = consume(own.bootstrap, topic, COUNT, timeout=180, settle=2)
            assert dropped.value() == 0
        finally:
            worker.stop()
    finally:
        dropped.__exit__()
        own.stop()
    seen = Counter(int(r.value) for r in records)
    assert set(seen) == set(range(COUNT)), f"missing: {sorted(set(range(COUNT)) - set(seen))[:20]}"


def test_reconnects_and_resubscribes_after_a_broker_restart(broker: Mosquitto, kafka: Kafka) -> None:
    topic = unique("cars")
    worker = WorkerProcess(uplink_config(broker, kafka.bootstrap, topic)).start()
    try:
        publish_fast(broker.port, (("cars/c/s", b"%d" % i) for i in range(100)))
        wait_for("before the restart", lambda: worker.metric("bridge_delivered_total", direction=UP) == 100)
        broker.stop(keep=True)
        wait_for("not ready while the broker is away", lambda: not worker.ready(), 30)
        broker.start()  # same port; no persistence: the subscription must be made again
        wait_for("ready again", worker.ready, 60)
        publish_fast(broker.port, (("cars/c/s", b"%d" % i) for i in range(100, 200)))
        records = consume(kafka.bootstrap, topic, 200)
    finally:
        worker.stop()
    assert sorted(int(r.value) for r in records) == list(range(200))
