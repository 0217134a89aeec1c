"""KafkaConnector: the typed spec of one MQTT <-> Kafka integration task."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mqtt_operator.api.base import LocalObjectRef, Model

Direction = Literal["mqttToKafka", "kafkaToMqtt"]
State = Literal["running", "paused", "stopped"]


class CaSecretRef(Model):
    name: str
    key: str = "ca.crt"


class KafkaTls(Model):
    """`{}` means TLS with the system's trusted CAs."""

    ca_secret_ref: CaSecretRef | None = None
    cert_secret_ref: LocalObjectRef | None = None  # a kubernetes.io/tls Secret: tls.crt, tls.key


class SaslSecretRef(Model):
    name: str
    username_key: str = "username"
    password_key: str = "password"  # noqa: S105 - the name of a Secret key, not a password


class KafkaSasl(Model):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    secret_ref: SaslSecretRef


class KafkaConnection(Model):
    bootstrap_servers: str
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None

    @property
    def security_protocol(self) -> Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]:
        if self.sasl is not None:
            return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "SSL" if self.tls is not None else "PLAINTEXT"


class ByParentTopic(Model):
    allowed: tuple[str, ...]


class Routing(Model):
    by_parent_topic: ByParentTopic


class RecordKey(Model):
    # `from` is a Python keyword: the field is `source`, spelled `from` in the CR.
    source: Literal["none", "topic", "clientId", "payloadField"] = Field(default="clientId", alias="from")
    path: str | None = None


class RecordHeaders(Model):
    system: bool = True
    user_properties: bool = True


class MqttToKafkaSpec(Model):
    topic_filters: tuple[str, ...]
    topic: str | None = None
    routing: Routing | None = None
    key: RecordKey = RecordKey()
    # None: envelope with routing.byParentTopic (the form the cloud service's parent-topic routing
    # stores, docs/resources/kafkaconnector.md), raw otherwise; `record_value` says which.
    value: Literal["raw", "envelope"] | None = None
    headers: RecordHeaders = RecordHeaders()
    partitioning: Literal["key", "roundRobin"] = "key"
    ordered: bool = False

    @property
    def record_value(self) -> Literal["raw", "envelope"]:
        if self.value is not None:
            return self.value
        return "envelope" if self.routing is not None else "raw"

    @property
    def kafka_topics(self) -> tuple[str, ...]:
        """Every Kafka topic records may go to: the one topic, or each registered parent topic."""
        if self.topic is not None:
            return (self.topic,)
        return self.routing.by_parent_topic.allowed if self.routing else ()


class DownlinkHeaders(Model):
    topic: str = "mqttTopic"
    qos: str = "qosLevel"
    retain: str = "retain"
    clean_session: str = "cleanSession"


class KafkaToMqttSpec(Model):
    topic: str
    consumer_group: str | None = None
    start_from: Literal["latest", "earliest"] = "latest"
    headers: DownlinkHeaders = DownlinkHeaders()
    default_topic: str | None = None
    default_qos: Literal[0, 1, 2] = 1
    default_retain: bool = False


class DeviceEvents(Model):
    connect_topic: str | None = None
    disconnect_topic: str | None = None


class DeadLetter(Model):
    topic: str


class KafkaConnectorSpec(Model):
    instance_ref: LocalObjectRef
    direction: Direction
    kafka: KafkaConnection
    mqtt_to_kafka: MqttToKafkaSpec | None = None
    kafka_to_mqtt: KafkaToMqttSpec | None = None
    device_events: DeviceEvents | None = None
    dead_letter: DeadLetter | None = None
    replicas: int = 1
    state: State = "running"
    resources: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_direction(self) -> KafkaConnectorSpec:
        # The CRD's CEL rules say the same; repeated so a model built elsewhere is never half valid.
        if self.direction == "mqttToKafka" and (self.mqtt_to_kafka is None or self.kafka_to_mqtt):
            raise ValueError("direction mqttToKafka needs the mqttToKafka block and no kafkaToMqtt block")
        if self.direction == "kafkaToMqtt" and (self.kafka_to_mqtt is None or self.mqtt_to_kafka):
            raise ValueError("direction kafkaToMqtt needs the kafkaToMqtt block and no mqttToKafka block")
        return self

    def kafka_topics(self) -> tuple[str, ...]:
        """Every Kafka topic the connector reads or writes, in a fixed order, without repeats."""
        topics: list[str] = []
        if self.mqtt_to_kafka is not None:
            topics += self.mqtt_to_kafka.kafka_topics
        if self.kafka_to_mqtt is not None:
            topics.append(self.kafka_to_mqtt.topic)
        if self.device_events is not None:
            topics += [
                t for t in (self.device_events.connect_topic, self.device_events.disconnect_topic) if t
            ]
        if self.dead_letter is not None:
            topics.append(self.dead_letter.topic)
        return tuple(dict.fromkeys(topics))
