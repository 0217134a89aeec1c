"""The Kafka sink: an idempotent aiokafka producer (acks=all) fed with whole record batches.

The pipeline hands over everything the MQTT side delivered since the last call; the sink appends
it to one record batch per topic-partition (written in C, `kafka_batch.py`) and sends those with
aiokafka's `send_batch`, awaiting each batch's future: a record is confirmed only when the broker
acknowledged it (acks=all, idempotent, so a retry inside the producer never duplicates). Building
the batches here instead of calling `send()` per record skips a coroutine and a future per record;
the batches need no linger, since their size follows the load.

Partitioning: by key (Kafka's murmur2, the same partition the Java client picks, cached per key),
round robin for records without a key or when configured.

Failures: retriable errors (broker down, timeouts, leader changes) are `TRANSIENT` and retried by
the pipeline; a record larger than `maxRecordBytes`, an invalid topic or a refused authorization
can never succeed and come back as a reason (dead letter). When a batch of several records is
refused as too large, its records are retried one by one, so only the real culprit is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import KAFKA_SASL_PASSWORD_ENV, KAFKA_SASL_USERNAME_ENV, KafkaEndpoint
from mqtt_operator.bridge.kafka_batch import RecordBatch, new_batch
from mqtt_operator.bridge.pipeline import TRANSIENT, Delivery, TransientError
from mqtt_operator.bridge.records import KafkaRecord
from mqtt_operator.logs import register_secret

log = logging.getLogger(__name__)

# Errors no retry can cure: the record goes to the dead letter.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# A produced batch's size (the broker's default message.max.bytes is 1 MiB; bigger records travel
# alone in their own batch, as a batch always takes its first record).
BATCH_BYTES = 512 * 1024
REQUEST_TIMEOUT_MS = 15000
_KEY_CACHE_SIZE = 100_000


def kafka_client_options(endpoint: KafkaEndpoint) -> dict[str, Any]:
    """Connection options shared by producer and consumer: bootstrap, TLS, SASL (from the env)."""
    options: dict[str, Any] = {
        "bootstrap_servers": endpoint.bootstrap_servers,
        "security_protocol": endpoint.security_protocol,
    }
    if endpoint.security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=endpoint.tls_ca_file, certfile=endpoint.tls_cert_file, keyfile=endpoint.tls_key_file
        )
        options["ssl_context"] = context
    if endpoint.security_protocol.startswith("SASL"):
        username = os.environ.get(KAFKA_SASL_USERNAME_ENV)
        password = os.environ.get(KAFKA_SASL_PASSWORD_ENV)
        register_secret(password)
        options.update(
            sasl_mechanism=endpoint.sasl_mechanism or "PLAIN",
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options


def classify(err: BaseException) -> str | None:
    """A reason when `err` is permanent, None when a retry may succeed."""
    if isinstance(err, PERMANENT_ERRORS):
        return f"Kafka refused the record: {type(err).__name__}: {err}"
    return None


class KafkaSink:
    name = "kafka"

    def __init__(self, endpoint: KafkaEndpoint, *, client_id: str, round_robin: bool = False) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.round_robin = round_robin
        self.max_record_bytes = endpoint.max_record_bytes
        self.producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._submit_lock = asyncio.Lock()
        self._generation = 0
        self._rr = 0
        self._hash: dict[bytes, int] = {}
        self._partitions: dict[str, int] = {}
        self.reachable = True
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.producer is not None and self.reachable

    def readiness(self) -> Readiness:
        # No error text: `last_error` is the last failed delivery's, not the connection's.
        return Readiness("kafka producer", self.ready, None)

    async def probe(self) -> None:
        """Ask the cluster for its metadata: is Kafka answering right now? (readiness)"""
        producer = self.producer
        try:
            if producer is None:
                return
            self.reachable = bool(await asyncio.wait_for(producer.client.force_metadata_update(), 5))
        except (TimeoutError, KafkaError, OSError):
            self.reachable = False

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_batch_size=BATCH_BYTES,
            max_request_size=self.max_record_bytes,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            retry_backoff_ms=200,
            **kafka_client_options(self.endpoint),
        )

    async def start(self) -> None:
        """Connect; a cluster that does not answer yet is only logged: delivery retries (recover())."""
        try:
            async with self._lock:
                await self._start()
        except (KafkaError, OSError) as err:
            log.warning("Kafka not reachable yet; delivery will retry", extra={"error": str(err)})

    async def _start(self) -> None:
        if self.producer is not None:
            return
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)
            raise
        self.producer = producer
        self._generation += 1
        self._partitions.clear()
        log.info("connected to Kafka", extra={"bootstrap": self.endpoint.bootstrap_servers})

    async def recover(self) -> None:
        """Replace the producer (its state may be stuck after an outage); errors leave it absent."""
        generation = self._generation
        async with self._lock:
            if generation != self._generation and self.producer is not None:
                return  # another caller already replaced it
            old, self.producer = self.producer, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(old.stop(), 5)
            try:
                await self._start()
            except (KafkaError, OSError) as err:
                log.warning("Kafka not reachable yet", extra={"error": str(err)})

    async def close(self) -> None:
        async with self._lock:
            if self.producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.producer.stop(), 10)
                self.producer = None

    async def _partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = len(await producer.partitions_for(topic))
            self._partitions[topic] = count
        return count

    def _key_hash(self, key: bytes) -> int:
        cached = self._hash.get(key)
        if cached is None:
            if len(self._hash) >= _KEY_CACHE_SIZE:
                self._hash.clear()
            cached = self._hash[key] = murmur2(key) & 0x7FFFFFFF
        return cached

    async def _submit(
        self, producer: AIOKafkaProducer, records: Sequence[KafkaRecord], outcomes: list[Delivery]
    ) -> list[tuple[asyncio.Future[Any], list[int]]]:
        """Build one batch per topic-partition and queue them in the producer; their futures."""
        # (topic, partition) -> (batch, record positions); full batches queue up in `ready`.
        open_batches: dict[tuple[str, int], tuple[RecordBatch, list[int]]] = {}
        ready: list[tuple[str, int, RecordBatch, list[int]]] = []
        counts: dict[str, int] = {}
        limit = self.max_record_bytes
        rr = self._rr
        round_robin = self.round_robin
        key_hash = self._key_hash
        for pos, record in enumerate(records):
            topic, key, value, headers, ts = record
            n = counts.get(topic)
            if n is None:
                try:
                    n = counts[topic] = await self._partition_count(producer, topic)
                except PERMANENT_ERRORS as err:
                    outcomes[pos] = classify(err)
                    continue
                except (KafkaError, OSError) as err:
                    raise TransientError(f"no metadata for topic {topic!r}: {err}") from err
            if len(value) > limit - 65536:
                size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
                if size > limit:
                    outcomes[pos] = f"record too large: {size} bytes, maxRecordBytes is {limit}"
                    continue
            if key is None or round_robin:
                partition = rr % n
                rr += 1
            else:
                partition = key_hash(key) % n
            slot = open_batches.get((topic, partition))
            if slot is None:
                slot = open_batches[(topic, partition)] = (new_batch(BATCH_BYTES), [])
            batch, positions = slot
            if not batch.add(ts, key, value, headers):
                ready.append((topic, partition, batch, positions))
                batch = new_batch(BATCH_BYTES)
                positions = []
                open_batches[(topic, partition)] = (batch, positions)
                batch.add(ts, key, value, headers)  # a batch's first record is always taken
            positions.append(pos)
        self._rr = rr
        for (topic, partition), (batch, positions) in open_batches.items():
            ready.append((topic, partition, batch, positions))

        sent: list[tuple[asyncio.Future[Any], list[int]]] = []
        for topic, partition, batch, positions in ready:
            batch.close()
            try:
                fut = await producer.send_batch(batch, topic, partition=partition)
            except (KafkaError, OSError) as err:
                self.last_error = f"{type(err).__name__}: {err}"
                for pos in positions:
                    outcomes[pos] = classify(err) or TRANSIENT
                continue
            sent.append((fut, positions))
        return sent

    async def deliver(self, records: Sequence[KafkaRecord]) -> list[Delivery]:
        producer = self.producer
        if producer is None:
            raise TransientError("not connected to Kafka")
        outcomes: list[Delivery] = [None] * len(records)
        # Batches are handed to the producer in the order deliver() was called (the lock is FIFO),
        # so the pipeline's concurrent batches reach each partition in arrival order.
        async with self._submit_lock:
            sent = await self._submit(producer, records, outcomes)
        if not sent:
            return outcomes
        done, _ = await asyncio.wait([f for f, _ in sent], timeout=REQUEST_TIMEOUT_MS / 1000 + 5)
        singles: list[int] = []
        for fut, positions in sent:
            if fut not in done:
                self.last_error = "no answer from Kafka within the request timeout"
                for pos in positions:
                    outcomes[pos] = TRANSIENT
                continue
            failure = fut.exception()
            if failure is None:
                continue
            reason = classify(failure)
            if reason is not None and len(positions) > 1 and isinstance(failure, _TOO_LARGE):
                singles.extend(positions)  # find the records that are too large on their own
            else:
                for pos in positions:
                    outcomes[pos] = reason or TRANSIENT
            if reason is None:
                self.last_error = f"{type(failure).__name__}: {failure}"
                log.warning("Kafka produce failed", extra={"error": f"{type(failure).__name__}: {failure}"})
        if singles:
            for pos in singles:
                outcomes[pos] = (await self.deliver([records[pos]]))[0]
        return outcomes
