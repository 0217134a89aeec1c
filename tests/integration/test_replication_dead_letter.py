"""A ReplicationTask's dead letter, reconciled for real: the operator against a real API server, a real
Mosquitto run from the mosquitto.conf it rendered, a real RocketMQ, and a real worker run from the
ConfigMap the operator wrote (with the password it generated, so the broker enforces the task's
AclPolicy on the dead-letter publish).

MQTT -> RocketMQ: `spec.deadLetter.mqttTopic` reaches the worker's config and its account may publish
there. RocketMQ -> MQTT dead-letters into the consumer group's own queue, so the API server refuses
`deadLetter` on a RocketMQ source. (The worker's side of both: tests/integration/test_bridge_rocketmq.py.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.integration.operator_stack import MQACL, operator_stack
from tests.integration.rocketmq_clients import read, rocketmq_consumer
from tests.integration.test_bridge_helpers import Subscriber, paho_publish

from testenv.cluster import wait_for
from testenv.device import NOT_AUTHORIZED, Device
from testenv.kube import ControlPlane
from testenv.process import free_port
from testenv.rocketmq import RocketMQ

pytestmark = pytest.mark.integration
MQRT = "replicationtasks.mqtt-operator.io"
DEAD_LETTER = "piles/dead-letter"


def task(name: str, source: dict[str, Any], target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "ReplicationTask",
        "metadata": {"name": name},
        "spec": {"source": source, "target": target, **spec},
    }


def test_an_uplinks_dead_letter_reaches_its_worker_its_account_and_its_status(
    crds_installed: ControlPlane, namespace: str, rocketmq_cluster: RocketMQ
) -> None:
    cluster = rocketmq_cluster
    faults, reader = cluster.new_name("pile-faults"), cluster.new_name("fault-reader")
    cluster.create_topic(faults)
    cluster.create_group(reader)
    port = free_port()
    with operator_stack(crds_installed, namespace, {"wills": f"127.0.0.1:{port}"}) as stack:
        stack.apply(
            task(
                "wills",
                {"mqtt": {"instanceRef": {"name": "devices"}, "topicFilters": ["piles/+/will"]}},
                {"rocketmq": {"endpoints": cluster.endpoint, "topic": faults}},
                deadLetter={"mqttTopic": DEAD_LETTER},
            )
        )
        stack.wait_condition(MQRT, "wills", "True", "Running")
        assert stack.worker_config("wills-replication")["mqttToRocketmq"]["deadLetterTopic"] == DEAD_LETTER
        policy = stack.get(MQACL, "wills-replication")
        assert policy is not None
        assert policy["spec"]["rules"] == [
            {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["piles/+/will"]},
            {"effect": "allow", "actions": ["publish"], "topics": [DEAD_LETTER]},
        ]
        account = Device(stack.port, "wills-replication", stack.secret("wills-replication-credentials"))
        try:
            assert account.connect() == 0
            assert account.publish(DEAD_LETTER) < 0x80  # 0x10: accepted, no subscriber yet
            assert account.publish("piles/p1/cmd") == NOT_AUTHORIZED
        finally:
            account.close()

        # A real worker: a will RocketMQ refuses for good (more than its 128 properties) is published to
        # the dead-letter topic under the task's own account; the good one reaches RocketMQ.
        stack.start_worker("wills-replication", port)
        pile = stack.device("pile", [{"effect": "allow", "actions": ["publish"], "topics": ["piles/+/will"]}])
        ops = stack.device(
            "ops", [{"effect": "allow", "actions": ["subscribe", "receive"], "topics": [DEAD_LETTER]}]
        )
        watcher = Subscriber(stack.port, DEAD_LETTER, auth=ops)
        many = [(f"site{i}", "depot-7") for i in range(200)]
        try:
            paho_publish(
                stack.port,
                [
                    ("piles/p1/will", b'{"errorCode":"E-1"}', {}),
                    ("piles/p2/will", b'{"errorCode":"E-2"}', {"user_properties": many}),
                ],
                auth=pile,
            )
            wait_for("the dead letter", lambda: watcher.messages, timeout=60)
        finally:
            watcher.close()
        with rocketmq_consumer(cluster, reader, faults) as consumer:
            stored = read(consumer, lambda got: len(got) >= 1, timeout=60)
        assert [m.body for m in stored] == [b'{"errorCode":"E-1"}']
        [(topic, payload, _, _, props)] = watcher.messages
        assert (topic, payload) == (DEAD_LETTER, b'{"errorCode":"E-2"}')
        assert dict(props)["sourceTopic"] == "piles/p2/will"
        assert "MESSAGE_PROPERTIES_TOO_LARGE" in dict(props)["reason"]

        # The status counts it (the operator scrapes the worker every 15 s).
        def shown() -> dict[str, Any] | None:
            status = stack.status(MQRT, "wills")
            return status if (status.get("delivered"), status.get("deadLettered")) == (1, 1) else None

        status = wait_for("deadLettered in the status", shown, timeout=60)
        assert (status["consumed"], status["failed"]) == (2, 1)

        # deadLetter is no source or target: it can go while the task runs, and the grant goes with it.
        stack.patch(MQRT, "wills", {"spec": {"deadLetter": None}})
        wait_for(
            "the config without a dead letter",
            lambda: stack.worker_config("wills-replication")["mqttToRocketmq"]["deadLetterTopic"] is None,
        )
        wait_for(
            "the grant gone",
            lambda: len((stack.get(MQACL, "wills-replication") or {})["spec"]["rules"]) == 1,
        )


def test_the_api_server_refuses_a_dead_letter_topic_on_a_rocketmq_source(
    crds_installed: ControlPlane, namespace: str
) -> None:
    downlink = task(
        "cmds",
        {"rocketmq": {"endpoints": "rocketmq-proxy:8081", "topic": "pile-cmd", "consumerGroup": "pile-cmd"}},
        {"mqtt": {"instanceRef": {"name": "devices"}, "topic": "piles/{key}/cmd"}},
        deadLetter={"mqttTopic": DEAD_LETTER},
    )
    proc = crds_installed.kubectl(
        "create", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(downlink), check=False
    )
    assert proc.returncode != 0
    assert "spec.deadLetter: Invalid value" in proc.stderr, proc.stderr
    assert "deadLetter is for an MQTT source only" in proc.stderr
    assert "%DLQ%<consumerGroup>" in proc.stderr
