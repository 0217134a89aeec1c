"""A KafkaConnector's workers: their BridgeConfig (Kafka endpoint, uplink, downlink, device events),
their Pod shape (Kafka credentials and TLS material from Secrets) and the AclPolicy rules of the
connector's own broker account. Pure.

The rules give the workers exactly what they need:
- mqttToKafka: subscribe + receive on its topic filters. The ACL translation (broker/acl.py) grants
  each filter also as `$share/+/<filter>`, the form the workers subscribe with.
- kafkaToMqtt: publish on `#`. Each record's header chooses its topic, so no narrower filter is
  known in advance (a `defaultTopic` covers only records without that header). `#` never matches a
  topic starting with `$`, so `$SYS` and `$CONTROL` stay closed. To confine a downlink, add an
  AclPolicy for the user `<name>-connector` with a higher priority that denies the rest.
"""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.bridge.config import (
    KAFKA_SASL_PASSWORD_ENV,
    KAFKA_SASL_USERNAME_ENV,
    BridgeConfig,
    DeviceEvents,
    KafkaEndpoint,
    KafkaToMqtt,
    KeySpec,
    MqttToKafka,
)
from mqtt_operator.resources.worker_access import allow_rules
from mqtt_operator.resources.worker_config import METRICS_PORT, BrokerTarget, mqtt_endpoint, owner
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import SecretMount, WorkerPod, secret_env

# Beside, not below, the ConfigMap's mount: a Secret mounted inside a ConfigMap volume would need a
# directory created in a volume the kubelet rewrites atomically.
KAFKA_CA_DIR = "/etc/bridge-tls/kafka-ca"
KAFKA_CLIENT_CERT_DIR = "/etc/bridge-tls/kafka-client"
KAFKA_CA_VOLUME = "kafka-ca"
KAFKA_CLIENT_CERT_VOLUME = "kafka-client-cert"
DOWNLINK_TOPICS = ("#",)
DEVICE_EVENTS_TOPIC = "$SYS/broker/log/N"


def worker_count(spec: KafkaConnectorSpec) -> int:
    """0 unless running; one worker for `ordered: true` (per-key order needs a single consumer of the
    shared subscription); otherwise spec.replicas."""
    if spec.state != "running":
        return 0
    if spec.mqtt_to_kafka is not None and spec.mqtt_to_kafka.ordered:
        return min(spec.replicas, 1)
    return spec.replicas


def consumer_group(names: WorkerNames, spec: KafkaConnectorSpec) -> str | None:
    """The downlink's Kafka consumer group (None for mqttToKafka)."""
    if spec.kafka_to_mqtt is None:
        return None
    return spec.kafka_to_mqtt.consumer_group or f"mqtt-operator.{names.namespace}.{names.name}"


def connector_rules(spec: KafkaConnectorSpec, client_events_topic: str | None = None) -> list[dict[str, Any]]:
    """`client_events_topic`: where the instance's broker plugin publishes client events, read with
    the log for deviceEvents (None: the instance publishes none)."""
    if spec.mqtt_to_kafka is not None:
        rules = allow_rules(["subscribe", "receive"], spec.mqtt_to_kafka.topic_filters)
    else:
        rules = allow_rules(["publish"], DOWNLINK_TOPICS)
    if spec.device_events is not None:
        # The broker's connect/disconnect notices (bridge/device_events.py).
        topics = [DEVICE_EVENTS_TOPIC] + ([client_events_topic] if client_events_topic else [])
        rules += allow_rules(["subscribe", "receive"], topics)
    return rules


def connector_pod(names: WorkerNames, spec: KafkaConnectorSpec) -> WorkerPod:
    env: list[dict[str, Any]] = []
    sasl = spec.kafka.sasl
    if sasl is not None:
        ref = sasl.secret_ref
        env.append(secret_env(KAFKA_SASL_USERNAME_ENV, ref.name, ref.username_key))
        env.append(secret_env(KAFKA_SASL_PASSWORD_ENV, ref.name, ref.password_key))
    mounts: list[SecretMount] = []
    tls = spec.kafka.tls
    if tls is not None and tls.ca_secret_ref is not None:
        mounts.append(SecretMount(KAFKA_CA_VOLUME, tls.ca_secret_ref.name, KAFKA_CA_DIR))
    if tls is not None and tls.cert_secret_ref is not None:
        mounts.append(SecretMount(KAFKA_CLIENT_CERT_VOLUME, tls.cert_secret_ref.name, KAFKA_CLIENT_CERT_DIR))
    return WorkerPod(
        names=names,
        replicas=worker_count(spec),
        env=tuple(env),
        secret_mounts=tuple(mounts),
        resources=spec.resources,
    )


def kafka_endpoint(spec: KafkaConnectorSpec) -> KafkaEndpoint:
    tls, sasl = spec.kafka.tls, spec.kafka.sasl
    ca = tls.ca_secret_ref if tls else None
    client_cert = tls.cert_secret_ref if tls else None
    return KafkaEndpoint(
        bootstrap_servers=spec.kafka.bootstrap_servers,
        security_protocol=spec.kafka.security_protocol,
        sasl_mechanism=sasl.mechanism if sasl else None,
        tls_ca_file=f"{KAFKA_CA_DIR}/{ca.key}" if ca else None,
        tls_cert_file=f"{KAFKA_CLIENT_CERT_DIR}/tls.crt" if client_cert else None,
        tls_key_file=f"{KAFKA_CLIENT_CERT_DIR}/tls.key" if client_cert else None,
    )


def connector_config(
    names: WorkerNames, spec: KafkaConnectorSpec, broker: BrokerTarget, username: str | None
) -> BridgeConfig:
    """`username` is the connector's own broker account, None when the instance enforces no authorization."""
    uplink, downlink = spec.mqtt_to_kafka, spec.kafka_to_mqtt
    mqtt_to_kafka = None
    if uplink is not None:
        mqtt_to_kafka = MqttToKafka(
            topic_filters=uplink.topic_filters,
            share_group=names.share_group,
            kafka_topic=uplink.topic,
            parent_topics=uplink.routing.by_parent_topic.allowed if uplink.routing else (),
            key=KeySpec(source=uplink.key.source, path=uplink.key.path),
            value=uplink.record_value,
            system_headers=uplink.headers.system,
            user_property_headers=uplink.headers.user_properties,
            partitioning=uplink.partitioning,
            ordered=uplink.ordered,
        )
    kafka_to_mqtt = None
    if downlink is not None:
        kafka_to_mqtt = KafkaToMqtt(
            kafka_topic=downlink.topic,
            consumer_group=consumer_group(names, spec) or "",
            start_from=downlink.start_from,
            topic_header=downlink.headers.topic,
            qos_header=downlink.headers.qos,
            retain_header=downlink.headers.retain,
            clean_session_header=downlink.headers.clean_session,
            default_topic=downlink.default_topic,
            default_qos=downlink.default_qos,
            default_retain=downlink.default_retain,
        )
    events = spec.device_events
    return BridgeConfig(
        owner=owner(names),
        mqtt=mqtt_endpoint(names, broker, username),
        kafka=kafka_endpoint(spec),
        mqtt_to_kafka=mqtt_to_kafka,
        kafka_to_mqtt=kafka_to_mqtt,
        device_events=(
            DeviceEvents(
                connect_topic=events.connect_topic,
                disconnect_topic=events.disconnect_topic,
                plugin_topic=broker.client_events_topic,
            )
            if events
            else None
        ),
        dead_letter_topic=spec.dead_letter.topic if spec.dead_letter else None,
        metrics_port=METRICS_PORT,
    )
