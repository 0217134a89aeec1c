"""examples/kafkaconnector.yaml, applied as it is: a vehicle's state message reaches Kafka, keyed by plate,
with the MQTT metadata in headers; the operator counts it from the workers' metrics."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

from e2e.helpers import MQKC, HostDevice, example_connector_with_car
from testenv.cluster import Namespace, wait_for
from testenv.paths import tool

WORKERS = "vehicle-state-to-kafka-bridge"


def _records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [tool("kcat"), "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (
        [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode == 0
        else []
    )


def test_a_vehicle_state_message_reaches_kafka_keyed_by_plate(cluster: Any, namespace: Namespace) -> None:
    ns = namespace.namespace
    example_connector_with_car(namespace, "car-1")
    # Ready workers are connected to the broker (through its Service name) and to Kafka.
    wait_for(
        "a ready worker",
        lambda: ((namespace.get("statefulset", WORKERS) or {}).get("status") or {}).get("readyReplicas"),
        timeout=90,
    )

    plate = f"E2E-{uuid.uuid4().hex[:6]}"
    with cluster.broker(ns, "devices") as (host, port):
        car = HostDevice(host, port, "car-1", namespace.secret("car-1-credentials"), client_id="car-1")
        try:
            assert car.connect() == 0
            payload = json.dumps({"plate": plate, "speed": 42})
            assert car.publish("vehicles/car-1/state", payload.encode()) < 0x80
        finally:
            car.close()

    record = wait_for(
        f"the record keyed {plate} in Kafka",
        lambda: next(
            (r for r in _records(cluster.kafka_bootstrap(), "vehicle-state") if r.get("key") == plate), None
        ),
        timeout=60,
    )
    raw_headers = record["headers"] or []
    headers = dict(zip(raw_headers[::2], raw_headers[1::2], strict=True))
    assert headers["mqtt.topic"] == "vehicles/car-1/state"
    assert headers["mqtt.qos"] == "1"
    envelope = json.loads(record["payload"])
    assert envelope["topic"] == "vehicles/car-1/state"
    assert json.loads(envelope["payload"]) == {"plate": plate, "speed": 42}
    # The operator read the workers' counters from their Pods' addresses.
    wait_for(
        "the delivered counter in status",
        lambda: (
            ((namespace.get(MQKC, "vehicle-state-to-kafka") or {}).get("status") or {})
            .get("counters", {})
            .get("delivered", 0)
            >= 1
        ),
        timeout=90,
    )
