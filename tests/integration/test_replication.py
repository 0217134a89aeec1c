"""ReplicationTask reconciled for real: the operator against a real API server, a real Mosquitto run from
the mosquitto.conf the operator rendered, and a real RocketMQ (name server + proxy).

The last test runs real workers from the ConfigMaps the operator wrote and checks that the status
counts exactly what the test sent and received; the others read the workers' figures from a stand-in
serving Prometheus text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.operator_stack import MQACL, MQU, MetricsServer, Stack, operator_stack
from tests.integration.rocketmq_clients import command, read, rocketmq_consumer, rocketmq_producer
from tests.integration.test_bridge_helpers import Subscriber, paho_publish

from testenv.cluster import wait_for
from testenv.device import NOT_AUTHORIZED, Device
from testenv.kube import ControlPlane
from testenv.process import free_port
from testenv.rocketmq import RocketMQ

pytestmark = pytest.mark.integration
MQRT = "replicationtasks.mqtt-operator.io"
COUNTED = "counted"


def uplink(name: str, endpoints: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "ReplicationTask",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Pile_Wills-To-RocketMQ",
            "source": {"mqtt": {"instanceRef": {"name": "devices"}, "topicFilters": ["piles/+/will"]}},
            "target": {"rocketmq": {"endpoints": endpoints, "topic": "pile-faults", "tag": "will"}},
            **spec,
        },
    }


def downlink(name: str, endpoints: str, **rocketmq: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "ReplicationTask",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "rocketmq": {
                    "endpoints": endpoints,
                    "topic": "pile-cmd",
                    "consumerGroup": "pile-cmd",
                    **rocketmq,
                }
            },
            "target": {"mqtt": {"instanceRef": {"name": "devices"}, "topic": "piles/{key}/cmd"}},
        },
    }


@pytest.fixture
def worker() -> Iterator[MetricsServer]:
    server = MetricsServer()
    yield server
    server.stop()


@pytest.fixture
def stack(crds_installed: ControlPlane, namespace: str, worker: MetricsServer) -> Iterator[Stack]:
    with operator_stack(crds_installed, namespace, {COUNTED: worker.address}) as s:
        yield s


def test_uplink_task_gets_its_workers_and_account(stack: Stack, rocketmq_cluster: RocketMQ) -> None:
    ns, endpoint = stack.namespace, rocketmq_cluster.endpoint
    stack.apply(uplink("wills", endpoint, replicas=2))
    ready = stack.wait_condition(MQRT, "wills", "True", "Running")
    assert "MQTT -> RocketMQ: 2 worker(s)" in ready["message"]
    status = stack.status(MQRT, "wills")
    assert status["displayName"] == "Pile_Wills-To-RocketMQ"
    assert status["shareGroup"] == f"{ns}.replicationtask.wills"
    assert status["connectorUser"] == "wills-replication"

    cfg = stack.worker_config("wills-replication")
    assert cfg["rocketmq"] == {"endpoints": endpoint, "tls": False, "credentials": False}
    up = cfg["mqttToRocketmq"]
    assert (up["topic"], up["tag"], up["key"]["source"]) == ("pile-faults", "will", "clientId")
    assert up["shareGroup"] == f"{ns}.replicationtask.wills" and up["topicFilters"] == ["piles/+/will"]
    sts = stack.get("statefulset", "wills-replication")
    assert sts is not None and sts["spec"]["replicas"] == 2
    assert sts["metadata"]["ownerReferences"][0]["kind"] == "ReplicationTask"

    policy = stack.get(MQACL, "wills-replication")
    assert policy is not None
    assert policy["spec"]["rules"] == [
        {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["piles/+/will"]}
    ]
    device = Device(stack.port, "wills-replication", stack.secret("wills-replication-credentials"))
    try:
        assert device.connect() == 0
        assert device.subscribe(f"$share/{ns}.replicationtask.wills/piles/+/will") < 0x80
        assert device.subscribe("vehicles/#") == NOT_AUTHORIZED
    finally:
        device.close()

    stack.cp.kubectl("delete", "-n", ns, MQRT, "wills", "--timeout=60s")
    for kind, name in (
        (MQU, "wills-replication"),
        (MQACL, "wills-replication"),
        ("statefulset", "wills-replication"),
    ):
        wait_for(f"{kind} {name} gone", lambda k=kind, n=name: stack.get(k, n) is None)


def test_pause_edit_resume_and_edits_refused_while_running(stack: Stack, rocketmq_cluster: RocketMQ) -> None:
    endpoint = rocketmq_cluster.endpoint
    stack.apply(uplink("route", endpoint))
    stack.wait_condition(MQRT, "route", "True", "Running")
    # Running: the API server refuses an edit of the target, with the rule's message.
    proc = stack.cp.kubectl(
        "patch",
        "-n",
        stack.namespace,
        MQRT,
        "route",
        "--type=merge",
        "-p",
        '{"spec":{"target":{"rocketmq":{"topic":"other-topic"}}}}',
        check=False,
    )
    assert proc.returncode != 0 and "only while the task is paused" in proc.stderr, proc.stderr

    stack.patch(MQRT, "route", {"spec": {"state": "paused"}})
    cond = stack.wait_condition(MQRT, "route", "False", "Paused")
    assert "keep their place" in cond["message"]
    wait_for(
        "no worker", lambda: (stack.get("statefulset", "route-replication") or {})["spec"]["replicas"] == 0
    )
    # Paused: the edit goes through; then running again with the new target.
    stack.patch(MQRT, "route", {"spec": {"target": {"rocketmq": {"topic": "other-topic"}}}})
    stack.patch(MQRT, "route", {"spec": {"state": "running"}})
    stack.wait_condition(MQRT, "route", "True", "Running")
    assert stack.worker_config("route-replication")["mqttToRocketmq"]["topic"] == "other-topic"
    assert (stack.get("statefulset", "route-replication") or {})["spec"]["replicas"] == 1


def test_credentials_and_reachability_reasons(stack: Stack, rocketmq_cluster: RocketMQ) -> None:
    endpoint = rocketmq_cluster.endpoint
    stack.apply(downlink("cmds", endpoint, credentialsSecretRef={"name": "rmq"}))
    cond = stack.wait_condition(MQRT, "cmds", "False", "SecretNotFound")
    assert "spec.source.rocketmq.credentialsSecretRef" in cond["message"]
    stack.cp.kubectl(
        "create", "secret", "generic", "rmq", "-n", stack.namespace, "--from-literal=accessKey=ak"
    )
    cond = stack.wait_condition(MQRT, "cmds", "False", "SecretKeyNotFound")
    assert "'secretKey'" in cond["message"]
    apply = stack.cp.kubectl(
        "create",
        "secret",
        "generic",
        "rmq",
        "-n",
        stack.namespace,
        "--from-literal=accessKey=ak",
        "--from-literal=secretKey=sk-value",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    stack.cp.kubectl("apply", "-n", stack.namespace, "-f", "-", input=apply.stdout)
    stack.wait_condition(MQRT, "cmds", "True", "Running")
    cfg = stack.worker_config("cmds-replication")
    assert cfg["rocketmqToMqtt"]["mqttTopic"] == "piles/{key}/cmd" and cfg["rocketmq"]["credentials"] is True
    assert "sk-value" not in str(cfg) and "sk-value" not in str(stack.get(MQRT, "cmds"))
    policy = stack.get(MQACL, "cmds-replication") or {}
    assert policy["spec"]["rules"] == [{"effect": "allow", "actions": ["publish"], "topics": ["piles/+/cmd"]}]

    closed = f"127.0.0.1:{free_port()}"
    stack.apply(uplink("nowhere", closed))
    cond = stack.wait_condition(MQRT, "nowhere", "False", "RocketMQUnreachable")
    assert closed in cond["message"] and "keep retrying" in cond["message"]


def histogram(le_counts: dict[str, int]) -> str:
    return "".join(
        f'bridge_end_to_end_latency_seconds_bucket{{direction="mqtt_to_rocketmq",le="{le}"}} {n}.0\n'
        for le, n in le_counts.items()
    )


def test_status_figures_follow_the_workers(stack: Stack, worker: MetricsServer) -> None:
    # The figures come from the workers whatever the route does; its endpoint need not answer.
    worker.text = (
        'bridge_received_total{direction="mqtt_to_rocketmq"} 100.0\n'
        'bridge_delivered_total{direction="mqtt_to_rocketmq"} 100.0\n'
        + histogram({"0.005": 100, "0.01": 100, "+Inf": 100})
    )
    stack.apply(uplink(COUNTED, f"127.0.0.1:{free_port()}"))
    wait_for("consumed in status", lambda: stack.status(MQRT, COUNTED).get("consumed") == 100, timeout=45)
    # The next 50 messages took 5..10 ms, and 3 attempts failed while RocketMQ was away.
    worker.text = (
        'bridge_received_total{direction="mqtt_to_rocketmq"} 150.0\n'
        'bridge_delivered_total{direction="mqtt_to_rocketmq"} 150.0\n'
        'bridge_failed_total{direction="mqtt_to_rocketmq",kind="transient"} 3.0\n'
        + histogram({"0.005": 100, "0.01": 150, "+Inf": 150})
    )
    wait_for("the window's latency", lambda: "latency" in stack.status(MQRT, COUNTED), timeout=45)
    status = stack.status(MQRT, COUNTED)
    assert (status["consumed"], status["delivered"], status["failed"]) == (150, 150, 3)
    assert 5 < status["latency"]["p50Ms"] <= status["latency"]["p99Ms"] <= 10
    assert status["latency"]["windowSeconds"] >= 1
    assert status["lastSyncTime"]


WILLS = 120
COMMANDS = 150
KEYLESS = 3


def test_status_counts_what_real_workers_moved(
    crds_installed: ControlPlane, namespace: str, rocketmq_cluster: RocketMQ
) -> None:
    cluster = rocketmq_cluster
    faults, cmds = cluster.new_name("pile-faults"), cluster.new_name("pile-cmd")
    group, reader = cluster.new_name("pile-cmd"), cluster.new_name("fault-reader")
    for topic in (faults, cmds):
        cluster.create_topic(topic)
    for name in (group, reader):
        cluster.create_group(name)
    ports = {"wills": free_port(), "cmds": free_port()}
    with operator_stack(crds_installed, namespace, {n: f"127.0.0.1:{p}" for n, p in ports.items()}) as stack:
        wills = uplink("wills", cluster.endpoint)
        wills["spec"]["target"]["rocketmq"]["topic"] = faults
        stack.apply(wills)
        stack.apply(downlink("cmds", cluster.endpoint, topic=cmds, consumerGroup=group))
        pile = stack.device(
            "pile",
            [
                {"effect": "allow", "actions": ["publish"], "topics": ["piles/+/will"]},
                {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["piles/+/cmd"]},
            ],
        )
        for name in ports:
            stack.wait_condition(MQRT, name, "True", "Running")
            stack.start_worker(f"{name}-replication", ports[name])
        # The latency is a window between two scrapes: the first one (nothing moved yet) is its start.
        for name in ports:
            wait_for(f"{name}: a first scrape", lambda n=name: stack.status(MQRT, n).get("consumed") == 0)

        # Uplink: every will reaches the RocketMQ topic.
        wills_sent = [(f"piles/p{i}/will", b'{"errorCode":"E-%d"}' % i, {}) for i in range(WILLS)]
        paho_publish(stack.port, wills_sent, auth=pile)
        with rocketmq_consumer(cluster, reader, faults) as consumer:
            stored = read(consumer, lambda got: len(got) >= WILLS, timeout=60)
        assert len({m.body for m in stored}) == WILLS

        # Downlink: every keyed command reaches its pile; the keyless ones cannot fill piles/{key}/cmd.
        device = Subscriber(stack.port, "piles/+/cmd", auth=pile)
        try:
            with rocketmq_producer(cluster, cmds) as producer:
                for i in range(COMMANDS):
                    producer.send(command(cmds, f"p{i % 10}", {"seq": i}))
                for i in range(KEYLESS):
                    producer.send(command(cmds, None, {"seq": f"keyless-{i}"}))
            wait_for("every command on its topic", lambda: len(device.messages) >= COMMANDS, timeout=60)
        finally:
            device.close()
        arrived = [(topic, json.loads(body)["seq"]) for topic, body, *_ in device.messages]
        assert sorted(seq for _, seq in arrived) == list(range(COMMANDS))
        assert all(topic == f"piles/p{seq % 10}/cmd" for topic, seq in arrived)

        # The status shows what the test counted (the operator scrapes the workers every 15 s).
        def shown(name: str, consumed: int, delivered: int) -> bool:
            status = stack.status(MQRT, name)
            return (status.get("consumed"), status.get("delivered")) == (consumed, delivered)

        wait_for("the uplink's figures", lambda: shown("wills", WILLS, WILLS), timeout=60)
        wait_for("the downlink's figures", lambda: shown("cmds", COMMANDS + KEYLESS, COMMANDS), timeout=60)
        for name in ports:
            status = stack.status(MQRT, name)
            latency = status.get("latency") or {}
            assert latency["p50Ms"] > 0 and latency["p99Ms"] >= latency["p50Ms"], status
            assert status["lastSyncTime"], status
        assert stack.status(MQRT, "wills")["failed"] == 0
        # Each keyless command failed for good once (RocketMQ is never unreachable here) and went to the
        # consumer group's dead-letter queue.
        wait_for("the dead letters", lambda: stack.status(MQRT, "cmds").get("deadLettered") == KEYLESS)
        assert stack.status(MQRT, "cmds")["failed"] == KEYLESS
        assert stack.status(MQRT, "wills")["deadLettered"] == 0
