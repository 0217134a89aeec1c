"""The RocketMQ source: a consumer group's messages, acknowledged only after the MQTT side confirmed them.

Receivers long-poll the proxy (ReceiveMessage, up to 32 messages each: two always, up to
`receivers` while receives come back full, one on ordered routes) while fewer than `max_held`
messages are held, i.e. received and not acknowledged yet. A received message stays invisible to
the group for `invisible_s` seconds; it is acknowledged (AckMessage, many per request) when the
pipeline settles it, after the MQTT PUBACK of it and of everything taken before it. The
acknowledgement runs in the background (close() waits for it), so the pipeline's window moves on.
So:

- A worker that stops or crashes leaves its unacknowledged messages to the group: they are
  delivered again once their invisible time is over (to this worker when it comes back, or to
  another replica). At least once, never lost.
- A message held for more than half its invisible time (the MQTT broker slow or away) gets more
  (ChangeInvisibleDuration), so it is not delivered again while it is still being worked on.
- An acknowledgement that fails is retried until the message's invisible time is over; after that
  the message comes again (a duplicate).
- Ordered routes: one receive in flight and one pipeline batch; a FIFO consumer group hands out a
  message group's next messages only after the previous ones were acknowledged.

After a failed receive the client's settings are sent again before the next one: a restarted proxy
has lost them and refuses every receive until then ("settings is null").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import RocketMQEndpoint, RocketMQToMqtt
from mqtt_operator.bridge.pipeline import backoff
from mqtt_operator.bridge.rocketmq_client import MIN_INVISIBLE_S, RECEIVE_BATCH, RocketMQConsumer, Status
from mqtt_operator.bridge.rocketmq_mapping import RocketMQMessage

log = logging.getLogger(__name__)

INVISIBLE_S: Final = 30
MAX_HELD: Final = 2000
# Receives in flight: ALWAYS_RECEIVING long-poll all the time, up to RECEIVERS while there is a
# backlog (the last receive came back full). Each receive costs the broker a pop and a checkpoint
# write, so at light load a few receives collecting several messages each beat many collecting one:
# with 8 always polling at 1,000 msg/s the broker fell behind by seconds on this machine.
RECEIVERS: Final = 8
ALWAYS_RECEIVING: Final = 2
MAX_BATCH: Final = 1000
# How often held messages are checked for their invisible time.
RENEW_EVERY_S: Final = 1.0
RENEW_IN_FLIGHT: Final = 16


class RocketMQSource:
    name = "rocketmq"

    def __init__(
        self,
        endpoint: RocketMQEndpoint,
        spec: RocketMQToMqtt,
        *,
        invisible_s: int = INVISIBLE_S,
        max_held: int = MAX_HELD,
        receivers: int | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.spec = spec
        self.invisible_s = max(invisible_s, MIN_INVISIBLE_S)
        self.max_held = max_held
        self.receivers = 1 if spec.ordered else (receivers or RECEIVERS)
        self.max_batch = max_batch
        self.consumer = RocketMQConsumer(endpoint, spec.topic, spec.consumer_group, spec.tag_filter)
        # Received and not acknowledged (insertion order: oldest first), and not taken yet.
        self._held: dict[RocketMQMessage, None] = {}
        self._buffer: list[RocketMQMessage] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # Set while receives come back full: the extra receivers poll too.
        self._backlog = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._connect_lock = asyncio.Lock()
        self._connected = False
        self._failures = 0
        self._warned_not_fifo = False
        # Closing: failed acknowledgements are no longer retried.
        self._closing = False
        self._acks: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self.consumer.ready

    @property
    def last_error(self) -> str | None:
        return self.consumer.last_error

    # --- the program's Component ---

    def readiness(self) -> Readiness:
        return Readiness("rocketmq consumer", self.ready, self.last_error)

    async def probe(self) -> None:
        """Nothing to ask: the receive loops report the proxy's state."""

    async def start(self) -> None:
        for index in range(self.receivers):
            self._tasks.append(
                asyncio.create_task(
                    self._receive_loop(index >= ALWAYS_RECEIVING), name=f"rocketmq-receive-{index}"
                )
            )
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="rocketmq-renew"))

    def _update_room(self) -> None:
        if len(self._held) < self.max_held:
            self._room.set()
        else:
            self._room.clear()

    async def _connect(self) -> bool:
        status = await self.consumer.connect()
        if status.kind != "ok":
            return False
        log.info(
            "RocketMQ consumer connected",
            extra={
                "topic": self.spec.topic,
                "group": self.spec.consumer_group,
                "fifo_group": self.consumer.fifo,
            },
        )
        if self.spec.ordered and self.consumer.fifo is False and not self._warned_not_fifo:
            self._warned_not_fifo = True
            log.warning(
                "the route is ordered but its consumer group is not a FIFO group: RocketMQ will not keep "
                "the order; create the group with consumeMessageOrderly (FIFO)",
                extra={"group": self.spec.consumer_group},
            )
        return True

    async def _receive_loop(self, on_backlog: bool) -> None:
        consumer = self.consumer
        attempt = 0
        while not self._stopping:
            await self._room.wait()
            if on_backlog:
                await self._backlog.wait()
            if self._stopping:
                return
            if not self._connected:
                async with self._connect_lock:
                    if not self._connected:
                        self._connected = await self._connect()
                if not self._connected:
                    attempt += 1
                    self._failed(consumer.last_error or "cannot connect")
                    await asyncio.sleep(backoff(attempt, base=0.5, cap=10))
                    continue
            # After a failed receive, this sends the client's settings again first.
            status, messages = await consumer.receive(self.invisible_s)
            if len(messages) >= RECEIVE_BATCH:
                self._backlog.set()
            elif status.kind == "ok":
                self._backlog.clear()
            if messages:
                held = self._held
                for msg in messages:
                    held[msg] = None
                self._buffer.extend(messages)
                self._arrived.set()
                self._update_room()
            if status.kind == "ok":
                attempt = 0
                if self._failures:
                    self._failures = 0
                    log.info("RocketMQ receives work again", extra={"group": self.spec.consumer_group})
                continue
            attempt += 1
            self._failed(status.text)
            await asyncio.sleep(backoff(attempt, base=0.5, cap=10))

    def _failed(self, why: str) -> None:
        self._failures += 1
        # Once at first, then every tenth time: an outage must not flood the log.
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "RocketMQ receive failed, retrying",
                extra={"error": why, "failures": self._failures, "group": self.spec.consumer_group},
            )

    async def take(self) -> list[RocketMQMessage]:
        """What has arrived (at least one message), or [] once stop_taking() was called."""
        while not self._buffer:
            if self._stopping:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        if self._stopping:
            return []  # not handed out: never acknowledged, they come to the group again
        buffer = self._buffer
        batch = buffer[: self.max_batch]
        del buffer[: len(batch)]
        return batch

    async def settle(self, items: list[RocketMQMessage]) -> None:
        """Acknowledge `items` in the background (close() waits for it): the pipeline's window moves on.

        The messages count as held until acknowledged, so `max_held` still bounds what is unacknowledged.
        """
        task = asyncio.create_task(self._acknowledge(items))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _acknowledge(self, items: list[RocketMQMessage]) -> None:
        """Failed acknowledgements are retried while the messages are still invisible."""
        pending = items
        attempt = 0
        try:
            while pending:
                failed = await self.consumer.ack(pending)
                retry = [msg for msg, status in failed if self._retryable(msg, status)]
                if failed and attempt == 0:
                    log.warning(
                        "RocketMQ acknowledgement failed; retrying while the messages are invisible, else "
                        "they are delivered again",
                        extra={"messages": len(failed), "error": failed[0][1].text},
                    )
                if not retry:
                    break
                attempt += 1
                await asyncio.sleep(backoff(attempt, base=0.2, cap=5))
                pending = retry
        finally:
            held = self._held
            for msg in items:
                held.pop(msg, None)
            self._update_room()

    def _retryable(self, msg: RocketMQMessage, status: Status) -> bool:
        if status.kind != "transient" or status.code == "INVALID_RECEIPT_HANDLE":
            return False
        return self.still_invisible(msg)

    def still_invisible(self, msg: RocketMQMessage) -> bool:
        """`msg`'s receipt handle still works: it is invisible to the group for more than a second."""
        return msg.deadline - time.monotonic() > 1.0 and not self._closing

    async def forward_to_dead_letter(self, msg: RocketMQMessage) -> Status:
        """Move `msg` to its consumer group's dead-letter queue (`%DLQ%<group>`).

        The proxy settles a forwarded message itself (RocketMQ 5.5.0: one forwarded and never
        acknowledged did not come again), so it is no longer held: not renewed, and it leaves room.
        It is still acknowledged when the pipeline settles its batch, which the proxy answers OK; that
        ack is kept for a proxy that would not settle it.
        """
        status = await self.consumer.forward_to_dead_letter(msg)
        if status.kind == "ok":
            self._held.pop(msg, None)
            self._update_room()
        return status

    def origin(self, item: RocketMQMessage) -> float:
        return item.born

    async def _renew_loop(self) -> None:
        slots = asyncio.Semaphore(RENEW_IN_FLIGHT)
        half = self.invisible_s / 2

        async def renew(msg: RocketMQMessage) -> None:
            async with slots:
                if msg not in self._held:
                    return
                status = await self.consumer.change_invisible(msg, self.invisible_s)
            if status.kind != "ok":
                log.warning(
                    "could not extend a held RocketMQ message's invisible time; it may be delivered again",
                    extra={"message_id": msg.message_id, "error": status.text},
                )

        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            now = time.monotonic()
            due = [msg for msg in self._held if msg.deadline - now < half]
            if due:
                await asyncio.gather(*(renew(msg) for msg in due))

    def stop_taking(self) -> None:
        """Stop receiving; what is not taken yet is never acknowledged and comes to the group again."""
        self._stopping = True
        for task in self._tasks:
            if task.get_name().startswith("rocketmq-receive"):
                task.cancel()
        self._arrived.set()
        self._room.set()
        self._backlog.set()

    async def close(self) -> None:
        """Wait for the acknowledgements under way (the worker bounds close() by its drain budget)."""
        self._stopping = True
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.consumer.close()
