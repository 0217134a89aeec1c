"""The at-least-once pipeline: source -> mapping -> sink, with dead letters, retries and ordered settling.

Every route of the bridge program is one `Pipeline` over a `Source` (MQTT shared subscription,
Kafka consumer group, RocketMQ consumer), a mapping (a pure function: `kafka_mapping.py`,
`rocketmq_mapping.py`, `function_events.py`, `device_events.py`) and a `Sink` (Kafka producer,
MQTT publisher, RocketMQ producer, HTTP function):

1. `source.take()` hands over what has arrived (a batch: everything buffered, so batches grow
   with the load and stay single messages when it is light).
2. The mapping turns each message into a record, a `Skip` or a `Reject`.
3. `sink.deliver(records)` returns, per record, a `Delivery`: None (confirmed), a reason (can
   never be delivered) or `TRANSIENT`. Transient failures are retried with backoff, the sink reconnecting
   after the second one, for as long as it takes: the message is not acknowledged meanwhile, so
   the source (the broker's session, the consumer group's offset) keeps it.
4. Rejected and permanently failed messages go to the dead letter (`DeadLetters`), with their reason.
5. The batch is settled (`source.settle`: MQTT PUBACKs, Kafka offset commit) only when it and
   every batch taken before it are done, so acknowledgements go out in arrival order.

Up to `max_batches` batches are in flight at once (the Kafka round trip of one overlaps the
mapping of the next); with `ordered` there is one, so a retried batch can never be overtaken.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.records import Reject, Skip

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")
R_in = TypeVar("R_in", contravariant=True)


class _Transient:
    def __repr__(self) -> str:
        return "TRANSIENT"


TRANSIENT: Final = _Transient()
Delivery = str | _Transient | None  # None: delivered; str: never deliverable, why; TRANSIENT: retry


class TransientError(Exception):
    """The sink cannot deliver right now (not connected, timed out): retry the whole call later."""


class Source(Protocol[M]):
    name: str

    async def take(self) -> list[M]:
        """At least one message, or [] once `stop_taking()` was called."""
        ...

    async def settle(self, items: list[M]) -> None:
        """Acknowledge / commit `items` (every one delivered, dead-lettered or skipped)."""
        ...

    def origin(self, item: M) -> float:
        """The message's origin time (epoch seconds) for the end-to-end latency."""
        ...

    def stop_taking(self) -> None: ...


class Sink(Protocol[R_in]):
    name: str

    async def deliver(self, records: Sequence[R_in]) -> list[Delivery]: ...

    async def recover(self) -> None:
        """Reconnect after repeated transient failures."""
        ...


class DeadLetters(Protocol[M]):
    async def send(self, items: list[tuple[M, str]]) -> None:
        """Write each item with its reason to the dead letter (retrying transient failures)."""
        ...


# Reconnecting to the broker: soon after it is back, because after a restart it holds devices out until
# the workers' shared subscriptions are renewed (spec.persistence.resubscribeWait), and a connection
# attempt costs the broker little.
BROKER_RECONNECT_CAP_S = 5.0


def backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter on its upper half."""
    high = min(cap, base * 2 ** min(attempt, 16))
    return float(high / 2 + random.random() * high / 2)


async def deliver_with_retry(
    sink: Sink[R],
    records: Sequence[R],
    *,
    on_transient: Callable[[int, str], None],
    stopping: Callable[[], bool] = lambda: False,
) -> list[tuple[int, str]]:
    """Deliver until every record is confirmed or failed for good: the (index, reason) of the latter.

    Raises asyncio.CancelledError only when cancelled (shutdown deadline).
    """
    pending = list(range(len(records)))
    permanent: list[tuple[int, str]] = []
    attempt = 0
    while pending:
        why = ""
        try:
            outcomes = await sink.deliver([records[i] for i in pending] if attempt else records)
        except TransientError as err:
            outcomes = [TRANSIENT] * len(pending)
            why = str(err)
        retry: list[int] = []
        for index, outcome in zip(pending, outcomes, strict=True):
            if outcome is None:
                continue
            if outcome is TRANSIENT:
                retry.append(index)
            else:
                assert isinstance(outcome, str)
                permanent.append((index, outcome))
        if retry:
            attempt += 1
            why = why or getattr(sink, "last_error", None) or "the sink could not confirm"
            on_transient(len(retry), why)
            delay = backoff(attempt)
            log.warning(
                "delivery failed, retrying",
                extra={
                    "sink": sink.name,
                    "messages": len(retry),
                    "attempt": attempt,
                    "error": why,
                    "retry_in_s": round(delay, 2),
                },
            )
            await asyncio.sleep(delay)
            if attempt >= 2:
                await sink.recover()
        pending = retry
    return permanent


@dataclass(eq=False)
class _Batch(Generic[M]):
    items: list[M]
    done: bool = False
    delivered: int = 0
    skipped: int = 0
    dead: int = 0
    finished: float = field(default=0.0)


class Pipeline(Generic[M, R]):
    def __init__(
        self,
        direction: str,
        source: Source[M],
        mapping: Callable[[M], R | Skip | Reject],
        sink: Sink[R],
        dead_letters: DeadLetters[M],
        metrics: Metrics,
        *,
        max_batches: int = 4,
    ) -> None:
        self.direction = direction
        self.source = source
        self.mapping = mapping
        self.sink = sink
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.max_batches = max_batches
        self._window = asyncio.Semaphore(max_batches)
        self._inflight: deque[_Batch[M]] = deque()
        self._settle_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._settler: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.failure: BaseException | None = None
        labels = {"direction": direction}
        self._m_received = metrics.received.labels(**labels)
        self._m_delivered = metrics.delivered.labels(**labels)
        self._m_skipped = metrics.skipped.labels(**labels)
        self._m_in_flight = metrics.in_flight.labels(**labels)
        self._m_transient = metrics.failed.labels(direction=direction, kind="transient")
        self._m_permanent = metrics.failed.labels(direction=direction, kind="permanent")
        self._in_flight_count = 0

    async def run(self) -> None:
        """Take and process batches until the source stops giving; then wait for what is in flight."""
        self._settler = asyncio.create_task(self._settle_loop(), name=f"{self.direction}-settle")
        try:
            while True:
                await self._window.acquire()
                items = await self.source.take()
                if not items:
                    self._window.release()
                    break
                batch = _Batch(items)
                self._inflight.append(batch)
                self._idle.clear()
                self._in_flight_count += len(items)
                self._m_in_flight.set(self._in_flight_count)
                self._m_received.inc(len(items))
                task = asyncio.create_task(self._process(batch))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            await self._idle.wait()
        finally:
            if self._settler is not None:
                self._settler.cancel()

    @property
    def in_flight(self) -> int:
        """Messages taken and not settled yet."""
        return self._in_flight_count

    @property
    def idle(self) -> bool:
        """Every taken batch is settled."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Until every taken batch is settled."""
        await self._idle.wait()

    def cancel(self) -> None:
        """Abandon in-flight work (its messages stay unacknowledged in the source)."""
        for task in list(self._tasks):
            task.cancel()
        if self._settler is not None:
            self._settler.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failure = task.exception()
            log.error("pipeline batch failed unexpectedly", exc_info=self.failure)

    async def _process(self, batch: _Batch[M]) -> None:
        items = batch.items
        mapping = self.mapping
        records: list[R] = []
        positions: list[int] = []
        rejects: list[tuple[M, str]] = []
        skipped = 0
        for pos, item in enumerate(items):
            result = mapping(item)
            kind = type(result)
            if kind is Skip:
                skipped += 1
            elif kind is Reject:
                assert isinstance(result, Reject)
                rejects.append((item, result.reason))
            else:
                records.append(result)  # type: ignore[arg-type]
                positions.append(pos)
        failed = await deliver_with_retry(self.sink, records, on_transient=self._transient) if records else []
        if failed:
            self._m_permanent.inc(len(failed))
            for index, reason in failed:
                rejects.append((items[positions[index]], reason))
        if rejects:
            await self.dead_letters.send(rejects)
        batch.delivered = len(records) - len(failed)
        batch.skipped = skipped
        batch.dead = len(rejects)
        batch.done = True
        batch.finished = time.time()
        self._settle_wanted.set()

    def _transient(self, count: int, _why: str) -> None:
        self._m_transient.inc(count)

    async def _settle_loop(self) -> None:
        source = self.source
        origin = source.origin
        while True:
            await self._settle_wanted.wait()
            self._settle_wanted.clear()
            while self._inflight and self._inflight[0].done:
                batch = self._inflight[0]
                await source.settle(batch.items)
                self._inflight.popleft()
                self._window.release()
                self._in_flight_count -= len(batch.items)
                self._m_in_flight.set(self._in_flight_count)
                if batch.delivered:
                    self._m_delivered.inc(batch.delivered)
                if batch.skipped:
                    self._m_skipped.inc(batch.skipped)
                finished = batch.finished
                self.metrics.latency.observe_many(
                    (self.direction,), [finished - origin(item) for item in batch.items]
                )
            if not self._inflight:
                self._idle.set()
