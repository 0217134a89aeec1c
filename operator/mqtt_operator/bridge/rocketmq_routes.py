"""The RocketMQ integration (a ReplicationTask): MQTT -> RocketMQ and RocketMQ -> MQTT, as one `Wiring`.

- `mqtt_to_rocketmq`: the MQTT source (shared subscription, persistent session), the `ToRocketMQ`
  mapping and the RocketMQ sink.
- `rocketmq_to_mqtt`: the RocketMQ source (consumer group), the `FromRocketMQ` mapping and the MQTT
  sink (publisher).

Messages that can never be delivered go to a dead letter, with their reason:
- `mqtt_to_rocketmq` (a payload over RocketMQ's limit, properties it refuses): the MQTT topic
  `deadLetterTopic` when the task has one (`mqtt_dead_letter.py`, published by the worker's
  publisher); without one they are logged with their reason and counted in `bridge_dropped_total`.
- `rocketmq_to_mqtt` (a topic template the message cannot fill, a publish the broker refuses):
  the consumer group's own dead-letter queue, `%DLQ%<consumerGroup>` (`rocketmq_dead_letter.py`).
Each is counted in `bridge_failed_total{kind="permanent"}` first, and acknowledged once it is
dead-lettered (or dropped), so the stream goes on behind it.

The RocketMQ producer and consumer are components like any other (`component.py`): the program
(`program.py`) starts, probes and closes them with the rest. The MQTT publisher is the program's
shared one (`wiring.SharedClients`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.mqtt_dead_letter import MqttDeadLetters
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.pipeline import Pipeline
from mqtt_operator.bridge.records import Message, MqttPublish, Reject
from mqtt_operator.bridge.rocketmq_dead_letter import RocketMQDeadLetters
from mqtt_operator.bridge.rocketmq_mapping import FromRocketMQ, RocketMQMessage, RocketMQRecord, ToRocketMQ
from mqtt_operator.bridge.rocketmq_sink import RocketMQSink
from mqtt_operator.bridge.rocketmq_source import RocketMQSource
from mqtt_operator.bridge.wiring import SharedClients, Wiring

log = logging.getLogger(__name__)

UP = "mqtt_to_rocketmq"
DOWN = "rocketmq_to_mqtt"

M = TypeVar("M")
R = TypeVar("R")


class CountRejects(Generic[M, R]):
    """The mapping, with its rejects counted as permanent failures (the pipeline counts only the sink's)."""

    def __init__(self, mapping: Callable[[M], R | Reject], direction: str, metrics: Metrics) -> None:
        self.mapping = mapping
        self._failed = metrics.failed.labels(direction=direction, kind="permanent")

    def __call__(self, item: M) -> R | Reject:
        result = self.mapping(item)
        if type(result) is Reject:
            self._failed.inc()
        return result


def rocketmq_routes(config: BridgeConfig, shared: SharedClients, metrics: Metrics) -> Wiring:
    endpoint = config.rocketmq
    if endpoint is None:
        raise ValueError("the config has a RocketMQ route but no rocketmq endpoint")
    wiring = Wiring()
    up = config.mqtt_to_rocketmq
    if up is not None:
        mqtt_source = MqttSource(
            config.mqtt,
            client_id=shared.client_id,
            share_group=up.share_group,
            topic_filters=up.topic_filters,
            coalesce=True,
        )
        sink = RocketMQSink(endpoint, up.topic, ordered=up.ordered)
        publisher = shared.mqtt_publisher() if up.dead_letter_topic is not None else None
        uplink: Pipeline[Message, RocketMQRecord] = Pipeline(
            UP,
            mqtt_source,
            CountRejects(ToRocketMQ(up), UP, metrics),
            sink,
            MqttDeadLetters(UP, publisher, up.dead_letter_topic, metrics),
            metrics,
            max_batches=1 if up.ordered else 4,
        )
        wiring.components += [mqtt_source, sink]
        wiring.pipelines.append(uplink)
        wiring.shared_subscription = mqtt_source
    down = config.rocketmq_to_mqtt
    if down is not None:
        source = RocketMQSource(endpoint, down)
        downlink: Pipeline[RocketMQMessage, MqttPublish] = Pipeline(
            DOWN,
            source,
            CountRejects(FromRocketMQ(down), DOWN, metrics),
            shared.mqtt_publisher(),
            RocketMQDeadLetters(DOWN, source, metrics),
            metrics,
            max_batches=1 if down.ordered else 4,
        )
        wiring.components.append(source)
        wiring.pipelines.append(downlink)
    return wiring
