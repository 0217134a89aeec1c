"""The dead letter: messages that can never be delivered go to a Kafka topic with their reason.

Each record carries `dlq.reason`, `dlq.source` and `dlq.originalTopic` headers (and, from Kafka,
the partition and offset), the message's own headers and its payload, cut to fit the record size
limit when it was too large (`dlq.truncatedFrom` then gives the original size). Writing to the
dead letter retries transient failures like any delivery. Only when no dead-letter topic is
configured, or Kafka refuses the dead-letter record itself, is a message dropped: it is then
logged with its reason and counted in `bridge_dropped_total`, never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from mqtt_operator.bridge.kafka_sink import KafkaSink
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.pipeline import deliver_with_retry
from mqtt_operator.bridge.records import KafkaRecord

log = logging.getLogger(__name__)

M = TypeVar("M")


class KafkaDeadLetters(Generic[M]):
    def __init__(
        self,
        direction: str,
        sink: KafkaSink | None,
        topic: str | None,
        build: Callable[[M, str, str, int], KafkaRecord],
        describe: Callable[[M], dict[str, object]],
        metrics: Metrics,
    ) -> None:
        self.direction = direction
        self.sink = sink
        self.topic = topic
        self.build = build
        self.describe = describe
        self._dead = metrics.dead_lettered.labels(direction=direction)
        self._dropped = metrics.dropped.labels(direction=direction)
        self._transient = metrics.failed.labels(direction=direction, kind="transient")

    async def send(self, items: list[tuple[M, str]]) -> None:
        if self.sink is None or self.topic is None:
            for item, reason in items:
                log.error(
                    "undeliverable message dropped: no dead-letter topic is configured",
                    extra={"direction": self.direction, "reason": reason, **self.describe(item)},
                )
            self._dropped.inc(len(items))
            return
        limit = self.sink.max_record_bytes
        records = [self.build(item, reason, self.topic, limit) for item, reason in items]
        failed = await deliver_with_retry(
            self.sink, records, on_transient=lambda n, _why: self._transient.inc(n)
        )
        for index, why in failed:
            item, reason = items[index]
            log.error(
                "undeliverable message dropped: the dead-letter topic refused it",
                extra={
                    "direction": self.direction,
                    "reason": reason,
                    "dead_letter_error": why,
                    **self.describe(item),
                },
            )
        if failed:
            self._dropped.inc(len(failed))
        self._dead.inc(len(records) - len(failed))
        first_item, first_reason = items[0]
        log.warning(
            "messages dead-lettered",
            extra={
                "direction": self.direction,
                "count": len(records) - len(failed),
                "topic": self.topic,
                "reason": first_reason,
                **self.describe(first_item),
            },
        )
