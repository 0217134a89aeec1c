"""The RocketMQ sink: records to one topic in batched requests; any answer but OK is a failure.

A record is confirmed only when the proxy answered OK for the request that carried it; until then
the MQTT message is not acknowledged (the pipeline's rule), so nothing is lost when RocketMQ is away.

- Unordered routes: the records of a pipeline batch go in requests of up to `batch_messages` records
  and `batch_bytes` bytes, up to `in_flight` requests at once (RocketMQ stores each request as one
  batch in one queue).
- Ordered routes (FIFO topic): the records of one message group (the key) go one per request, each
  after the previous one's answer (the proxy only routes a single message by its group); different
  groups go in parallel. When a record fails, the rest of its group waits for the retry, so the
  group's order holds. The worker also keeps one pipeline batch in flight.

Failures, as `rocketmq_client.classify` judges the answer: transient ones (the proxy unreachable,
timeouts, throttling) and route errors (missing topic, refused credentials, a topic of the other
message type: retried too, and readiness says what to change) are `TRANSIENT`, retried by the
pipeline with backoff; a message that can never be sent (too large, refused properties) gets its
reason. When a request of several records is refused for one of them, each is sent again alone, so
only the culprit fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import RocketMQEndpoint
from mqtt_operator.bridge.pipeline import TRANSIENT, Delivery, TransientError
from mqtt_operator.bridge.rocketmq_client import RocketMQProducer
from mqtt_operator.bridge.rocketmq_mapping import RocketMQRecord

log = logging.getLogger(__name__)

BATCH_MESSAGES: Final = 64
BATCH_BYTES: Final = 1024 * 1024
IN_FLIGHT: Final = 16
# Message groups sent in parallel on ordered routes.
ORDERED_IN_FLIGHT: Final = 64
# What a record's properties, keys and protocol framing add to its body, about.
_OVERHEAD = 256


class RocketMQSink:
    name = "rocketmq"

    def __init__(
        self,
        endpoint: RocketMQEndpoint,
        topic: str,
        *,
        ordered: bool,
        batch_messages: int = BATCH_MESSAGES,
        batch_bytes: int = BATCH_BYTES,
        in_flight: int | None = None,
    ) -> None:
        self.topic = topic
        self.ordered = ordered
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.producer = RocketMQProducer(endpoint, topic, fifo=ordered)
        self._connecting: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(in_flight or (ORDERED_IN_FLIGHT if ordered else IN_FLIGHT))

    @property
    def ready(self) -> bool:
        return self.producer.ready

    @property
    def last_error(self) -> str | None:
        return self.producer.last_error

    # --- the program's Component ---

    async def start(self) -> None:
        """Connect in the background; a proxy that does not answer yet is retried by deliver() and probe()."""
        self._connecting = asyncio.create_task(self._connect(), name="rocketmq-producer-start")

    def readiness(self) -> Readiness:
        return Readiness("rocketmq producer", self.ready, self.last_error)

    async def _connect(self) -> None:
        """Connect and look the topic up; failures are logged."""
        status = await self.producer.connect()
        if status.kind == "ok":
            log.info("RocketMQ producer connected", extra={"topic": self.topic, "fifo": self.ordered})
        else:
            log.warning("RocketMQ producer not ready yet; delivery will retry", extra={"error": status.text})

    async def probe(self) -> None:
        """Is the proxy answering, and does the topic exist? (readiness, also while nothing flows)"""
        await self.producer.probe()

    async def recover(self) -> None:
        """Look the route up again (a topic created meanwhile, a proxy back at another address)."""
        await self.producer.connect()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        await self.producer.close()

    async def deliver(self, records: Sequence[RocketMQRecord]) -> list[Delivery]:
        producer = self.producer
        if producer.endpoints is None:
            status = await producer.connect()
            if status.kind != "ok":
                raise TransientError(status.text)
        outcomes: list[Delivery] = [None] * len(records)
        if self.ordered:
            await self._deliver_ordered(records, outcomes)
        else:
            await self._deliver_batches(records, outcomes)
        return outcomes

    def _chunks(self, records: Sequence[RocketMQRecord]) -> list[list[int]]:
        chunks: list[list[int]] = []
        current: list[int] = []
        size = 0
        limit_n, limit_bytes = self.batch_messages, self.batch_bytes
        for pos, record in enumerate(records):
            n = len(record.body) + _OVERHEAD
            if current and (len(current) >= limit_n or size + n > limit_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(pos)
            size += n
        if current:
            chunks.append(current)
        return chunks

    async def _send(
        self, records: Sequence[RocketMQRecord], positions: list[int], outcomes: list[Delivery]
    ) -> None:
        async with self._slots:
            status = await self.producer.send([records[p] for p in positions])
        if status.kind == "ok":
            return
        if status.kind != "message":
            for pos in positions:
                outcomes[pos] = TRANSIENT
            return
        if len(positions) == 1:
            outcomes[positions[0]] = status.text
            return
        # One record spoiled the request: find it by sending each alone.
        await asyncio.gather(*(self._send(records, [pos], outcomes) for pos in positions))

    async def _deliver_batches(self, records: Sequence[RocketMQRecord], outcomes: list[Delivery]) -> None:
        chunks = self._chunks(records)
        if len(chunks) == 1:
            await self._send(records, chunks[0], outcomes)
        else:
            await asyncio.gather(*(self._send(records, chunk, outcomes) for chunk in chunks))

    async def _deliver_ordered(self, records: Sequence[RocketMQRecord], outcomes: list[Delivery]) -> None:
        groups: dict[str | None, list[int]] = {}
        for pos, record in enumerate(records):
            groups.setdefault(record.message_group, []).append(pos)

        async def one_group(positions: list[int]) -> None:
            for i, pos in enumerate(positions):
                async with self._slots:
                    status = await self.producer.send([records[pos]])
                if status.kind == "ok":
                    continue
                if status.kind == "message":
                    outcomes[pos] = status.text
                    continue
                # The rest of the group waits behind this one: retried together, in order.
                for later in positions[i:]:
                    outcomes[later] = TRANSIENT
                return

        await asyncio.gather(*(one_group(positions) for positions in groups.values()))
