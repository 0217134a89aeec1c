"""A ReplicationTask worker's routes: MQTT -> RocketMQ and RocketMQ -> MQTT, what the worker runs for them.

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

The worker (`worker.py`) starts, probes and closes the RocketMQ clients through this object; the
MQTT source and publisher it hands over are started and closed with the worker's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.mapping import MqttPublish, Reject
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.mqtt5 import Message
from mqtt_operator.bridge.mqtt_dead_letter import MqttDeadLetters
from mqtt_operator.bridge.mqtt_sink import MqttSink
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.pipeline import Pipeline
from mqtt_operator.bridge.rocketmq_dead_letter import RocketMQDeadLetters
from mqtt_operator.bridge.rocketmq_mapping import FromRocketMQ, RocketMQMessage, RocketMQRecord, ToRocketMQ
from mqtt_operator.bridge.rocketmq_sink import RocketMQSink
from mqtt_operator.bridge.rocketmq_source import RocketMQSource

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


class RocketMQRoutes:
    def __init__(
        self,
        config: BridgeConfig,
        metrics: Metrics,
        *,
        client_id: str,
        mqtt_sink: MqttSink | None = None,
    ) -> None:
        endpoint = config.rocketmq
        if endpoint is None:
            raise ValueError("the config has a RocketMQ route but no rocketmq endpoint")
        self.pipelines: list[Pipeline[Any, Any]] = []
        self.mqtt_source: MqttSource | None = None
        self.mqtt_sink = mqtt_sink
        self.sink: RocketMQSink | None = None
        self.source: RocketMQSource | None = None
        self._connecting: asyncio.Task[None] | None = None
        up = config.mqtt_to_rocketmq
        if up is not None:
            self.mqtt_source = MqttSource(
                config.mqtt, client_id=client_id, share_group=up.share_group, topic_filters=up.topic_filters
            )
            self.sink = RocketMQSink(endpoint, up.topic, ordered=up.ordered)
            if up.dead_letter_topic is not None and self.mqtt_sink is None:
                self.mqtt_sink = MqttSink(config.mqtt, client_id=f"{client_id}-pub")
            uplink: Pipeline[Message, RocketMQRecord] = Pipeline(
                UP,
                self.mqtt_source,
                CountRejects(ToRocketMQ(up), UP, metrics),
                self.sink,
                MqttDeadLetters(UP, self.mqtt_sink, up.dead_letter_topic, metrics),
                metrics,
                max_batches=1 if up.ordered else 4,
            )
            self.pipelines.append(uplink)
        down = config.rocketmq_to_mqtt
        if down is not None:
            self.source = RocketMQSource(endpoint, down)
            if self.mqtt_sink is None:
                self.mqtt_sink = MqttSink(config.mqtt, client_id=f"{client_id}-pub")
            downlink: Pipeline[RocketMQMessage, MqttPublish] = Pipeline(
                DOWN,
                self.source,
                CountRejects(FromRocketMQ(down), DOWN, metrics),
                self.mqtt_sink,
                RocketMQDeadLetters(DOWN, self.source, metrics),
                metrics,
                max_batches=1 if down.ordered else 4,
            )
            self.pipelines.append(downlink)

    def start(self) -> None:
        """Connect the RocketMQ clients in the background; a proxy that does not answer yet is retried."""
        if self.sink is not None:
            self._connecting = asyncio.create_task(self.sink.start(), name="rocketmq-producer-start")
        if self.source is not None:
            self.source.start()

    def readiness(self) -> list[tuple[str, bool, str | None]]:
        parts: list[tuple[str, bool, str | None]] = []
        if self.sink is not None:
            parts.append(("rocketmq producer", self.sink.ready, self.sink.last_error))
        if self.source is not None:
            parts.append(("rocketmq consumer", self.source.ready, self.source.last_error))
        return parts

    async def probe(self) -> None:
        if self.sink is not None:
            await self.sink.probe()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.source is not None:
            await self.source.close()
        if self.sink is not None:
            await self.sink.close()
