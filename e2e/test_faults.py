"""The fault campaign on the real node: steady numbered QoS 1 traffic through examples/kafkaconnector.yaml,
a fault, and the exact count in Kafka (every number the broker acknowledged, duplicates reported).

docs/reliability.md lists the scenarios, what each guarantees and the counts these tests print.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import Any

import pytest

from e2e.helpers import (
    MQKC,
    pod,
    pod_ready,
    restart_count,
)
from e2e.traffic import (
    CONNECTOR,
    WORKERS,
    car_through_the_example,
    none_lost,
    ready_workers,
    service_ip,
    settled,
)
from localnode.system import OPERATOR_NAMESPACE, RELEASE
from mqtt_operator.api.instance import MqttInstanceSpec
from testenv.cluster import Namespace, wait_for

AUTOSAVE_S = MqttInstanceSpec().persistence.autosave_seconds  # the example keeps the default


def _kafka_addresses(ns: Namespace) -> list[str]:
    """Kafka's Pod (what it advertises) and its bootstrap Service: all a worker talks to Kafka through."""
    return [
        pod(Namespace(ns.cp, "kafka"), "kafka-0")["status"]["podIP"],
        service_ip(ns, "kafka", "kafka-bootstrap"),
    ]


def _broker_back(ns: Namespace, before: dict[str, Any]) -> None:
    """devices-0 Ready again after its container was killed (a restart) or its Pod deleted (a new uid)."""
    uid, restarts = before["metadata"]["uid"], restart_count(before, "mosquitto")
    wait_for(
        "the broker Ready again",
        lambda: (
            (found := pod_ready(ns, "devices-0"))
            and (found["metadata"]["uid"] != uid or restart_count(found, "mosquitto") > restarts)
        ),
        timeout=120,
    )


@pytest.mark.node_only("cuts a Pod's network with iptables in its network namespace")
def test_the_broker_stopped_and_killed_with_a_backlog_queued_for_workers_cut_off_from_kafka(
    cluster: Any, namespace: Namespace
) -> None:
    """Kafka unreachable for the workers (a partition, 20 s) builds a backlog in the broker; then the
    broker's Pod is deleted (SIGTERM: it saves) and, in a second round, its container SIGKILLed through
    the runtime (no save). Neither round loses what the broker held; the SIGKILL loses at most what it
    accepted in its last autosave interval before the kill. After either restart the broker holds the
    car out until the worker has subscribed again (Mosquitto does not restore shared subscriptions, and
    would acknowledge the car's messages with "no matching subscribers" and drop them meanwhile)."""
    ns = namespace.namespace
    workers, publisher = car_through_the_example(namespace)
    # (how the broker was stopped, when that began, when it was done, when its Pod was Ready again)
    stops: list[tuple[str, float, float, float]] = []
    backlog = 0  # acknowledged while the workers were cut off: what the broker held at its restarts
    try:
        wait_for("traffic flowing", lambda: len(publisher.acked) >= 500, timeout=60)
        for how in ("delete", "sigkill"):
            with ExitStack() as cut:
                cut_at = len(publisher.acked)
                for worker in workers:
                    cut.enter_context(cluster.partition(ns, worker, _kafka_addresses(namespace)))
                time.sleep(20)  # the backlog builds in the broker
                before = pod(namespace, "devices-0")
                stopped_at = time.monotonic()
                if how == "delete":
                    namespace.cp.kubectl("delete", "pod", "-n", ns, "devices-0", "--wait=false")
                else:
                    cluster.kill_container(ns, "devices-0", "mosquitto")
                done_at = time.monotonic()
                _broker_back(namespace, before)
                stops.append((how, stopped_at, done_at, time.monotonic()))
                time.sleep(5)  # traffic into the restarted broker, still queued
                backlog += len(publisher.acked) - cut_at
            time.sleep(10)  # the workers reach Kafka again and drain the backlog
    finally:
        publisher.stop()

    tally = settled(cluster, publisher)
    ((_, kill_began, killed_at, _),) = [stop for stop in stops if stop[0] == "sigkill"]
    lost = set(tally.lost)
    # The SIGKILL: what the broker accepted after its last save (at most AUTOSAVE_S before the kill).
    unsaved = {n for n in lost if kill_began - AUTOSAVE_S - 1 <= publisher.acked[n] <= killed_at}
    # After each restart: Mosquitto does not restore a shared subscription from its saved state; the
    # broker plugin holds the car out until the worker has subscribed again, so none is "no matching
    # subscribers" (docs/reliability.md).
    unrouted = lost & publisher.unrouted
    # How long the last start held the car out (the plugin logs it when the hold ends).
    broker_log = namespace.cp.kubectl("logs", "-n", ns, "devices-0", "-c", "mosquitto", check=False).stdout
    held = [line.split(": ", 2)[-1] for line in broker_log.splitlines() if "letting clients in" in line]
    print(
        tally.line("broker Pod deleted, then its container SIGKILLed, each with a 20 s backlog")
        + f"; lost unsaved by the SIGKILL: {len(unsaved)}, lost unrouted after the restarts: "
        f"{len(unrouted)}; publisher reconnects {publisher.reconnects}; last hold: {held}"
    )
    other = sorted(lost - unsaved - unrouted)
    if other:
        for worker in workers:
            print(namespace.cp.kubectl("logs", "-n", ns, worker, "--tail=60", check=False).stdout)
    # Nothing else is missing: not what the broker held at the clean stop, not what it saved before the kill.
    assert other == [], f"lost beyond the SIGKILL's autosave window: {other[:20]}"
    assert not unrouted, f"accepted while the share group had no member: {sorted(unrouted)[:20]}"
    # At-least-once: a duplicate is a message the broker delivered again after a restart; at most the
    # backlog plus what the workers held unacknowledged (Receive Maximum 1000 each) at each restart.
    assert tally.duplicates <= backlog + 2 * len(workers) * 1000


def _broker_addresses(ns: Namespace) -> list[str]:
    """The broker's Pod and its Service: all a worker talks to the broker through."""
    return [pod(ns, "devices-0")["status"]["podIP"], service_ip(ns, ns.namespace, "devices")]


@pytest.mark.node_only("cuts a Pod's network with iptables in its network namespace")
def test_partitions_of_60_s_from_kafka_and_from_the_broker_lose_nothing(
    cluster: Any, namespace: Namespace
) -> None:
    """The workers cut off for 60 s from Kafka, then (after they caught up) for 60 s from the broker, both
    as partitions (packets dropped, the far side up, connections hanging until their timeouts). Nothing
    the broker acknowledged is lost; duplicates are bounded by what the workers held unacknowledged."""
    ns = namespace.namespace
    workers, publisher = car_through_the_example(namespace)
    rounds: list[tuple[str, int]] = []  # (cut from, acknowledged during the cut)
    try:
        wait_for("traffic flowing", lambda: len(publisher.acked) >= 500, timeout=60)
        for far_side, addresses in (
            ("kafka", _kafka_addresses(namespace)),
            ("broker", _broker_addresses(namespace)),
        ):
            with ExitStack() as cut:
                before = len(publisher.acked)
                for worker in workers:
                    cut.enter_context(cluster.partition(ns, worker, addresses))
                time.sleep(60)
                rounds.append((far_side, len(publisher.acked) - before))
            time.sleep(20)  # the workers notice, reconnect and catch up
    finally:
        publisher.stop()

    # At-least-once: after each cut the workers may get again what they held unacknowledged (Receive
    # Maximum 1000 each) and what Kafka stored before a timed-out acknowledgement.
    none_lost(
        cluster,
        publisher,
        "workers partitioned 60 s from Kafka, then 60 s from the broker",
        f"acknowledged during each cut: {rounds}; publisher reconnects {publisher.reconnects}",
        max_duplicates=len(rounds) * len(workers) * 2 * 1000,
    )


def _operator_pod(cluster: Any) -> dict[str, Any]:
    found = cluster.kubectl(
        "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
    )
    (operator,) = json.loads(found.stdout)["items"]
    return operator  # type: ignore[no-any-return]


def _workers_settled(ns: Namespace, replicas: int) -> bool:
    sts = ns.get("statefulset", WORKERS) or {}
    status = sts.get("status") or {}
    return bool(
        (sts.get("spec") or {}).get("replicas") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("currentRevision") == status.get("updateRevision")
    )


@pytest.mark.node_only("kills the operator's container through the runtime")
def test_a_config_change_rolls_the_workers_and_an_operator_killed_mid_scale_down_leaves_no_share(
    cluster: Any, namespace: Namespace
) -> None:
    """Under steady traffic: the connector's config changed (its workers roll one by one) and scaled to 3;
    then scaled to 1 with the operator SIGKILLed right after, while it has the surplus workers retire
    (unsubscribe, drain, end their sessions) before the StatefulSet shrinks. A share left behind on an
    offline session would swallow the messages routed to it; none is lost."""
    ns = namespace.namespace
    _, publisher = car_through_the_example(namespace)
    steps: list[str] = []
    try:
        wait_for("traffic flowing", lambda: len(publisher.acked) >= 500, timeout=60)
        namespace.patch(
            MQKC,
            CONNECTOR,
            {
                "spec": {
                    "replicas": 3,
                    "mqttToKafka": {"ordered": False, "headers": {"userProperties": False}},
                }
            },
        )
        wait_for("three workers on the new config", lambda: _workers_settled(namespace, 3), timeout=240)
        steps.append(f"rolled and scaled to 3 at {len(publisher.acked)} acknowledged")
        time.sleep(10)
        operator = _operator_pod(cluster)
        restarts = restart_count(operator, operator["spec"]["containers"][0]["name"])
        namespace.cp.kubectl("scale", "-n", ns, f"{MQKC}/{CONNECTOR}", "--replicas", "1")
        time.sleep(1)  # the operator has begun: it asks the surplus workers to retire
        cluster.kill_container(
            OPERATOR_NAMESPACE, operator["metadata"]["name"], operator["spec"]["containers"][0]["name"]
        )
        wait_for(
            "the operator restarted",
            lambda: (
                restart_count(_operator_pod(cluster), operator["spec"]["containers"][0]["name"]) > restarts
            ),
            timeout=120,
        )
        wait_for("one worker", lambda: _workers_settled(namespace, 1), timeout=240)
        steps.append(f"scaled to 1 across the operator's restart at {len(publisher.acked)} acknowledged")
        time.sleep(20)  # traffic on the one worker left
    finally:
        publisher.stop()

    # At-least-once: each worker stopped (3 rolled, 2 retired) may hand back what it held unacknowledged.
    none_lost(
        cluster,
        publisher,
        "config change rolling the workers, scale 1 -> 3 -> 1 with the operator killed",
        f"{steps}",
        max_duplicates=5 * 1000,
    )


# Where the Pods the node restart must bring back run: the system's, the operator's, Kafka's and
# RocketMQ's (other tests' namespaces may still be going away).
SYSTEM_NAMESPACES = ("kube-system", "local-path-storage", OPERATOR_NAMESPACE, "kafka", "rocketmq")


def _ready_pods(cluster: Any, namespace: str) -> dict[tuple[str, str], int]:
    """Every Ready Pod of the system namespaces and `namespace`, with its containers' restarts summed."""
    found = [
        item
        for ns in (*SYSTEM_NAMESPACES, namespace)
        for item in json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    ]
    return {
        (p["metadata"]["namespace"], p["metadata"]["name"]): sum(
            int(s["restartCount"]) for s in p["status"].get("containerStatuses") or []
        )
        for p in found
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    }


@pytest.mark.node_only("stops and starts the node's kubelet and containerd")
def test_the_node_restarted_under_traffic_every_pod_back_nothing_lost_beyond_the_autosave(
    cluster: Any, namespace: Namespace
) -> None:
    """The node's kubelet, containerd and every container SIGKILLed at once (a crash: the broker cannot
    save, Kafka and the operator die too), then the runtime started again. Every Pod that was Ready comes
    back Ready, restarted in place; what the broker acknowledged is in Kafka except at most what it had
    accepted in its last autosave interval; nothing is "no matching subscribers" after the restart."""
    _, publisher = car_through_the_example(namespace)
    try:
        wait_for("traffic flowing", lambda: len(publisher.acked) >= 500, timeout=60)
        before = _ready_pods(cluster, namespace.namespace)
        acked_before = len(publisher.acked)
        began = time.monotonic()
        cluster.restart_node()
        runtime_back = time.monotonic()

        def every_pod_back() -> bool:
            now = _ready_pods(cluster, namespace.namespace)
            return all(key in now and now[key] > restarts for key, restarts in before.items())

        wait_for("every Pod Ready again, restarted", every_pod_back, timeout=300)
        all_back = time.monotonic()
        ready_workers(namespace)
        time.sleep(20)  # traffic through the restarted node
    finally:
        publisher.stop()

    tally = settled(cluster, publisher)
    lost = set(tally.lost)
    unsaved = {n for n in lost if began - AUTOSAVE_S - 1 <= publisher.acked[n] <= began + 1}
    print(
        tally.line(f"node restarted (kubelet, containerd, {len(before)} Pods SIGKILLed)")
        + f"; runtime back after {runtime_back - began:.1f} s, "
        f"every Pod Ready after {all_back - began:.1f} s; "
        f"acknowledged before: {acked_before}; lost unsaved by the broker: {len(unsaved)}; "
        f"unrouted: {len(lost & publisher.unrouted)}; publisher reconnects {publisher.reconnects}"
    )
    assert sorted(lost - unsaved) == [], f"lost beyond the autosave window: {sorted(lost - unsaved)[:20]}"
    assert not publisher.unrouted, f"accepted with no subscriber: {sorted(publisher.unrouted)[:20]}"
    # At-least-once: what the broker had delivered since its last save comes again, and what the worker
    # held unacknowledged.
    assert tally.duplicates <= len(publisher.acked) - acked_before + 2 * 1000
