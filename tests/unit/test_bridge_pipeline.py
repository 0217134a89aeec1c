"""The at-least-once pipeline with fake sources and sinks: retries, dead letters, settle order, drain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mqtt_operator.bridge import pipeline as pipeline_module
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.pipeline import TRANSIENT, Delivery, Pipeline, TransientError
from mqtt_operator.bridge.records import Reject, Skip


class FakeSource:
    name = "fake"

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = list(batches)
        self.settled: list[list[int]] = []
        self.stopped = False

    async def take(self) -> list[int]:
        if not self.batches:
            return []
        await asyncio.sleep(0)
        return self.batches.pop(0)

    async def settle(self, items: list[int]) -> None:
        self.settled.append(list(items))

    def origin(self, item: int) -> float:
        return 0.0

    def stop_taking(self) -> None:
        self.stopped = True


class FakeSink:
    name = "fake-sink"

    def __init__(
        self, script: dict[int, list[Delivery]] | None = None, delays: dict[int, float] | None = None
    ):
        self.script = script or {}  # item -> outcomes of its successive attempts
        self.delays = delays or {}
        self.calls: list[list[int]] = []
        self.recovered = 0
        self.raise_next = 0

    async def deliver(self, records: Sequence[int]) -> list[Delivery]:
        self.calls.append(list(records))
        if self.raise_next:
            self.raise_next -= 1
            raise TransientError("down")
        await asyncio.sleep(max((self.delays.get(r, 0.0) for r in records), default=0.0))
        return [self.script[r].pop(0) if self.script.get(r) else None for r in records]

    async def recover(self) -> None:
        self.recovered += 1


class FakeDeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    async def send(self, items: list[tuple[int, str]]) -> None:
        self.items.extend(items)


def mapping(item: int) -> int | Skip | Reject:
    if item < 0:
        return Skip("negative")
    if item >= 1000:
        return Reject("too big")
    return item


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "backoff", lambda attempt, **_: 0.0)


def run(source: FakeSource, sink: FakeSink, max_batches: int = 4) -> tuple[FakeDeadLetters, Metrics]:
    dead = FakeDeadLetters()
    metrics = Metrics()

    async def go() -> None:
        await Pipeline("up", source, mapping, sink, dead, metrics, max_batches=max_batches).run()

    asyncio.run(go())
    return dead, metrics


def test_transient_failures_are_retried_until_delivered() -> None:
    source = FakeSource([[1, 2, 3]])
    sink = FakeSink({2: [TRANSIENT, TRANSIENT]})
    sink.raise_next = 1
    dead, metrics = run(source, sink)
    assert sink.calls == [[1, 2, 3], [1, 2, 3], [2], [2]]
    assert sink.recovered >= 1
    assert source.settled == [[1, 2, 3]]
    assert dead.items == []
    assert metrics.value("bridge_delivered_total", direction="up") == 3
    assert metrics.value("bridge_failed_total", direction="up", kind="transient") == 5


def test_rejected_and_permanently_failed_go_to_the_dead_letter_and_are_settled() -> None:
    source = FakeSource([[1, 1000, 2, -5]])
    sink = FakeSink({2: ["refused by the target"]})
    dead, metrics = run(source, sink)
    assert sorted(dead.items) == [(2, "refused by the target"), (1000, "too big")]
    assert source.settled == [[1, 1000, 2, -5]]
    assert metrics.value("bridge_delivered_total", direction="up") == 1
    assert metrics.value("bridge_skipped_total", direction="up") == 1
    assert metrics.value("bridge_failed_total", direction="up", kind="permanent") == 1


def test_batches_settle_in_the_order_they_were_taken() -> None:
    # The first batch is the slowest to deliver; its acknowledgement must still go first.
    source = FakeSource([[1], [2], [3], [4]])
    sink = FakeSink(delays={1: 0.05, 2: 0.02})
    run(source, sink)
    assert source.settled == [[1], [2], [3], [4]]


def test_ordered_mode_has_one_batch_in_flight() -> None:
    source = FakeSource([[1], [2], [3]])
    sink = FakeSink(delays={1: 0.02})
    in_flight: list[int] = []
    original = sink.deliver

    async def deliver(records: Sequence[int]) -> list[Delivery]:
        in_flight.append(len(sink.calls))
        result = await original(records)
        in_flight.pop()
        assert not in_flight
        return result

    sink.deliver = deliver  # type: ignore[method-assign]
    run(source, sink, max_batches=1)
    assert source.settled == [[1], [2], [3]]
