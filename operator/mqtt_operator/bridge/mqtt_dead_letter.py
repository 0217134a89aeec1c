"""The MQTT dead letter: messages that can never be delivered are published to an MQTT topic.

Used by the pipelines whose source is MQTT and whose target cannot hold a dead letter of its own:
the FunctionTrigger worker (`mqttToFunction.deadLetterTopic`) and a ReplicationTask's MQTT -> RocketMQ
route (`mqttToRocketmq.deadLetterTopic`; RocketMQ's dead-letter queues belong to consumer groups,
which an MQTT source has none of). Each message is published at QoS 1, not retained, with its
original payload, content type and correlation data, and these MQTT 5 user properties before its
own: `reason` (a sentence), `statusCode` (the function's last HTTP status, when there was one) and
`sourceTopic`. Transient publish failures (the publisher not connected, a PUBACK that never came)
are retried until the broker answers. Only when no dead-letter topic is configured, or the broker
refuses the dead-letter publish itself (not authorized, packet too large), is a message dropped:
logged with its reason and counted in `bridge_dropped_total`, never silently.
"""

from __future__ import annotations

import logging

from mqtt_operator.bridge.message_fields import all_user_properties, mqtt_safe
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.mqtt_sink import MqttSink
from mqtt_operator.bridge.pipeline import deliver_with_retry
from mqtt_operator.bridge.records import Message, MqttPublish, Properties

log = logging.getLogger(__name__)

REASON: str = "reason"
STATUS_CODE: str = "statusCode"
SOURCE_TOPIC: str = "sourceTopic"


def dead_letter_publish(msg: Message, reason: str, topic: str) -> MqttPublish:
    """The dead-letter publish of `msg`; `reason` may carry the HTTP status (`function_sink.Failure`)."""
    status = getattr(reason, "status", None)
    # Every string made Mosquitto-safe (`mqtt_safe`): a reason may quote the function's answer, and a
    # tab or newline in it would make the broker disconnect the publisher on every retry.
    user_properties = [(REASON, mqtt_safe(str(reason)))]
    if status is not None:
        user_properties.append((STATUS_CODE, str(status)))
    user_properties.append((SOURCE_TOPIC, mqtt_safe(msg.topic)))
    props = Properties(user_properties=user_properties)
    if msg.props is not None:
        content_type = msg.props.content_type
        props.content_type = mqtt_safe(content_type) if content_type is not None else None
        props.correlation_data = msg.props.correlation_data
        props.payload_format = msg.props.payload_format
    user_properties.extend([(mqtt_safe(name), mqtt_safe(value)) for name, value in all_user_properties(msg)])
    return MqttPublish(topic, msg.payload, 1, False, user_properties, props)


class MqttDeadLetters:
    def __init__(
        self, direction: str, publisher: MqttSink | None, topic: str | None, metrics: Metrics
    ) -> None:
        self.direction = direction
        self.publisher = publisher
        self.topic = topic
        self._dead = metrics.dead_lettered.labels(direction=direction)
        self._dropped = metrics.dropped.labels(direction=direction)
        self._transient = metrics.failed.labels(direction=direction, kind="transient")

    async def send(self, items: list[tuple[Message, str]]) -> None:
        if self.publisher is None or self.topic is None:
            for msg, reason in items:
                log.error(
                    "undeliverable message dropped: no dead-letter topic is configured",
                    extra={"direction": self.direction, "reason": str(reason), **describe(msg)},
                )
            self._dropped.inc(len(items))
            return
        records = [dead_letter_publish(msg, reason, self.topic) for msg, reason in items]
        failed = await deliver_with_retry(
            self.publisher, records, on_transient=lambda n, _why: self._transient.inc(n)
        )
        for index, why in failed:
            msg, reason = items[index]
            log.error(
                "undeliverable message dropped: the broker refused its dead-letter publish",
                extra={
                    "direction": self.direction,
                    "reason": str(reason),
                    "dead_letter_error": why,
                    **describe(msg),
                },
            )
        if failed:
            self._dropped.inc(len(failed))
        self._dead.inc(len(records) - len(failed))
        first_msg, first_reason = items[0]
        log.warning(
            "messages dead-lettered",
            extra={
                "direction": self.direction,
                "count": len(records) - len(failed),
                "topic": self.topic,
                "reason": str(first_reason),
                **describe(first_msg),
            },
        )


def describe(msg: Message) -> dict[str, object]:
    return {"mqtt_topic": msg.topic, "bytes": len(msg.payload), "packet_id": msg.packet_id}
