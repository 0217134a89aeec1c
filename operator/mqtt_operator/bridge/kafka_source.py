"""The Kafka source: a consumer group whose offsets are committed only after the sink confirmed.

Auto-commit is off. The pipeline settles batches in the order they were taken, and settling
commits, per partition, the offset after the batch's last record: a commit never covers a record
that is not confirmed yet. After a crash or a rebalance the group resumes at the last commit, so a
record may be delivered twice (at least once), never skipped. On a rebalance the partitions being
revoked are first drained: the listener waits until the pipeline has settled what it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError

from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import KafkaEndpoint, KafkaToMqtt
from mqtt_operator.bridge.kafka_sink import kafka_client_options
from mqtt_operator.bridge.pipeline import backoff

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]  # no deserializers: raw bytes
# Records of up to maxRecordBytes must come through in one fetch.
FETCH_MAX_BYTES = 16 * 1024 * 1024


async def _nothing() -> None:
    return None


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, drain: Callable[[], Awaitable[None]]) -> None:
        self.drain = drain

    async def on_partitions_revoked(self, revoked: Any) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), 30)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(str(tp) for tp in assigned)})


class KafkaSource:
    name = "kafka"

    def __init__(
        self, endpoint: KafkaEndpoint, spec: KafkaToMqtt, *, client_id: str, max_batch: int = 2000
    ) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self.client_id = client_id
        self.max_batch = max_batch
        self.consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._drain: Callable[[], Awaitable[None]] = _nothing  # see drain_before_revoke()
        self.last_error: str | None = None

    def drain_before_revoke(self, wait_idle: Callable[[], Awaitable[None]]) -> None:
        """Wire the pipeline that takes from this source: on a rebalance, the partitions being revoked
        are handed over only after `wait_idle()` (the pipeline settled what it took, up to 30 s), so
        what this member took is committed before another member starts on those partitions."""
        self._drain = wait_idle

    @property
    def ready(self) -> bool:
        return self.consumer is not None and bool(self.consumer.assignment())

    # --- the program's Component ---

    async def start(self) -> None:
        """Nothing yet: the consumer connects on the first take(), when the pipeline runs."""

    def readiness(self) -> Readiness:
        return Readiness("kafka consumer", self.ready, self.last_error)

    async def probe(self) -> None:
        """Nothing to ask: a fetch that fails says so."""

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            client_id=self.client_id,
            group_id=self.spec.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset=self.spec.start_from,
            max_partition_fetch_bytes=max(self.endpoint.max_record_bytes, 1024 * 1024),
            fetch_max_bytes=max(FETCH_MAX_BYTES, self.endpoint.max_record_bytes),
            isolation_level="read_committed",
            **kafka_client_options(self.endpoint),
        )

    async def _connect(self) -> AIOKafkaConsumer:
        attempt = 0
        while True:
            consumer = self._new_consumer()
            try:
                await consumer.start()
                consumer.subscribe([self.spec.kafka_topic], listener=_DrainOnRevoke(lambda: self._drain()))
                self.last_error = None
                log.info(
                    "consumer started",
                    extra={"topic": self.spec.kafka_topic, "group": self.spec.consumer_group},
                )
                return consumer
            except (KafkaError, OSError) as err:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                attempt += 1
                self.last_error = f"cannot start the Kafka consumer: {err}"
                delay = backoff(attempt, base=0.5, cap=30)
                log.warning(self.last_error, extra={"retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)

    async def take(self) -> list[Record]:
        while not self._stopping:
            if self.consumer is None:
                self.consumer = await self._connect()
            try:
                fetched = await self.consumer.getmany(timeout_ms=500, max_records=self.max_batch)
            except KafkaError as err:
                self.last_error = f"Kafka fetch failed: {err}"
                log.warning(self.last_error)
                await asyncio.sleep(1)
                continue
            if self._stopping:
                # Not processed: the offsets stay where they are and these come again.
                return []
            records = [record for batch in fetched.values() for record in batch]
            if records:
                return records
        return []

    async def settle(self, items: list[Record]) -> None:
        if self.consumer is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for record in items:
            offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as err:
            # The partitions moved to another member, which starts at the last commit: duplicates.
            log.warning(
                "offset commit failed; those records may be delivered again", extra={"error": str(err)}
            )

    def origin(self, item: Record) -> float:
        return float(item.timestamp) / 1000.0

    def stop_taking(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        self._stopping = True
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.consumer.stop(), 10)
            self.consumer = None
