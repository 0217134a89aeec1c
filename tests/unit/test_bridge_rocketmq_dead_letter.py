"""RocketMQ -> MQTT's dead letter without a RocketMQ: which failed forwards are retried, which mean the
message comes again and which drop it, and what is counted (a scripted consumer answers the forwards;
tests/integration/test_bridge_rocketmq.py forwards for real)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from mqtt_operator.bridge import rocketmq_dead_letter
from mqtt_operator.bridge.config import RocketMQEndpoint, RocketMQToMqtt
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.rocketmq_client import OK, Status
from mqtt_operator.bridge.rocketmq_dead_letter import RocketMQDeadLetters, dead_letter_queue, retryable
from mqtt_operator.bridge.rocketmq_mapping import RocketMQMessage
from mqtt_operator.bridge.rocketmq_source import RocketMQSource
from mqtt_operator.workers.scrape import REPLICATION_METRICS, parse_counters

DOWN = "rocketmq_to_mqtt"
AWAY = Status("transient", "RocketMQ proxy not reachable (UNAVAILABLE: down)")
EXPIRED = Status("transient", "RocketMQ answered INVALID_RECEIPT_HANDLE: expired", "INVALID_RECEIPT_HANDLE")
FORBIDDEN = Status("route", "RocketMQ refused the credentials or their permissions", "FORBIDDEN")
UNSUPPORTED = Status("route", "RocketMQ answered NOT_IMPLEMENTED: no", "NOT_IMPLEMENTED")


class ScriptedConsumer:
    """Answers each message's forwards from its script (then OK); records the forwards."""

    def __init__(self, script: dict[str, list[Status]]) -> None:
        self.script = script
        self.forwards: list[str] = []

    async def forward_to_dead_letter(self, msg: RocketMQMessage) -> Status:
        self.forwards.append(msg.message_id)
        answers = self.script.get(msg.message_id) or []
        return answers.pop(0) if answers else OK


def setup(
    script: dict[str, list[Status]],
) -> tuple[RocketMQSource, ScriptedConsumer, RocketMQDeadLetters, Metrics]:
    spec = RocketMQToMqtt.model_validate(
        {"topic": "pile-cmd", "consumerGroup": "cmd-devices", "mqttTopic": "a/{key}"}
    )
    source = RocketMQSource(RocketMQEndpoint(endpoints="127.0.0.1:1"), spec)
    consumer = ScriptedConsumer(script)
    source.consumer = consumer  # type: ignore[assignment]
    metrics = Metrics()
    return source, consumer, RocketMQDeadLetters(DOWN, source, metrics), metrics


def held(source: RocketMQSource, *ids: str, deadline_in: float = 30) -> list[tuple[RocketMQMessage, str]]:
    items = []
    for message_id in ids:
        msg = RocketMQMessage(b"{}", message_id=message_id, deadline=time.monotonic() + deadline_in)
        source._held[msg] = None
        items.append((msg, "the message has no key for {key} in the topic template"))
    return items


def figures(metrics: Metrics) -> dict[str, float]:
    return {
        "deadLettered": metrics.value("bridge_dead_lettered_total", direction=DOWN),
        "dropped": metrics.value("bridge_dropped_total", direction=DOWN),
        "transient": metrics.value("bridge_failed_total", direction=DOWN, kind="transient"),
    }


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rocketmq_dead_letter, "backoff", lambda attempt: 0.01)


def test_the_dead_letter_queue_is_the_consumer_groups() -> None:
    assert dead_letter_queue("cmd-devices") == "%DLQ%cmd-devices"
    assert setup({})[2].topic == "%DLQ%cmd-devices"


def test_which_failed_forwards_are_retried() -> None:
    assert retryable(AWAY) and retryable(FORBIDDEN)
    assert not retryable(EXPIRED)  # the handle is spent: the message comes to the group again
    assert not retryable(UNSUPPORTED) and not retryable(Status("message", "too large", "MESSAGE_CORRUPTED"))


def test_forwarded_messages_are_counted_and_no_longer_held(caplog: pytest.LogCaptureFixture) -> None:
    source, consumer, dead, metrics = setup({})
    items = held(source, "m1", "m2")
    with caplog.at_level(logging.WARNING):
        asyncio.run(dead.send(items))
    assert consumer.forwards == ["m1", "m2"]
    assert figures(metrics) == {"deadLettered": 2, "dropped": 0, "transient": 0}
    # Settled by the proxy: not renewed any more, and room for new messages.
    assert not source._held
    line = next(r for r in caplog.records if r.getMessage() == "messages dead-lettered")
    assert line.__dict__["topic"] == "%DLQ%cmd-devices"
    assert [m["message_id"] for m in line.__dict__["messages"]] == ["m1", "m2"]
    assert "no key for {key}" in line.__dict__["messages"][0]["reason"]


def test_a_forward_that_fails_for_now_is_retried_until_it_works() -> None:
    source, consumer, dead, metrics = setup({"m1": [AWAY, FORBIDDEN, AWAY]})
    asyncio.run(dead.send(held(source, "m1", "m2")))
    assert consumer.forwards == ["m1", "m2", "m1", "m1", "m1"]
    assert figures(metrics) == {"deadLettered": 2, "dropped": 0, "transient": 3}


def test_an_expired_message_is_left_to_come_again_and_a_refused_one_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, consumer, dead, metrics = setup({"spent": [EXPIRED], "late": [AWAY], "refused": [UNSUPPORTED]})
    items = held(source, "spent", "refused") + held(source, "late", deadline_in=0.5)
    with caplog.at_level(logging.WARNING):
        asyncio.run(dead.send(items))
    # "late" failed once its invisible time was (almost) over: no retry, RocketMQ delivers it again.
    assert sorted(consumer.forwards) == ["late", "refused", "spent"]
    assert figures(metrics) == {"deadLettered": 0, "dropped": 1, "transient": 0}
    logged = [(r.getMessage(), r.__dict__.get("message_id")) for r in caplog.records]
    dropped = "undeliverable message dropped: RocketMQ refused to forward it to the dead-letter queue"
    assert [mid for text, mid in logged if text == dropped] == ["refused"]
    again = [mid for text, mid in logged if text.startswith("undeliverable message not dead-lettered yet")]
    assert sorted(again) == ["late", "spent"]
    # None was forwarded: all are still held until the pipeline settles (acknowledges) them.
    assert {m.message_id for m in source._held} == {"spent", "late", "refused"}


def test_the_status_reads_dead_letters_from_the_workers_metrics() -> None:
    text = (
        'bridge_received_total{direction="rocketmq_to_mqtt"} 10.0\n'
        'bridge_delivered_total{direction="rocketmq_to_mqtt"} 7.0\n'
        'bridge_failed_total{direction="rocketmq_to_mqtt",kind="permanent"} 3.0\n'
        'bridge_failed_total{direction="rocketmq_to_mqtt",kind="transient"} 2.0\n'
        'bridge_dead_lettered_total{direction="rocketmq_to_mqtt"} 3.0\n'
        'bridge_dropped_total{direction="rocketmq_to_mqtt"} 0.0\n'
    )
    assert parse_counters(text, REPLICATION_METRICS) == {
        "consumed": 10,
        "delivered": 7,
        "failed": 5,
        "deadLettered": 3,
    }
