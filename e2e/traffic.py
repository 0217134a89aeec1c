"""Steady numbered traffic for the fault tests, and the exact count of what reached Kafka.

`NumberedPublisher` publishes `<prefix>-<n>` at QoS 1, n = 0, 1, 2, ..., at a steady rate, and
notes when the broker acknowledged each one. Through a broker restart it reconnects and publishes the
unacknowledged number again (as a device's client does), so every number the broker acknowledged is a
message the system owes the sink. `Tally` compares that with the records in Kafka
(`helpers.kafka_key_counts` with the prefix `<prefix>-`): every number
present, how many arrived twice, and which were lost. `car_through_the_example` sets that traffic up
through examples/kafkaconnector.yaml; `none_lost` is the closing tally of a scenario.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from e2e.helpers import example_connector_with_car, kafka_key_counts
from testenv.cluster import Namespace, wait_for

NO_MATCHING_SUBSCRIBERS = 0x10


class NumberedPublisher(threading.Thread):
    """Publishes `{"plate": "<prefix>-<n>"}` to `topic` at `rate` messages a second until stop()."""

    def __init__(
        self,
        address: Callable[[], tuple[str, int]],
        username: str,
        password: str,
        topic: str,
        rate: float = 200,
    ) -> None:
        super().__init__(daemon=True, name="numbered-publisher")
        self.address = address
        self.username = username
        self.password = password
        self.topic = topic
        self.interval = 1 / rate
        self.prefix = f"run{uuid.uuid4().hex[:8]}"
        # n -> time.monotonic() of the broker's PUBACK.
        self.acked: dict[int, float] = {}
        # Numbers whose PUBACK said "no matching subscribers" (0x10, a success code to MQTT 5): the broker
        # accepted them with nobody to deliver them to, so they are gone.
        self.unrouted: set[int] = set()
        self.reconnects = 0
        self._stop_event = threading.Event()
        self._client: mqtt.Client | None = None
        self._reasons: dict[int, int] = {}  # PUBACK reason code by packet id

    def key(self, n: int) -> str:
        return f"{self.prefix}-{n}"

    def _connect(self) -> mqtt.Client:
        host, port = self.address()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.prefix}-publisher",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.username_pw_set(self.username, self.password)
        connected = threading.Event()
        client.on_connect = lambda _c, _u, _f, rc, _p: rc == 0 and connected.set()
        client.on_publish = lambda _c, _u, mid, rc, _p: self._reasons.__setitem__(mid, rc.value)
        client.connect(host, port, 10)
        client.loop_start()
        if not connected.wait(5):
            client.loop_stop()
            raise OSError("no CONNACK")
        return client

    def _publish(self, n: int) -> None:
        while not self._stop_event.is_set():
            try:
                if self._client is None:
                    self._client = self._connect()
                info = self._client.publish(self.topic, json.dumps({"plate": self.key(n)}).encode(), qos=1)
                info.wait_for_publish(5)
                if info.is_published():
                    self.acked[n] = time.monotonic()
                    if self._reasons.pop(info.mid, 0) == NO_MATCHING_SUBSCRIBERS:
                        self.unrouted.add(n)
                    return
                raise OSError("no PUBACK")
            except (OSError, RuntimeError, ValueError):
                # The broker is gone or restarting: a new connection, the same number again.
                self._drop()
                self.reconnects += 1
                self._stop_event.wait(0.5)

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            self._publish(n)
            n += 1
            next_at = max(next_at + self.interval, time.monotonic() - 1)
            self._stop_event.wait(max(0.0, next_at - time.monotonic()))
        self._drop()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


@dataclass
class Tally:
    """What the broker acknowledged against what reached Kafka."""

    acked: int
    delivered: int  # distinct numbers in Kafka
    duplicates: int  # records beyond the first of each number
    lost: list[int]  # acknowledged numbers not in Kafka

    @classmethod
    def of(cls, publisher: NumberedPublisher, counts: Counter[str]) -> Tally:
        lost = sorted(n for n in publisher.acked if counts[publisher.key(n)] == 0)
        delivered = sum(1 for n in publisher.acked if counts[publisher.key(n)])
        return cls(len(publisher.acked), delivered, sum(counts.values()) - len(counts), lost)

    def line(self, scenario: str) -> str:
        return (
            f"{scenario}: {self.acked} acknowledged by the broker, {self.delivered} in Kafka, "
            f"{len(self.lost)} lost, {self.duplicates} duplicates"
        )


# -- the example connector under numbered traffic, shared by the fault and upgrade tests

CONNECTOR = "vehicle-state-to-kafka"
WORKERS = f"{CONNECTOR}-bridge"
TOPIC = "vehicle-state"  # the example's Kafka topic


def service_ip(ns: Namespace, namespace: str, name: str) -> str:
    found = json.loads(ns.cp.kubectl("get", "service", "-n", namespace, name, "-o", "json").stdout)
    ip: str = found["spec"]["clusterIP"]
    return ip


def ready_workers(ns: Namespace) -> list[str]:
    """The worker Pods once all are ready (one with the example's `ordered: true`)."""

    def ready() -> int:
        sts = ns.get("statefulset", WORKERS) or {}
        wanted = (sts.get("spec") or {}).get("replicas") or 0
        return wanted if wanted and (sts.get("status") or {}).get("readyReplicas") == wanted else 0

    replicas = wait_for("every worker ready", ready, timeout=180)
    return [f"{WORKERS}-{i}" for i in range(replicas)]


def car_through_the_example(namespace: Namespace) -> tuple[list[str], NumberedPublisher]:
    """examples/kafkaconnector.yaml with its car account, the workers ready, and the car publishing numbered
    messages through the broker's Service."""
    example_connector_with_car(namespace, "car-1")
    workers = ready_workers(namespace)
    broker = service_ip(namespace, namespace.namespace, "devices")
    publisher = NumberedPublisher(
        lambda: (broker, 1883), "car-1", namespace.secret("car-1-credentials"), "vehicles/car-1/state"
    )
    publisher.start()
    return workers, publisher


def settled(cluster: Any, publisher: NumberedPublisher, timeout: float = 240) -> Tally:
    """The tally once every acknowledged number is in Kafka, or nothing new arrived for 45 s."""
    deadline, last, quiet_since = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        tally = Tally.of(
            publisher, kafka_key_counts(cluster.kafka_bootstrap(), TOPIC, publisher.prefix + "-")
        )
        if not tally.lost or time.monotonic() > deadline or time.monotonic() - quiet_since > 45:
            return tally
        if tally.delivered != last:
            last, quiet_since = tally.delivered, time.monotonic()
        time.sleep(3)


def none_lost(
    cluster: Any, publisher: NumberedPublisher, scenario: str, detail: str, *, max_duplicates: int
) -> None:
    """Once the publisher stopped: the tally printed, every acknowledged number in Kafka, none of them
    acknowledged as "no matching subscribers", duplicates within `max_duplicates`."""
    tally = settled(cluster, publisher)
    print(f"{tally.line(scenario)}; {detail}")
    assert tally.lost == [], f"lost: {tally.lost[:20]}"
    assert not publisher.unrouted
    assert tally.duplicates <= max_duplicates
