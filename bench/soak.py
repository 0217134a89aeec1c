"""The soak (`make soak`): one KafkaConnector at a steady 2,000 msg/s for 30 minutes on the real node.

The node of `make dev` (localnode/) with the operator installed by its chart and Kafka; the broker and the
connector of examples/mqttinstance.yaml and examples/kafkaconnector.yaml; one car publishing numbered
QoS 1 messages (`{"plate": "<prefix>-<n>"}`) at the rate, pipelined as a device's client does. Every
30 s the resident memory of the operator, the worker and the broker (each container's processes, VmRSS
summed) is sampled. At the end every acknowledged number is looked for in Kafka.

Figures (bench/results.json): the rate achieved, lost and duplicate counts, and for each component its
RSS after the warm-up and at the end, and the growth between them. Exits 1 when a message was lost or a
component's RSS grew by more than FLAT_GROWTH after the warm-up (with the samples printed).

    python bench/soak.py [--minutes 30] [--rate 2000]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e.helpers import example_connector_with_car, kafka_key_counts

from bench.common import record
from localnode import system
from localnode.node import Node, leftovers
from testenv.cluster import Namespace, restricted_namespace, wait_for

NAMESPACE = "soak"
CAR = "car-1"
TOPIC = "vehicle-state"  # examples/kafkaconnector.yaml's Kafka topic
WORKER_POD = "vehicle-state-to-kafka-bridge-0"
SAMPLE_EVERY_S = 30
WARMUP_S = 300
# "Flat": what a component's RSS may grow from the end of the warm-up to the end of the run (the median
# of the first and of the last five samples, so one garbage collection does not decide it).
FLAT_GROWTH = 0.10
FLAT_SLACK_MIB = 4.0
# Unacknowledged publishes the car keeps in flight (a device's client pipelines; one at a time would
# cap the rate at the round trip).
IN_FLIGHT = 200


class RatePublisher(threading.Thread):
    """Numbered QoS 1 messages at `rate` a second, pipelined; notes which the broker acknowledged."""

    def __init__(self, host: str, username: str, password: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True, name="soak-publisher")
        self.topic = topic
        self.rate = rate
        self.prefix = f"soak{uuid.uuid4().hex[:8]}"
        self.sent = 0
        self.acked: set[int] = set()
        self.disconnects = 0
        self._pending: collections.deque[tuple[int, mqtt.MQTTMessageInfo]] = collections.deque()
        self._stopping = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{self.prefix}-car", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(IN_FLIGHT)
        self.client.on_disconnect = lambda *_: self._disconnected()
        self.client.connect(host, 1883, 30)
        self.client.loop_start()

    def _disconnected(self) -> None:
        if not self._stopping.is_set():  # not the publisher's own disconnect at the end
            self.disconnects += 1

    def _reap(self) -> None:
        while self._pending and self._pending[0][1].is_published():
            self.acked.add(self._pending.popleft()[0])

    def run(self) -> None:
        started = time.monotonic()
        while not self._stopping.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                payload = json.dumps({"plate": f"{self.prefix}-{self.sent}"}).encode()
                self._pending.append((self.sent, self.client.publish(self.topic, payload, qos=1)))
                self.sent += 1
            self._reap()
            time.sleep(0.005)

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        deadline = time.monotonic() + 60
        while self._pending and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()


def container_rss_mib(node: Node, namespace: str, pod: str, container: str) -> float:
    """The summed VmRSS of every process in the container's memory cgroup (the node shares this
    machine's PID namespace, so containerd's task PID is ours)."""
    pid = node.task_pid(namespace, pod, container)
    memory = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if ":memory:" in line
    )
    total_kib = 0
    for proc in (Path("/sys/fs/cgroup/memory") / memory.lstrip("/") / "cgroup.procs").read_text().split():
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def operator_pod(node: Node) -> tuple[str, str]:
    found = json.loads(
        node.kubectl(
            "get",
            "pods",
            "-n",
            system.OPERATOR_NAMESPACE,
            "-l",
            f"app.kubernetes.io/instance={system.RELEASE}",
            "-o",
            "json",
        ).stdout
    )
    (pod,) = found["items"]
    return pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]


def growth(samples: list[float]) -> tuple[float, float, float]:
    """(after warm-up, at the end, growth in MiB): medians of the first and last five samples."""
    start, end = statistics.median(samples[:5]), statistics.median(samples[-5:])
    return start, end, end - start


def soak(node: Node, minutes: float, rate: float) -> int:
    system.install_operator(node)
    node.apply(system.manifests("kafka"))
    node.kubectl("rollout", "status", "-n", "kafka", "statefulset/kafka", "--timeout=300s", timeout=320)
    node.kubectl("create", "-f", "-", input=json.dumps(restricted_namespace(NAMESPACE)))
    ns = Namespace(node, NAMESPACE)  # type: ignore[arg-type]  # only its kubectl() is used
    example_connector_with_car(ns, CAR)
    wait_for(
        "the worker ready", lambda: (ns.get("pod", WORKER_POD) or {}).get("status", {}).get("podIP"), 120
    )
    broker = system.pod_ip(node, NAMESPACE, "devices-0")
    publisher = RatePublisher(broker, CAR, ns.secret(f"{CAR}-credentials"), f"vehicles/{CAR}/state", rate)
    components = {
        "operator": (system.OPERATOR_NAMESPACE, *operator_pod(node)),
        "worker": (NAMESPACE, WORKER_POD, "bridge"),
        "broker": (NAMESPACE, "devices-0", "mosquitto"),
    }
    samples: dict[str, list[float]] = {name: [] for name in components}
    started = time.monotonic()
    publisher.start()
    print(f"soak: {rate:.0f} msg/s for {minutes} min, sampling RSS every {SAMPLE_EVERY_S} s", flush=True)
    try:
        while (elapsed := time.monotonic() - started) < minutes * 60:
            time.sleep(SAMPLE_EVERY_S)
            if elapsed < WARMUP_S:
                continue
            line = []
            for name, (namespace, pod, container) in components.items():
                samples[name].append(container_rss_mib(node, namespace, pod, container))
                line.append(f"{name} {samples[name][-1]:.1f}")
            print(
                f"{elapsed / 60:5.1f} min: sent {publisher.sent}, acked {len(publisher.acked)}; RSS MiB "
                + ", ".join(line),
                flush=True,
            )
    finally:
        publisher.stop()
    duration = time.monotonic() - started

    # Every acknowledged number in Kafka, once the worker has caught up.
    bootstrap = f"{system.pod_ip(node, 'kafka', 'kafka-0')}:9092"
    deadline = time.monotonic() + 300
    while True:
        counts = kafka_key_counts(bootstrap, TOPIC, publisher.prefix + "-", timeout=900)
        lost = [n for n in publisher.acked if not counts[f"{publisher.prefix}-{n}"]]
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(10)
    duplicates = sum(counts.values()) - len(counts)
    achieved = len(publisher.acked) / duration
    print(
        f"acknowledged {len(publisher.acked)} of {publisher.sent} sent ({achieved:.0f} msg/s), "
        f"{len(lost)} lost, {duplicates} duplicates, {publisher.disconnects} disconnects"
    )

    how = f"examples/kafkaconnector.yaml on the real node, QoS 1, {minutes:.0f} min at {rate:.0f} msg/s"
    figures: dict[str, dict[str, Any]] = {
        "soak_rate_msgs_s": {"value": round(achieved), "unit": "msg/s", "how": how},
        "soak_messages": {"value": len(publisher.acked), "unit": "msgs", "how": "acknowledged by the broker"},
        "soak_lost": {"value": len(lost), "unit": "msgs", "how": "acknowledged, not in Kafka"},
        "soak_duplicates": {
            "value": duplicates,
            "unit": "msgs",
            "how": "records beyond the first per number",
        },
    }
    flat = True
    for name, values in samples.items():
        start, end, grew = growth(values)
        flat_here = grew <= max(FLAT_SLACK_MIB, FLAT_GROWTH * start)
        flat = flat and flat_here
        print(
            f"{name}: RSS {start:.1f} MiB after the {WARMUP_S // 60} min warm-up, {end:.1f} MiB at the end "
            f"({grew:+.1f}); {'flat' if flat_here else 'GROWING'}; samples {[round(v, 1) for v in values]}"
        )
        sampled = f"summed VmRSS of the container's processes, median of 5 samples {SAMPLE_EVERY_S} s apart"
        figures[f"soak_{name}_rss_mib_start"] = {
            "value": round(start, 1),
            "unit": "MiB",
            "how": f"after the warm-up; {sampled}",
        }
        figures[f"soak_{name}_rss_mib_end"] = {
            "value": round(end, 1),
            "unit": "MiB",
            "how": f"at the end; {sampled}",
        }
    record(figures)
    return 0 if flat and not lost else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=2000)
    args = parser.parse_args()
    if args.minutes * 60 < WARMUP_S + 5 * SAMPLE_EVERY_S:
        parser.error(f"--minutes must leave at least 5 samples after the {WARMUP_S // 60} min warm-up")
    node = Node().start()
    try:
        return soak(node, args.minutes, args.rate)
    finally:
        node.stop()
        left = leftovers()
        if left:
            print(f"the node left behind: {left}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
