"""A KafkaConnector worker killed while a car keeps publishing: the cluster restarts it in the same Pod,
its persistent MQTT session (client id from its replica id) resumes with what the broker queued for it,
and every message the broker acknowledged reaches Kafka."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from e2e.helpers import (
    HostDevice,
    example_connector_with_car,
    kafka_keys,
    pod,
    pod_ready,
    restart_count,
)
from testenv.cluster import Namespace, wait_for

WORKER = "vehicle-state-to-kafka-bridge-0"
CONTAINER = "bridge"


def test_a_killed_worker_resumes_its_session_and_loses_nothing(cluster: Any, namespace: Namespace) -> None:
    ns = namespace.namespace
    example_connector_with_car(namespace, "car-5")
    # The example is ordered: one worker, so its session is the only one the messages can go to.
    wait_for(f"Pod {WORKER} Ready", lambda: pod_ready(namespace, WORKER), timeout=90)
    before = pod(namespace, WORKER)
    assert restart_count(before, CONTAINER) == 0

    prefix = f"R{uuid.uuid4().hex[:6]}-"
    sent: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        with cluster.broker(ns, "devices") as (host, port):
            car = HostDevice(host, port, "car-5", namespace.secret("car-5-credentials"), client_id="car-5")
            try:
                assert car.connect() == 0
                i = 0
                while not stop.is_set():
                    plate = f"{prefix}{i}"
                    code = car.publish("vehicles/car-5/state", json.dumps({"plate": plate}).encode())
                    if code < 0x80:
                        sent.append(plate)
                    else:
                        refused.append(code)
                    i += 1
                    stop.wait(0.02)
            finally:
                car.close()

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        wait_for("messages flowing", lambda: len(sent) > 50, timeout=30)
        cluster.kill_container(ns, WORKER, CONTAINER)
        at_kill = len(sent)
        after = wait_for(
            "the worker restarted and Ready again",
            lambda: (
                (found := pod_ready(namespace, WORKER)) and restart_count(found, CONTAINER) >= 1 and found
            ),
            timeout=90,
        )
        at_restart = len(sent)
        wait_for("more messages after the restart", lambda: len(sent) > at_restart + 100, timeout=60)
    finally:
        stop.set()
        publisher.join(30)
    assert not publisher.is_alive()
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # the same Pod: only the container restarted
    worker = next(s for s in after["status"]["containerStatuses"] if s["name"] == CONTAINER)
    assert "terminated" in worker["lastState"]
    # The broker acknowledged messages between the kill and the worker's return: they waited in its session.
    assert at_restart > at_kill
    assert not refused
    expected = set(sent)

    def all_in_kafka() -> bool:
        return not expected - kafka_keys(cluster.kafka_bootstrap(), "vehicle-state", prefix)

    wait_for(f"all {len(expected)} published plates in Kafka", all_in_kafka, timeout=90)
