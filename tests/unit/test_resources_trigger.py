"""FunctionTrigger's pure builders: names, config, worker count, the ACL rules of its own account."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.controllers.trigger import failure_event
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.trigger_config import (
    publish_filter,
    trigger_config,
    trigger_pod,
    trigger_rules,
    worker_count,
)
from mqtt_operator.resources.worker_config import BrokerTarget, worker_config_map
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import worker_statefulset

ID = OwnerIdentity(
    name="alerts", namespace="iot", uid="u-1", api_version="mqtt-operator.io/v1alpha1", kind="FunctionTrigger"
)
NAMES = WorkerNames("FunctionTrigger", "iot", "alerts")
BROKER = BrokerTarget(host="devices.iot.svc", port=1883, session_expiry_seconds=7200)


def spec(**fields: Any) -> FunctionTriggerSpec:
    return FunctionTriggerSpec.model_validate(
        {
            "instanceRef": {"name": "devices"},
            "topicFilters": ["vehicles/+/battery"],
            "function": {"url": "http://fn.example/"},
            **fields,
        }
    )


def test_names_never_collide_with_a_connector_of_the_same_name() -> None:
    connector = WorkerNames("KafkaConnector", "iot", "alerts")
    assert NAMES.workload == "alerts-trigger" != connector.workload
    assert NAMES.user == "alerts-trigger" != connector.user
    assert NAMES.share_group == "iot.functiontrigger.alerts" != connector.share_group
    assert NAMES.credentials == "alerts-trigger-credentials"
    assert NAMES.replica_client_id(1) == "iot.functiontrigger.alerts-alerts-trigger-1"


def test_a_name_too_long_for_its_pods_is_refused_with_the_limit() -> None:
    WorkerNames("FunctionTrigger", "iot", "a" * 44).check()
    with pytest.raises(ValueError, match="at most 44 characters"):
        WorkerNames("FunctionTrigger", "iot", "a" * 45).check()


def test_defaults_follow_the_cloud_service_form() -> None:
    fn = trigger_config(NAMES, spec(), BROKER, None, "http://fn.example/").mqtt_to_function
    assert fn is not None
    assert (fn.batch_max_messages, fn.batch_max_wait_seconds) == (1, 60.0)
    assert (
        fn.retry.attempts,
        fn.retry.backoff,
        fn.retry.initial_delay_seconds,
        fn.retry.max_delay_seconds,
    ) == (
        3,
        "exponential",
        1.0,
        60.0,
    )
    assert fn.function.timeout_seconds == 30.0 and fn.concurrency == 16 and not fn.ordered
    assert fn.function.max_connections == 64
    wide = trigger_config(NAMES, spec(concurrency=200), BROKER, None, "http://fn.example/").mqtt_to_function
    assert wide is not None and wide.function.max_connections == 200
    assert fn.event_source == "/mqtt-operator/iot/devices"


def test_config_carries_every_option_and_round_trips() -> None:
    config = trigger_config(
        NAMES,
        spec(
            format="json",
            ordering="ordered",
            batch={"maxMessages": 100, "maxWait": "1m30s"},
            retry={"attempts": 5, "backoff": "fixed", "initialDelay": "500ms", "maxDelay": "2m"},
            timeout="2s",
            deadLetter={"mqttTopic": "fn/dead"},
            replyTopic="vehicles/{level.1}/cmd",
            base64Payload=True,
        ),
        BROKER,
        "alerts-trigger",
        "http://fn.iot.svc:8080/x",
    )
    fn = config.mqtt_to_function
    assert fn is not None and config.kafka is None and config.mqtt_to_kafka is None
    assert fn.ordered and fn.concurrency == 1 and fn.base64_payload
    assert fn.function.format == "json" and fn.function.timeout_seconds == 2.0
    assert (fn.batch_max_messages, fn.batch_max_wait_seconds) == (100, 90.0)
    assert (fn.retry.attempts, fn.retry.backoff, fn.retry.initial_delay_seconds) == (5, "fixed", 0.5)
    assert fn.retry.max_delay_seconds == 120.0
    assert (fn.dead_letter_topic, fn.reply_topic) == ("fn/dead", "vehicles/{level.1}/cmd")
    assert config.mqtt.username == "alerts-trigger" and config.mqtt.client_id_prefix == NAMES.client_id_prefix
    cm = worker_config_map(ID, NAMES, config)
    assert cm["metadata"]["name"] == "alerts-trigger"
    assert BridgeConfig.model_validate_json(cm["data"]["config.json"]) == config


def test_worker_count_disabled_ordered_and_scaled() -> None:
    assert worker_count(spec(replicas=3)) == 3
    assert worker_count(spec(replicas=3, ordering="ordered")) == 1
    assert worker_count(spec(replicas=3, enabled=False)) == 0
    sts = worker_statefulset(
        ID, trigger_pod(NAMES, spec(replicas=2)), image="img", config_hash="h", authorization=True
    )
    assert sts["metadata"]["name"] == "alerts-trigger" and sts["spec"]["replicas"] == 2
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "alerts-trigger-credentials"
    assert not any(name.startswith("KAFKA") for name in env)
    assert sts["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "alerts-trigger"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("vehicles/{level.1}/cmd", "vehicles/+/cmd"),
        ("cmd/{clientId}", "cmd/+"),
        ("replies/x-{clientId}/now", "replies/+/now"),
        ("{topic}/reply", "#"),
        ("replies/{topic}", "replies/#"),
        ("fixed/topic", "fixed/topic"),
    ],
)
def test_reply_templates_become_the_narrowest_acl_filter(template: str, expected: str) -> None:
    assert publish_filter(template) == expected


def test_rules_grant_filters_dead_letter_and_replies_only() -> None:
    assert trigger_rules(spec()) == [
        {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/+/battery"]}
    ]
    rules = trigger_rules(spec(deadLetter={"mqttTopic": "fn/dead"}, replyTopic="vehicles/{level.1}/cmd"))
    assert rules[1] == {"effect": "allow", "actions": ["publish"], "topics": ["fn/dead", "vehicles/+/cmd"]}


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValidationError, match="exactly one of url"):
        spec(function={"url": "http://a/", "serviceRef": {"name": "b"}})
    with pytest.raises(ValidationError, match="not a duration"):
        spec(timeout="soon")


def test_a_failure_event_only_when_messages_failed_since_the_last_report() -> None:
    totals = {"invoked": 9, "succeeded": 6, "failed": 3, "retried": 4, "timedOut": 1, "deadLettered": 2}
    assert failure_event(None, totals) is None
    assert failure_event(dict(totals), totals) is None
    event = failure_event({**totals, "failed": 1, "deadLettered": 1, "retried": 1}, totals)
    assert event is not None and event[:2] == ("Warning", "MessagesFailed")
    assert "2 message(s) failed" in event[2] and "1 dead-lettered" in event[2] and "3 retried" in event[2]
