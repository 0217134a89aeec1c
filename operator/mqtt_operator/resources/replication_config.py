"""A ReplicationTask's workers: their ConfigMap `<name>-replication` (the BridgeConfig with the RocketMQ
route), their Pod shape (RocketMQ credentials from the Secret as environment variables), and the
AclPolicy rules of the task's own broker account. Pure."""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.replication import ReplicationTaskSpec
from mqtt_operator.bridge.config import (
    ROCKETMQ_ACCESS_KEY_ENV,
    ROCKETMQ_SECRET_KEY_ENV,
    BridgeConfig,
    KeySpec,
    MqttToRocketMQ,
    RocketMQEndpoint,
    RocketMQToMqtt,
)
from mqtt_operator.resources.worker_access import allow_rules, publish_filter
from mqtt_operator.resources.worker_config import METRICS_PORT, BrokerTarget, mqtt_endpoint, owner
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import WorkerPod, secret_env


def worker_count(spec: ReplicationTaskSpec) -> int:
    """0 while paused (the MQTT sessions and the consumer group's position stay); one when ordered."""
    if spec.state != "running":
        return 0
    return min(spec.replicas, 1) if spec.ordered else spec.replicas


def replication_pod(names: WorkerNames, spec: ReplicationTaskSpec) -> WorkerPod:
    env: list[dict[str, Any]] = []
    ref = spec.rocketmq.credentials_secret_ref
    if ref is not None:
        env.append(secret_env(ROCKETMQ_ACCESS_KEY_ENV, ref.name, ref.access_key_key))
        env.append(secret_env(ROCKETMQ_SECRET_KEY_ENV, ref.name, ref.secret_key_key))
    return WorkerPod(names=names, replicas=worker_count(spec), env=tuple(env), resources=spec.resources)


def replication_rules(spec: ReplicationTaskSpec) -> list[dict[str, Any]]:
    """MQTT source: subscribe + receive on its filters (and their `$share/+/...` form), and publish on
    the dead-letter topic when there is one; MQTT target: publish on every topic its template can
    produce."""
    if spec.source.mqtt is not None:
        rules = allow_rules(["subscribe", "receive"], spec.source.mqtt.topic_filters)
        if spec.dead_letter is not None:
            rules += allow_rules(["publish"], [spec.dead_letter.mqtt_topic])
        return rules
    assert spec.target.mqtt is not None
    return allow_rules(["publish"], [publish_filter(spec.target.mqtt.topic)])


def replication_config(
    names: WorkerNames, spec: ReplicationTaskSpec, broker: BrokerTarget, username: str | None
) -> BridgeConfig:
    """`username` is the task's own broker account, None when the instance enforces no authorization."""
    rocketmq = spec.rocketmq
    to_rocketmq = from_rocketmq = None
    if spec.source.mqtt is not None and spec.target.rocketmq is not None:
        target = spec.target.rocketmq
        to_rocketmq = MqttToRocketMQ(
            topic_filters=spec.source.mqtt.topic_filters,
            share_group=names.share_group,
            topic=target.topic,
            tag=target.tag,
            key=KeySpec(source=target.keys.source, path=target.keys.path),
            ordered=target.ordered,
            dead_letter_topic=spec.dead_letter.mqtt_topic if spec.dead_letter else None,
        )
    if spec.source.rocketmq is not None and spec.target.mqtt is not None:
        source, mqtt = spec.source.rocketmq, spec.target.mqtt
        from_rocketmq = RocketMQToMqtt(
            topic=source.topic,
            consumer_group=source.consumer_group,
            tag_filter=source.tag_filter,
            mqtt_topic=mqtt.topic,
            qos=mqtt.qos,
            retain=mqtt.retain,
            ordered=source.ordered,
        )
    return BridgeConfig(
        owner=owner(names),
        mqtt=mqtt_endpoint(names, broker, username),
        rocketmq=RocketMQEndpoint(
            endpoints=rocketmq.endpoints,
            tls=rocketmq.tls,
            credentials=rocketmq.credentials_secret_ref is not None,
        ),
        mqtt_to_rocketmq=to_rocketmq,
        rocketmq_to_mqtt=from_rocketmq,
        metrics_port=METRICS_PORT,
    )
