"""ReplicationTask's pure builders: the spec rules, names, the worker config, pods and ACL rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mqtt_operator.api.replication import ReplicationTaskSpec
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.replication_config import (
    replication_config,
    replication_pod,
    replication_rules,
    worker_count,
)
from mqtt_operator.resources.worker_config import BrokerTarget
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import worker_statefulset

NAMES = WorkerNames("ReplicationTask", "iot", "wills")
BROKER = BrokerTarget(host="devices.iot.svc", port=1883, session_expiry_seconds=7200)
ID = OwnerIdentity(
    name="wills", namespace="iot", uid="u", api_version="mqtt-operator.io/v1alpha1", kind="ReplicationTask"
)
RMQ = {"endpoints": "rmq-proxy.rocketmq.svc:8081", "topic": "pile-faults"}


def uplink(**fields: Any) -> ReplicationTaskSpec:
    return ReplicationTaskSpec.model_validate(
        {
            "source": {"mqtt": {"instanceRef": {"name": "devices"}, "topicFilters": ["piles/+/will"]}},
            "target": {"rocketmq": {**RMQ, "tag": "will", "keys": {"from": "clientId"}}},
            **fields,
        }
    )


def downlink(**rocketmq: Any) -> ReplicationTaskSpec:
    return ReplicationTaskSpec.model_validate(
        {
            "source": {"rocketmq": {**RMQ, "topic": "pile-cmd", "consumerGroup": "cmd-devices", **rocketmq}},
            "target": {"mqtt": {"instanceRef": {"name": "devices"}, "topic": "piles/{key}/cmd", "qos": 1}},
        }
    )


def test_one_side_mqtt_the_other_rocketmq() -> None:
    with pytest.raises(ValidationError, match="one side must be MQTT and the other RocketMQ"):
        ReplicationTaskSpec.model_validate(
            {
                "source": {"mqtt": {"instanceRef": {"name": "d"}, "topicFilters": ["a"]}},
                "target": {"mqtt": {"instanceRef": {"name": "d"}, "topic": "b"}},
            }
        )
    assert uplink().to_rocketmq and not downlink().to_rocketmq
    assert uplink().instance_name == downlink().instance_name == "devices"


def test_names_and_share_group_are_the_kinds_own() -> None:
    assert NAMES.workload == NAMES.user == "wills-replication"
    assert NAMES.share_group == "iot.replicationtask.wills"
    WorkerNames("ReplicationTask", "iot", "a" * 40).check()
    with pytest.raises(ValueError, match="at most 40 characters"):
        WorkerNames("ReplicationTask", "iot", "a" * 41).check()


def test_uplink_config() -> None:
    config = replication_config(NAMES, uplink(), BROKER, "wills-replication")
    up = config.mqtt_to_rocketmq
    assert up is not None and config.rocketmq_to_mqtt is None and config.kafka is None
    assert (up.topic, up.tag, up.key.source, up.ordered) == ("pile-faults", "will", "clientId", False)
    assert up.share_group == "iot.replicationtask.wills" and up.topic_filters == ("piles/+/will",)
    assert config.rocketmq is not None and config.rocketmq.endpoints == RMQ["endpoints"]
    assert config.rocketmq.credentials is False


def test_downlink_config_and_credentials_from_the_secret() -> None:
    spec = downlink(credentialsSecretRef={"name": "rmq"}, ordered=True, tagFilter="cmd")
    config = replication_config(NAMES, spec, BROKER, None)
    down = config.rocketmq_to_mqtt
    assert down is not None and config.mqtt_to_rocketmq is None
    assert (down.topic, down.consumer_group, down.tag_filter) == ("pile-cmd", "cmd-devices", "cmd")
    assert (down.mqtt_topic, down.qos, down.retain, down.ordered) == ("piles/{key}/cmd", 1, False, True)
    assert config.rocketmq is not None and config.rocketmq.credentials is True
    sts = worker_statefulset(
        ID, replication_pod(NAMES, spec), image="i", config_hash="h", authorization=False
    )
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert env == {
        "ROCKETMQ_ACCESS_KEY": {"name": "rmq", "key": "accessKey"},
        "ROCKETMQ_SECRET_KEY": {"name": "rmq", "key": "secretKey"},
    }


def test_paused_runs_no_worker_and_ordered_runs_one() -> None:
    assert worker_count(uplink(replicas=3)) == 3
    assert worker_count(uplink(replicas=3, state="paused")) == 0
    assert worker_count(downlink(ordered=True)) == 1


def test_rules_are_exactly_what_the_route_needs() -> None:
    assert replication_rules(uplink()) == [
        {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["piles/+/will"]}
    ]
    assert replication_rules(downlink()) == [
        {"effect": "allow", "actions": ["publish"], "topics": ["piles/+/cmd"]}
    ]


def test_an_uplinks_dead_letter_topic_is_in_its_config_and_may_be_published_to() -> None:
    spec = uplink(deadLetter={"mqttTopic": "piles/dead-letter"})
    up = replication_config(NAMES, spec, BROKER, "wills-replication").mqtt_to_rocketmq
    assert up is not None and up.dead_letter_topic == "piles/dead-letter"
    assert replication_rules(spec) == [
        {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["piles/+/will"]},
        {"effect": "allow", "actions": ["publish"], "topics": ["piles/dead-letter"]},
    ]
    without = replication_config(NAMES, uplink(), BROKER, None).mqtt_to_rocketmq
    assert without is not None and without.dead_letter_topic is None


def test_a_rocketmq_source_takes_no_dead_letter_topic() -> None:
    with pytest.raises(ValidationError, match="deadLetter is for an MQTT source only"):
        ReplicationTaskSpec.model_validate(
            {
                "source": {"rocketmq": {**RMQ, "consumerGroup": "g"}},
                "target": {"mqtt": {"instanceRef": {"name": "devices"}, "topic": "piles/{key}/cmd"}},
                "deadLetter": {"mqttTopic": "piles/dead-letter"},
            }
        )
