"""A FunctionTrigger's workers: their ConfigMap `<name>-trigger` (the BridgeConfig with `mqttToFunction`),
their Pod shape, and the AclPolicy rules of the trigger's own broker account. Pure."""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.base import duration_seconds
from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.bridge.config import BridgeConfig, FunctionCall, MqttToFunction, RetryPolicy
from mqtt_operator.resources.worker_access import allow_rules, publish_filter
from mqtt_operator.resources.worker_config import METRICS_PORT, BrokerTarget, mqtt_endpoint, owner
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import WorkerPod


def event_source(namespace: str, instance: str) -> str:
    """CloudEvents `source`: the instance; the worker appends the message's topic."""
    return f"/mqtt-operator/{namespace}/{instance}"


def worker_count(spec: FunctionTriggerSpec) -> int:
    """0 while disabled (the sessions stay, messages wait); one worker when ordered."""
    if not spec.enabled:
        return 0
    return min(spec.replicas, 1) if spec.ordered else spec.replicas


def trigger_pod(names: WorkerNames, spec: FunctionTriggerSpec) -> WorkerPod:
    return WorkerPod(names=names, replicas=worker_count(spec), resources=spec.resources)


def trigger_rules(spec: FunctionTriggerSpec) -> list[dict[str, Any]]:
    """Subscribe + receive on the trigger's filters (granted also in their `$share/+/...` form by the ACL
    translation); publish on the dead-letter topic and where replies may go."""
    rules = allow_rules(["subscribe", "receive"], spec.topic_filters)
    published = []
    if spec.dead_letter is not None:
        published.append(spec.dead_letter.mqtt_topic)
    if spec.reply_topic is not None:
        published.append(publish_filter(spec.reply_topic))
    if published:
        rules += allow_rules(["publish"], sorted(set(published)))
    return rules


def trigger_config(
    names: WorkerNames,
    spec: FunctionTriggerSpec,
    broker: BrokerTarget,
    username: str | None,
    function_url: str,
) -> BridgeConfig:
    """`username` is the trigger's own broker account, None when the instance enforces no authorization."""
    retry = spec.retry
    return BridgeConfig(
        owner=owner(names),
        mqtt=mqtt_endpoint(names, broker, username),
        mqtt_to_function=MqttToFunction(
            topic_filters=spec.topic_filters,
            share_group=names.share_group,
            function=FunctionCall(
                url=function_url,
                format=spec.format,
                timeout_seconds=duration_seconds(spec.timeout),
                # The worker caps calls in flight at its connection pool: never below the concurrency.
                max_connections=max(
                    FunctionCall.model_fields["max_connections"].default, spec.calls_in_flight
                ),
            ),
            event_source=event_source(names.namespace, spec.instance_ref.name),
            ordered=spec.ordered,
            concurrency=spec.calls_in_flight,
            base64_payload=spec.base64_payload,
            batch_max_messages=spec.batch.max_messages,
            batch_max_wait_seconds=duration_seconds(spec.batch.max_wait),
            retry=RetryPolicy(
                attempts=retry.attempts,
                backoff=retry.backoff,
                initial_delay_seconds=duration_seconds(retry.initial_delay),
                max_delay_seconds=duration_seconds(retry.max_delay),
                unavailable_for_seconds=duration_seconds(retry.unavailable_for),
            ),
            dead_letter_topic=spec.dead_letter.mqtt_topic if spec.dead_letter else None,
            reply_topic=spec.reply_topic,
        ),
        metrics_port=METRICS_PORT,
    )
