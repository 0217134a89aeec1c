"""Batches for the function: a source wrapper that gathers MQTT messages into calls of a set size.

`take()` hands over `max_messages` messages as soon as that many have arrived, or fewer once
`max_wait` seconds have passed since the first message of the batch arrived (the cloud trigger's
"batch size / batch window"). The messages held meanwhile are the wrapper's state, not a local
variable of a waiting call, and the inner source's `take()` runs as its own task that outlives a
cancelled wait: cancelling `take()` never loses a message already taken from the inner source, the
next `take()` hands it over. `stop_taking()` flushes: what is held is handed over at once.

All messages of one batch come from one MQTT connection (their PUBACKs go to it): messages held
from a connection that has since been lost are dropped before they are handed over. The broker
sends them again on the resumed session, unacknowledged as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mqtt_operator.bridge.mqtt_source import MqttBatch, MqttSource
from mqtt_operator.bridge.records import Message

log = logging.getLogger(__name__)


class BatchingSource:
    def __init__(self, inner: MqttSource, max_messages: int, max_wait: float) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.inner = inner
        self.name = inner.name
        self.max_messages = max_messages
        self.max_wait = max_wait
        self._held = MqttBatch()
        self._deadline = 0.0  # loop time when the held batch must go, whatever its size
        self._pending: asyncio.Future[list[Message]] | None = None  # the inner take() in progress
        self._stopping = False

    @property
    def held(self) -> int:
        return len(self._held)

    async def take(self) -> list[Message]:
        loop = asyncio.get_running_loop()
        while True:
            if self._pending is not None and self._pending.done():
                self._absorb(loop.time())
            self._drop_stale()
            held = self._held
            if held and (self._stopping or len(held) >= self.max_messages or loop.time() >= self._deadline):
                return self._hand_over()
            if self._stopping:
                return []
            if self._pending is None:
                self._pending = asyncio.ensure_future(self.inner.take(self.max_messages - len(held)))
            timeout = self._deadline - loop.time() if held else None
            await asyncio.wait((self._pending,), timeout=timeout)

    def _absorb(self, now: float) -> None:
        """Add what the finished inner take() got to the held batch."""
        assert self._pending is not None
        pending, self._pending = self._pending, None
        got = pending.result()
        if not got:
            self._stopping = True  # the inner source stopped giving
            return
        conn = getattr(got, "conn", None)
        if self._held and conn is not self._held.conn:
            self._drop(f"{len(self._held)} held messages of a lost connection")
        if not self._held:
            self._held.conn = conn
            # From the moment the worker received the batch's first message (it may have waited in
            # the inner source while the pipeline's window was full).
            waited = max(time.time() - (got[0].received or time.time()), 0.0)
            self._deadline = now + max(self.max_wait - waited, 0.0)
        self._held.extend(got)

    def _hand_over(self) -> MqttBatch:
        batch, self._held = self._held, MqttBatch()
        return batch

    def _drop_stale(self) -> None:
        if self._held and self._held.conn is not self.inner.conn:
            self._drop(f"{len(self._held)} held messages of a lost connection")

    def _drop(self, what: str) -> None:
        log.info("dropping %s: the broker sends them again on the resumed session", what)
        self._held = MqttBatch()

    async def settle(self, items: list[Message]) -> None:
        await self.inner.settle(items)

    def origin(self, item: Message) -> float:
        return self.inner.origin(item)

    def stop_taking(self) -> None:
        """Hand over what is held at once; take nothing more from the inner source."""
        self._stopping = True
        self.inner.stop_taking()
