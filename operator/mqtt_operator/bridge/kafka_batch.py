"""The Kafka sink's record batches: built in C (`_kafka_batch.c`), sent by aiokafka's producer.

`new_batch(limit)` gives a batch with one method the sink calls per record, `add(timestamp_ms, key,
value, headers) -> bool` (False: full, start the next one; never for a batch's first record). With
the C extension it is a `CRecordBatch`: aiokafka's BatchBuilder interface (what `send_batch` and the
producer's sender call on a batch) over the C batch, so the producer frames, sequences (idempotence),
retries and acknowledges it as any batch of its own. Without the extension (a build without a
compiler) it is aiokafka's builder, with the same `add`.

Only what the sink's producer sends is built here: record batch format v2, uncompressed, not
transactional (`kafka_sink.KafkaSink._new_producer` sets neither compression nor transactions).
"""

from __future__ import annotations

from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from mqtt_operator.bridge.records import Header

try:
    from mqtt_operator.bridge._kafka_batch import Batch
except ImportError:  # built without a compiler: aiokafka's builder
    Batch = None  # type: ignore[assignment,misc]

# What aiokafka's producer calls on a batch handed to send_batch. An aiokafka without one of them has
# changed that interface: the sink then uses aiokafka's own builder rather than fail at the first send.
PRODUCER_CALLS = ("_set_producer_state", "_build", "record_count", "closed", "close", "size")
_C_BATCHES = Batch is not None and all(callable(getattr(BatchBuilder, name, None)) for name in PRODUCER_CALLS)


def builds_batches_in_c() -> bool:
    """True when the sink's batches are built by the C extension."""
    return _C_BATCHES


class CRecordBatch(BatchBuilder):  # type: ignore[misc]  # aiokafka has no types
    """A record batch written in C, behind the interface aiokafka's producer uses on its own batches."""

    def __init__(self, limit: int) -> None:
        # No BatchBuilder.__init__: it would make aiokafka's builder, which this class replaces.
        self._batch = Batch(limit)
        # The sink's call per record: the C method itself, no Python frame in between.
        self.add = self._batch.append
        self._producer_state = (-1, -1, 0)  # aiokafka's until its sender sets them (idempotence)
        self._buffer: bytes | None = None
        self._closed = False

    def append(self, *, timestamp: int, key: bytes | None, value: bytes | None, headers: list[Header]) -> Any:
        """BatchBuilder's own call (producer.send() on an open batch): truthy when added."""
        if self._closed:
            return None
        if self._batch.append(timestamp, key, value, headers):
            return True
        self._closed = True
        return None

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        # aiokafka sets it once, before the first send (a retry resends the same bytes); a change after
        # that would send stale sequence numbers, so it fails loudly, as aiokafka's own builder does.
        if self._buffer is not None:
            raise RuntimeError("the producer state of a built batch cannot change")
        self._producer_state = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytes:
        self._closed = True
        if self._buffer is None:  # a batch sent again (a retry) keeps its bytes, as aiokafka's does
            self._buffer = self._batch.build(*self._producer_state, False)
        return self._buffer

    def size(self) -> int:
        return len(self._buffer) if self._buffer is not None else self._batch.size()

    def record_count(self) -> int:
        return self._batch.count


class _AiokafkaBatch(BatchBuilder):  # type: ignore[misc]
    """aiokafka's own builder with the sink's `add`."""

    def add(self, timestamp: int, key: bytes | None, value: bytes | None, headers: list[Header]) -> bool:
        return self.append(timestamp=timestamp, key=key, value=value, headers=headers) is not None


RecordBatch = CRecordBatch | _AiokafkaBatch


def new_batch(limit: int) -> RecordBatch:
    """An empty batch of at most `limit` bytes (its first record is always taken, whatever its size)."""
    if _C_BATCHES:
        return CRecordBatch(limit)
    return _AiokafkaBatch(limit, 0)
