"""The worker's configuration: the one contract between the operator (which writes it into the
worker's ConfigMap as JSON) and the worker (which reads it at start).

Secrets never travel in it: passwords come from environment variables the Deployment/StatefulSet
fills from Secrets (`MQTT_PASSWORD`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`), and TLS material
from mounted files named here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

CONFIG_VERSION = 1
MQTT_PASSWORD_ENV = "MQTT_PASSWORD"  # noqa: S105 - the name of a variable, not a password
KAFKA_SASL_USERNAME_ENV = "KAFKA_SASL_USERNAME"
KAFKA_SASL_PASSWORD_ENV = "KAFKA_SASL_PASSWORD"  # noqa: S105 - a variable name
ROCKETMQ_ACCESS_KEY_ENV = "ROCKETMQ_ACCESS_KEY"
ROCKETMQ_SECRET_KEY_ENV = "ROCKETMQ_SECRET_KEY"  # noqa: S105 - a variable name


class ConfigModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class MqttEndpoint(ConfigModel):
    host: str
    port: int
    username: str | None = None  # the password is in $MQTT_PASSWORD
    # Each replica's client id is `<clientIdPrefix>-<replica identity>` (the pod name of a
    # StatefulSet pod, stable across restarts): its persistent session survives a restart.
    client_id_prefix: str
    session_expiry_seconds: int = 7200
    # MQTT 5 Receive Maximum: how many QoS 1 messages the broker may have in flight to one worker.
    receive_maximum: int = 1000
    keepalive_seconds: int = 30
    tls_ca_file: str | None = None


class KafkaEndpoint(ConfigModel):
    bootstrap_servers: str
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # The largest record the worker produces (its producer's max.request.size); a bigger one goes
    # to the dead letter. The topics' max.message.bytes must allow it too.
    max_record_bytes: int = 2 * 1024 * 1024


class KeySpec(ConfigModel):
    source: Literal["none", "topic", "clientId", "payloadField"] = "clientId"
    path: str | None = None  # a JSON path such as $.plate when source is payloadField


class MqttToKafka(ConfigModel):
    topic_filters: tuple[str, ...]
    share_group: str  # subscriptions are $share/<shareGroup>/<filter>
    kafka_topic: str | None = None  # a fixed topic, or
    parent_topics: tuple[str, ...] = ()  # routing by parent topic: the first level names the topic
    key: KeySpec = KeySpec()
    value: Literal["raw", "envelope"] = "raw"
    system_headers: bool = True
    user_property_headers: bool = True
    partitioning: Literal["key", "roundRobin"] = "key"
    ordered: bool = False
    # Where the publisher's client id comes from (Mosquitto does not put it on a message): this
    # 0-based topic level (e.g. 1 for vehicles/<clientId>/state, enforced by the broker's ACLs), or
    # else the MQTT 5 user property of this name that the devices set.
    client_id_topic_level: int | None = None
    client_id_property: str = "clientId"


class KafkaToMqtt(ConfigModel):
    kafka_topic: str
    consumer_group: str
    start_from: Literal["latest", "earliest"] = "latest"
    topic_header: str = "mqttTopic"
    qos_header: str = "qosLevel"
    retain_header: str = "retain"
    clean_session_header: str = "cleanSession"
    default_topic: str | None = None
    default_qos: Literal[0, 1, 2] = 1
    default_retain: bool = False


class DeviceEvents(ConfigModel):
    connect_topic: str | None = None
    disconnect_topic: str | None = None
    # The broker plugin's client events topic (the instance's spec.clientEvents.topic); None when the
    # instance publishes none: the log lines alone make the records (bridge/device_events.py).
    plugin_topic: str | None = None


class FunctionCall(ConfigModel):
    """How the worker calls the function (one HTTP endpoint)."""

    url: str
    format: Literal["cloudevents", "json"] = "cloudevents"
    timeout_seconds: float = 30.0
    # The bounded keep-alive connection pool towards the function.
    max_connections: int = 64


class RetryPolicy(ConfigModel):
    attempts: int = 3  # retries after the first call
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    # How long answers saying the function is unavailable (429, 502, 503, 504: a rollout, an overload,
    # a proxy without backends) are retried without counting against `attempts`; 0: they count.
    unavailable_for_seconds: float = 300.0


class MqttToFunction(ConfigModel):
    topic_filters: tuple[str, ...]
    share_group: str  # subscriptions are $share/<shareGroup>/<filter>
    function: FunctionCall
    # CloudEvents `source` (the instance, `/mqtt-operator/<namespace>/<instance>`; the topic is appended)
    # and `type`.
    event_source: str
    event_type: str = "io.mqtt-operator.message"
    ordered: bool = False
    concurrency: int = 16  # calls in flight per worker when unordered
    base64_payload: bool = False
    batch_max_messages: int = 1
    batch_max_wait_seconds: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    dead_letter_topic: str | None = None  # an MQTT topic
    # A template over the source message ({topic}, {clientId}, {level.N}) where the function's answer
    # body is published.
    reply_topic: str | None = None
    client_id_topic_level: int | None = None
    client_id_property: str = "clientId"


class RocketMQEndpoint(ConfigModel):
    """A RocketMQ 5 proxy (gRPC). Credentials, when the route has them, are in $ROCKETMQ_ACCESS_KEY and
    $ROCKETMQ_SECRET_KEY."""

    endpoints: str  # host:port, several separated by ';'
    tls: bool = False
    credentials: bool = False


class MqttToRocketMQ(ConfigModel):
    topic_filters: tuple[str, ...]
    share_group: str  # subscriptions are $share/<shareGroup>/<filter>
    topic: str
    tag: str | None = None
    key: KeySpec = KeySpec()
    # FIFO: messages with the same key form one message group, sent in order by one worker.
    ordered: bool = False
    client_id_topic_level: int | None = None
    client_id_property: str = "clientId"
    # An MQTT topic: messages RocketMQ can never take are published there (`mqtt_dead_letter.py`).
    dead_letter_topic: str | None = None


class RocketMQToMqtt(ConfigModel):
    topic: str
    consumer_group: str
    tag_filter: str = "*"
    # A template over the RocketMQ message: {key} (its first key), {tag}, {messageId}, {property.NAME}.
    mqtt_topic: str
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    ordered: bool = False


class BridgeConfig(ConfigModel):
    version: int = CONFIG_VERSION
    # "<namespace>/<name>" of the resource the worker serves, for logs and metrics labels.
    owner: str
    mqtt: MqttEndpoint
    kafka: KafkaEndpoint | None = None
    mqtt_to_kafka: MqttToKafka | None = None
    kafka_to_mqtt: KafkaToMqtt | None = None
    device_events: DeviceEvents | None = None
    mqtt_to_function: MqttToFunction | None = None
    rocketmq: RocketMQEndpoint | None = None
    mqtt_to_rocketmq: MqttToRocketMQ | None = None
    rocketmq_to_mqtt: RocketMQToMqtt | None = None
    dead_letter_topic: str | None = None  # a Kafka topic for the Kafka integrations
    metrics_port: int = 9090
    # Graceful shutdown budget: stop taking messages, drain, ack/commit, exit within it.
    drain_seconds: float = 20.0
