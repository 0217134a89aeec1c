"""The workers' ConfigMap `<name>-bridge`: `config.json`, the BridgeConfig rendered from a KafkaConnector.

No secret goes into it: passwords reach the workers as environment variables from Secrets, TLS
material as files mounted from Secrets (bridge_statefulset.py), and the paths here name those files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.bridge.config import (
    BridgeConfig,
    DeviceEvents,
    KafkaEndpoint,
    KafkaToMqtt,
    KeySpec,
    MqttEndpoint,
    MqttToKafka,
)
from mqtt_operator.resources.connector_names import (
    BRIDGE_COMPONENT,
    bridge_name,
    client_id_prefix,
    default_consumer_group,
    share_group,
)
from mqtt_operator.resources.identity import ConnectorIdentity, OwnerIdentity

CONFIG_DIR = "/etc/bridge"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
# Beside, not below, the ConfigMap's mount: a Secret mounted inside a ConfigMap volume would need a
# directory created in a volume the kubelet rewrites atomically.
KAFKA_CA_DIR = "/etc/bridge-tls/kafka-ca"
KAFKA_CLIENT_CERT_DIR = "/etc/bridge-tls/kafka-client"
METRICS_PORT = 9090


@dataclass(frozen=True)
class BrokerTarget:
    """The instance's broker as the workers reach it from inside the cluster."""

    host: str  # the instance's Service, <instance>.<namespace>.svc
    port: int  # its mqtt listener
    # The instance's sessions.expiry: how long a paused connector's sessions (and their messages) last.
    session_expiry_seconds: int


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


def consumer_group(identity: ConnectorIdentity, spec: KafkaConnectorSpec) -> str | None:
    """The downlink's Kafka consumer group (None for mqttToKafka)."""
    if spec.kafka_to_mqtt is None:
        return None
    return spec.kafka_to_mqtt.consumer_group or default_consumer_group(identity.namespace, identity.name)


def bridge_config(
    identity: ConnectorIdentity, spec: KafkaConnectorSpec, broker: BrokerTarget, username: str | None
) -> BridgeConfig:
    """`username` is the connector's own broker account, None when the instance enforces no authorization."""
    ns, name = identity.namespace, identity.name
    uplink, downlink = spec.mqtt_to_kafka, spec.kafka_to_mqtt
    mqtt_to_kafka = None
    if uplink is not None:
        mqtt_to_kafka = MqttToKafka(
            topic_filters=uplink.topic_filters,
            share_group=share_group(ns, name),
            kafka_topic=uplink.topic,
            parent_topics=uplink.routing.by_parent_topic.allowed if uplink.routing else (),
            key=KeySpec(source=uplink.key.source, path=uplink.key.path),
            value=uplink.value,
            system_headers=uplink.headers.system,
            user_property_headers=uplink.headers.user_properties,
            partitioning=uplink.partitioning,
            ordered=uplink.ordered,
        )
    kafka_to_mqtt = None
    if downlink is not None:
        kafka_to_mqtt = KafkaToMqtt(
            kafka_topic=downlink.topic,
            consumer_group=consumer_group(identity, spec) or "",
            start_from=downlink.start_from,
            topic_header=downlink.headers.topic,
            qos_header=downlink.headers.qos,
            retain_header=downlink.headers.retain,
            default_topic=downlink.default_topic,
            default_qos=downlink.default_qos,
            default_retain=downlink.default_retain,
        )
    events = spec.device_events
    return BridgeConfig(
        owner=f"{ns}/{name}",
        mqtt=MqttEndpoint(
            host=broker.host,
            port=broker.port,
            username=username,
            client_id_prefix=client_id_prefix(ns, name),
            session_expiry_seconds=broker.session_expiry_seconds,
        ),
        kafka=kafka_endpoint(spec),
        mqtt_to_kafka=mqtt_to_kafka,
        kafka_to_mqtt=kafka_to_mqtt,
        device_events=(
            DeviceEvents(connect_topic=events.connect_topic, disconnect_topic=events.disconnect_topic)
            if events
            else None
        ),
        dead_letter_topic=spec.dead_letter.topic if spec.dead_letter else None,
        metrics_port=METRICS_PORT,
    )


def render_bridge_config(config: BridgeConfig) -> str:
    """camelCase JSON with sorted keys, so the same config always hashes the same."""
    data = config.model_dump(mode="json", by_alias=True)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def bridge_config_map(
    identity: ConnectorIdentity, spec: KafkaConnectorSpec, broker: BrokerTarget, username: str | None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": identity.metadata(bridge_name(identity.name), BRIDGE_COMPONENT),
        "data": {CONFIG_FILE: render_bridge_config(bridge_config(identity, spec, broker, username))},
    }


def worker_config_map(identity: OwnerIdentity, workload: str, config: BridgeConfig) -> dict[str, Any]:
    """The ConfigMap `workload` holding `config` (for the kinds other than KafkaConnector)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": identity.metadata(workload, BRIDGE_COMPONENT),
        "data": {CONFIG_FILE: render_bridge_config(config)},
    }
