"""RocketMQ -> MQTT's dead letter: RocketMQ's own dead-letter queue of the task's consumer group.

A message that can never be published to MQTT (its topic template cannot be filled, the broker
refuses the publish) is forwarded with ForwardMessageToDeadLetterQueue. The broker writes it, body,
tag, keys and properties unchanged, to the topic `%DLQ%<consumerGroup>`, which it creates on the
first forward (RocketMQ 5.5.0 did, with topic auto-creation off), and where users read it with
RocketMQ's own tools. RocketMQ has no field for a reason: the reason is in the worker's log, with
the message id.

- Forwarded: counted in `bridge_dead_lettered_total`.
- A forward that fails for now (the proxy away, a timeout, refused credentials or permissions the
  user can fix) is retried with backoff, each failure counted in `bridge_failed_total{kind=
  "transient"}`, for as long as the message stays invisible (the source extends that while the
  proxy answers). Once its receipt handle has expired the forward can never work, and neither can
  its acknowledgement: RocketMQ delivers the message to the group again, and it is dead-lettered
  then. Nothing is dropped for that.
- A forward the proxy refuses for good (a request it calls bad, an operation it does not
  implement) is logged with the message's reason and counted in `bridge_dropped_total`; the
  message is then acknowledged like every other one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.pipeline import backoff
from mqtt_operator.bridge.rocketmq_client import Status
from mqtt_operator.bridge.rocketmq_mapping import RocketMQMessage
from mqtt_operator.bridge.rocketmq_source import RocketMQSource

log = logging.getLogger(__name__)

# Forwards in flight at once (one request per message: the protocol has no batch form).
IN_FLIGHT: Final = 16
# Refusals a user can lift (credentials, permissions, a missing group): retried like transient ones.
RETRIED_CODES: Final = frozenset(
    {
        "UNAUTHORIZED",
        "FORBIDDEN",
        "PAYMENT_REQUIRED",
        "NOT_FOUND",
        "TOPIC_NOT_FOUND",
        "CONSUMER_GROUP_NOT_FOUND",
    }
)
# The receipt handle has expired: the message comes to the group again.
EXPIRED: Final = "INVALID_RECEIPT_HANDLE"
# At most this many (message id, reason) pairs in one log line.
LOGGED_MESSAGES: Final = 50


def dead_letter_queue(group: str) -> str:
    """The topic RocketMQ forwards a consumer group's dead letters to."""
    return f"%DLQ%{group}"


def retryable(status: Status) -> bool:
    """A failed forward that may work later (with the same receipt handle)."""
    if status.code == EXPIRED:
        return False
    return status.kind == "transient" or (status.kind == "route" and status.code in RETRIED_CODES)


def describe(msg: RocketMQMessage) -> dict[str, object]:
    return {
        "message_id": msg.message_id,
        "keys": list(msg.keys),
        "tag": msg.tag,
        "bytes": len(msg.body),
        "attempt": msg.attempt,
    }


def _listed(items: list[tuple[RocketMQMessage, str]]) -> list[dict[str, str]]:
    return [{"message_id": msg.message_id, "reason": str(reason)} for msg, reason in items[:LOGGED_MESSAGES]]


class RocketMQDeadLetters:
    def __init__(
        self, direction: str, source: RocketMQSource, metrics: Metrics, *, in_flight: int = IN_FLIGHT
    ) -> None:
        self.direction = direction
        self.source = source
        self.topic = dead_letter_queue(source.spec.consumer_group)
        self._slots = asyncio.Semaphore(in_flight)
        self._dead = metrics.dead_lettered.labels(direction=direction)
        self._dropped = metrics.dropped.labels(direction=direction)
        self._transient = metrics.failed.labels(direction=direction, kind="transient")

    async def _forward(self, msg: RocketMQMessage) -> Status:
        async with self._slots:
            return await self.source.forward_to_dead_letter(msg)

    async def send(self, items: list[tuple[RocketMQMessage, str]]) -> None:
        pending = items
        forwarded: list[tuple[RocketMQMessage, str]] = []
        attempt = 0
        while pending:
            statuses = await asyncio.gather(*(self._forward(msg) for msg, _ in pending))
            retry: list[tuple[RocketMQMessage, str]] = []
            why = ""
            for (msg, reason), status in zip(pending, statuses, strict=True):
                if status.kind == "ok":
                    forwarded.append((msg, reason))
                elif retryable(status) and self.source.still_invisible(msg):
                    retry.append((msg, reason))
                    why = status.text
                elif retryable(status) or status.code == EXPIRED:
                    self._comes_again(msg, reason, status)
                else:
                    self._refused(msg, reason, status)
            if retry:
                attempt += 1
                self._transient.inc(len(retry))
                delay = backoff(attempt)
                log.warning(
                    "forwarding to the RocketMQ dead-letter queue failed, retrying",
                    extra={
                        "direction": self.direction,
                        "topic": self.topic,
                        "messages": len(retry),
                        "attempt": attempt,
                        "error": why,
                        "retry_in_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
            pending = retry
        if forwarded:
            self._dead.inc(len(forwarded))
            log.warning(
                "messages dead-lettered",
                extra={
                    "direction": self.direction,
                    "count": len(forwarded),
                    "topic": self.topic,
                    "reason": str(forwarded[0][1]),
                    # The dead-letter queue keeps no reason: the log says why each message is there.
                    "messages": _listed(forwarded),
                    **describe(forwarded[0][0]),
                },
            )

    def _comes_again(self, msg: RocketMQMessage, reason: str, status: Status) -> None:
        log.warning(
            "undeliverable message not dead-lettered yet: its receipt handle expired, RocketMQ delivers it "
            "again and it is dead-lettered then",
            extra={
                "direction": self.direction,
                "reason": str(reason),
                "dead_letter_error": status.text,
                **describe(msg),
            },
        )

    def _refused(self, msg: RocketMQMessage, reason: str, status: Status) -> None:
        self._dropped.inc()
        log.error(
            "undeliverable message dropped: RocketMQ refused to forward it to the dead-letter queue",
            extra={
                "direction": self.direction,
                "topic": self.topic,
                "reason": str(reason),
                "dead_letter_error": status.text,
                **describe(msg),
            },
        )
