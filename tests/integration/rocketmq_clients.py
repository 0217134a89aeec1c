"""Shared by the RocketMQ integration tests (no tests here): rocketmq-python-client, an independent
implementation of the proxy's gRPC protocol, to read what the worker wrote and to send what it reads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer

from mqtt_operator.bridge.rocketmq_private import settings_event


class RocketMQ(Protocol):
    """Where the proxy's gRPC endpoint is: testenv's RocketMQ, or the node's (e2e)."""

    @property
    def endpoint(self) -> str: ...


def _configuration(cluster: RocketMQ) -> ClientConfiguration:
    return ClientConfiguration(cluster.endpoint, Credentials(), request_timeout=5)


@contextmanager
def rocketmq_consumer(cluster: RocketMQ, group: str, topic: str) -> Iterator[SimpleConsumer]:
    consumer = SimpleConsumer(
        _configuration(cluster), group, {topic: FilterExpression("*")}, await_duration=5
    )
    consumer.startup()
    assert settings_event(consumer).wait(15), "the proxy never acknowledged the consumer's settings"
    try:
        yield consumer
    finally:
        consumer.shutdown()


def read(consumer: SimpleConsumer, done: Callable[[list[Message]], bool], timeout: float) -> list[Message]:
    """Receive and ack until done(received) (or the timeout)."""
    received: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(received):
        for message in consumer.receive(32, 15):
            received.append(message)
            consumer.ack(message)
    return received


@contextmanager
def rocketmq_producer(cluster: RocketMQ, topic: str) -> Iterator[Producer]:
    producer = Producer(_configuration(cluster), [topic])
    producer.startup()
    try:
        yield producer
    finally:
        producer.shutdown()


def command(topic: str, pile: str | None, body: dict[str, Any], fifo: bool = False) -> Message:
    """A maintenance command for `pile` (its key; None: a message without keys)."""
    message = Message()
    message.topic = topic
    message.body = json.dumps(body).encode()
    message.tag = "cmd"
    if pile is not None:
        message.keys = pile
    message.add_property("issuer", "maintenance")
    if fifo:
        message.message_group = pile
    return message
