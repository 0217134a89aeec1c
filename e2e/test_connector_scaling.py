"""Scaling a KafkaConnector from 1 to 3 workers and back with `kubectl scale` while a car keeps
publishing: nothing is lost.

Scaling down is the hard part: Mosquitto keeps routing a share of a `$share` group to an offline
persistent session, so the operator has each surplus worker retire (unsubscribe, drain, end its
session) before the StatefulSet shrinks (docs/bridge.md).
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from typing import Any

from e2e.helpers import MQKC, MQU, HostDevice, apply_examples, device_access, wait_ready_instance
from testenv.cluster import Namespace, wait_for
from testenv.paths import tool

WORKERS = "vehicle-state-to-kafka-bridge"


def _plates(bootstrap: str, prefix: str) -> set[str]:
    proc = subprocess.run(
        [
            tool("kcat"),
            "-b",
            bootstrap,
            "-C",
            "-t",
            "vehicle-state",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k\n",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {line for line in proc.stdout.splitlines() if line.startswith(prefix)}


def _workers(ns: Namespace) -> dict[str, Any]:
    return (ns.get("statefulset", WORKERS) or {}).get("status") or {}


def test_scaling_up_and_down_loses_nothing(cluster: Any, namespace: Namespace) -> None:
    ns = namespace.namespace
    apply_examples(namespace, "mqttinstance", "kafkaconnector")
    for manifest in device_access("car-9", publish=("vehicles/car-9/state",)):
        namespace.apply(manifest)
    # Unordered, one worker to begin with.
    namespace.patch(
        MQKC, "vehicle-state-to-kafka", {"spec": {"replicas": 1, "mqttToKafka": {"ordered": False}}}
    )
    wait_ready_instance(namespace)
    namespace.wait_condition(MQU, "car-9", timeout=90)
    namespace.wait_condition(MQKC, "vehicle-state-to-kafka", timeout=120)
    wait_for("one ready worker", lambda: _workers(namespace).get("readyReplicas") == 1, timeout=90)

    prefix = f"S{uuid.uuid4().hex[:6]}-"
    sent: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        with cluster.broker(ns, "devices") as (host, port):
            car = HostDevice(host, port, "car-9", namespace.secret("car-9-credentials"), client_id="car-9")
            try:
                assert car.connect() == 0
                i = 0
                while not stop.is_set():
                    plate = f"{prefix}{i}"
                    code = car.publish("vehicles/car-9/state", json.dumps({"plate": plate}).encode())
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
        # `kubectl scale`, as an HPA or KEDA does it: the scale subresource sets spec.replicas.
        namespace.cp.kubectl("scale", "-n", ns, f"{MQKC}/vehicle-state-to-kafka", "--replicas", "3")
        wait_for("three ready workers", lambda: _workers(namespace).get("readyReplicas") == 3, timeout=120)
        mark = len(sent)
        wait_for("more messages on three workers", lambda: len(sent) > mark + 100, timeout=60)

        namespace.cp.kubectl("scale", "-n", ns, f"{MQKC}/vehicle-state-to-kafka", "--replicas", "1")
        wait_for(
            "back to one worker",
            lambda: (
                _workers(namespace).get("replicas") == 1 and _workers(namespace).get("readyReplicas") == 1
            ),
            timeout=120,
        )
        mark = len(sent)
        wait_for("more messages on one worker", lambda: len(sent) > mark + 100, timeout=60)
    finally:
        stop.set()
        publisher.join(30)
    assert not refused
    expected = set(sent)

    def all_in_kafka() -> bool:
        return not expected - _plates(cluster.kafka_bootstrap(), prefix)

    wait_for(f"all {len(expected)} published plates in Kafka", all_in_kafka, timeout=90)
