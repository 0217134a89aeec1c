"""ReplicationTask: the typed spec of one MQTT <-> RocketMQ route (the CRD's defaults repeated)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mqtt_operator.api.base import LocalObjectRef, Model

# The CRD's CEL rule says the same.
DEAD_LETTER_NEEDS_MQTT_SOURCE = (
    "deadLetter is for an MQTT source only: messages from RocketMQ that cannot be delivered go to the "
    "consumer group's dead-letter queue %DLQ%<consumerGroup>; remove deadLetter"
)


class RocketMQCredentials(Model):
    name: str
    access_key_key: str = "accessKey"
    secret_key_key: str = "secretKey"  # noqa: S105 - the name of a Secret key, not a secret


class MessageKeys(Model):
    # `from` is a Python keyword: the field is `source`, spelled `from` in the CR.
    source: Literal["none", "topic", "clientId", "payloadField"] = Field(default="clientId", alias="from")
    path: str | None = None


class MqttSide(Model):
    instance_ref: LocalObjectRef


class MqttSource(MqttSide):
    topic_filters: tuple[str, ...]


class MqttTarget(MqttSide):
    topic: str  # a template: {key}, {tag}, {messageId}, {property.NAME}
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


class RocketMQSide(Model):
    endpoints: str
    topic: str
    credentials_secret_ref: RocketMQCredentials | None = None
    tls: bool = False
    ordered: bool = False


class RocketMQSource(RocketMQSide):
    tag_filter: str = "*"
    consumer_group: str


class RocketMQTarget(RocketMQSide):
    tag: str | None = None
    keys: MessageKeys = MessageKeys()


class Source(Model):
    mqtt: MqttSource | None = None
    rocketmq: RocketMQSource | None = None


class Target(Model):
    mqtt: MqttTarget | None = None
    rocketmq: RocketMQTarget | None = None


class DeadLetter(Model):
    mqtt_topic: str


class ReplicationTaskSpec(Model):
    display_name: str | None = None
    source: Source
    target: Target
    # MQTT source only: messages RocketMQ can never take are published there. A RocketMQ source
    # dead-letters into its consumer group's own queue, %DLQ%<consumerGroup>.
    dead_letter: DeadLetter | None = None
    state: Literal["running", "paused"] = "running"
    replicas: int = 1
    resources: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_mqtt_one_rocketmq(self) -> ReplicationTaskSpec:
        # The CRD's CEL rules say the same; repeated so a model built elsewhere is never half valid.
        if not (
            (self.source.mqtt and self.target.rocketmq and not self.source.rocketmq and not self.target.mqtt)
            or (
                self.source.rocketmq
                and self.target.mqtt
                and not self.source.mqtt
                and not self.target.rocketmq
            )
        ):
            raise ValueError(
                "one side must be MQTT and the other RocketMQ: source.mqtt with target.rocketmq, "
                "or source.rocketmq with target.mqtt"
            )
        if self.dead_letter is not None and self.source.mqtt is None:
            raise ValueError(DEAD_LETTER_NEEDS_MQTT_SOURCE)
        return self

    @property
    def to_rocketmq(self) -> bool:
        return self.source.mqtt is not None

    @property
    def instance_name(self) -> str:
        side = self.source.mqtt or self.target.mqtt
        assert side is not None
        return side.instance_ref.name

    @property
    def rocketmq(self) -> RocketMQSide:
        side: RocketMQSide | None = self.target.rocketmq or self.source.rocketmq
        assert side is not None
        return side

    @property
    def ordered(self) -> bool:
        return self.rocketmq.ordered
