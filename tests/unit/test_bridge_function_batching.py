"""The function batcher: full batches at once, partial ones after the wait, nothing lost when a wait
is cancelled or the worker stops, nothing handed over from a lost connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mqtt_operator.bridge.batching import BatchingSource
from mqtt_operator.bridge.mqtt_source import MqttBatch
from mqtt_operator.bridge.records import Message


class FakeMqttSource:
    """The parts of MqttSource the batcher uses: take(limit), conn, settle, origin, stop_taking."""

    name = "mqtt"

    def __init__(self) -> None:
        self.conn: object = object()
        self.buffer: list[Message] = []
        self.arrived = asyncio.Event()
        self.stopping = False
        self.settled: list[list[Message]] = []

    def push(self, *seqs: int) -> None:
        self.buffer.extend(Message("t", b"%d" % s, 1, False, False, s, None, time.time()) for s in seqs)
        self.arrived.set()

    async def take(self, limit: int | None = None) -> list[Message]:
        while not self.buffer:
            if self.stopping:
                return []
            self.arrived.clear()
            await self.arrived.wait()
        if self.stopping:
            return []
        cap = limit or len(self.buffer)
        batch = MqttBatch(self.buffer[:cap])
        del self.buffer[:cap]
        batch.conn = self.conn
        return batch

    async def settle(self, items: list[Message]) -> None:
        self.settled.append(items)

    def origin(self, item: Message) -> float:
        return item.received

    def stop_taking(self) -> None:
        self.stopping = True
        self.arrived.set()


def batcher(max_messages: int, max_wait: float) -> tuple[BatchingSource, FakeMqttSource]:
    inner = FakeMqttSource()
    return BatchingSource(inner, max_messages, max_wait), inner  # type: ignore[arg-type]


def seqs(batch: list[Message]) -> list[int]:
    return [m.packet_id for m in batch]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_full_batches_at_once_then_the_rest_after_the_wait() -> None:
    async def go() -> None:
        source, inner = batcher(5, 0.3)
        inner.push(*range(12))
        started = time.monotonic()
        assert seqs(await source.take()) == [0, 1, 2, 3, 4]
        assert seqs(await source.take()) == [5, 6, 7, 8, 9]
        last = await source.take()
        assert seqs(last) == [10, 11]
        assert time.monotonic() - started >= 0.25  # the partial batch waited for max_wait
        assert getattr(last, "conn", None) is inner.conn

    run(go())


def test_messages_arriving_during_the_wait_join_the_batch() -> None:
    async def go() -> None:
        source, inner = batcher(4, 5.0)
        inner.push(1)
        take = asyncio.create_task(source.take())
        for s in (2, 3, 4):
            await asyncio.sleep(0.01)
            inner.push(s)
        assert seqs(await asyncio.wait_for(take, 2)) == [1, 2, 3, 4]

    run(go())


def test_a_cancelled_take_loses_nothing() -> None:
    async def go() -> None:
        source, inner = batcher(10, 30.0)
        inner.push(1, 2)
        take = asyncio.create_task(source.take())
        await asyncio.sleep(0.05)
        assert source.held == 2
        take.cancel()
        await asyncio.gather(take, return_exceptions=True)
        # A cancelled wait for the inner source does not drop what arrives next either.
        take = asyncio.create_task(source.take())
        await asyncio.sleep(0.01)
        take.cancel()
        await asyncio.gather(take, return_exceptions=True)
        inner.push(3)
        await asyncio.sleep(0.01)
        source.stop_taking()  # flushes what is held
        assert seqs(await source.take()) == [1, 2, 3]
        assert await source.take() == []

    run(go())


def test_stop_taking_flushes_a_waiting_take() -> None:
    async def go() -> None:
        source, inner = batcher(10, 30.0)
        inner.push(7)
        take = asyncio.create_task(source.take())
        await asyncio.sleep(0.05)
        assert not take.done()
        source.stop_taking()
        assert seqs(await asyncio.wait_for(take, 1)) == [7]
        assert await source.take() == []
        assert inner.stopping

    run(go())


def test_messages_of_a_lost_connection_are_not_handed_over() -> None:
    async def go() -> None:
        source, inner = batcher(3, 30.0)
        inner.push(1, 2)
        take = asyncio.create_task(source.take())
        await asyncio.sleep(0.05)
        inner.conn = object()  # reconnected: the held messages come again on the new connection
        inner.push(1, 2, 3)
        batch = await asyncio.wait_for(take, 1)
        assert seqs(batch) == [1, 2, 3]
        assert getattr(batch, "conn", None) is inner.conn

    run(go())


def test_settle_and_origin_go_to_the_inner_source() -> None:
    async def go() -> None:
        source, inner = batcher(1, 1.0)
        inner.push(1)
        batch = await source.take()
        await source.settle(batch)
        assert inner.settled == [batch]
        assert source.origin(batch[0]) == batch[0].received

    run(go())
