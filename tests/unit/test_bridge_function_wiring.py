"""The FunctionTrigger's wiring: no Kafka needed, the receive window fits the batches, client
ids, and the configs it refuses."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import pytest

from mqtt_operator.bridge.batching import BatchingSource
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.function_sink import FunctionSink
from mqtt_operator.bridge.integrations import FUNCTION
from mqtt_operator.bridge.kafka_sink import KafkaSink
from mqtt_operator.bridge.mqtt_sink import MqttSink
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.program import Bridge

T = TypeVar("T")


def config(mqtt: dict[str, Any] | None = None, **fn: Any) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "owner": "ns/t",
            "mqtt": {"host": "h", "port": 1883, "clientIdPrefix": "t", **(mqtt or {})},
            "mqttToFunction": {
                "topicFilters": ["a/#"],
                "shareGroup": "ns.t",
                "function": {"url": "http://fn.ns.svc/"},
                "eventSource": "/mqtt-operator/ns/i",
                **fn,
            },
        }
    )


def build(cfg: BridgeConfig) -> Bridge:
    async def go() -> Bridge:
        return Bridge(cfg, "t-0")

    return asyncio.run(go())


def only(bridge: Bridge, kind: type[T]) -> T | None:
    """The bridge's one component of `kind`, or None."""
    found = [c for c in bridge.components if isinstance(c, kind)]
    assert len(found) <= 1
    return found[0] if found else None


def test_a_function_worker_needs_no_kafka() -> None:
    bridge = build(config(deadLetterTopic="dead/letters"))
    assert only(bridge, KafkaSink) is None
    [pipeline] = bridge.pipelines
    assert pipeline.direction == FUNCTION
    assert isinstance(pipeline.source, MqttSource)  # one message per call: no batching
    assert bridge.shared_subscription is not None and bridge.shared_subscription.client_id == "t-t-0"
    assert (sink := only(bridge, MqttSink)) is not None and sink.client_id == "t-t-0-pub"
    # Calls in flight are bounded by the sink's runners (the default concurrency), messages by the
    # receive window: the pipeline's window is not the limit.
    assert (fn := only(bridge, FunctionSink)) is not None and fn.concurrency == 16
    assert pipeline.max_batches == 1000
    ready, detail = bridge.readiness()
    assert not ready and "function (not required for readiness): no call yet" in detail


def test_ordered_means_one_call_at_a_time_and_no_publisher_without_dead_letter_or_reply() -> None:
    bridge = build(config(ordered=True, concurrency=1))
    assert bridge.pipelines[0].max_batches == 1
    assert (fn := only(bridge, FunctionSink)) is not None and fn.concurrency == 1
    assert only(bridge, MqttSink) is None


def test_batches_raise_the_receive_maximum_to_hold_every_batch_in_flight() -> None:
    bridge = build(config(batchMaxMessages=100, concurrency=16))
    [pipeline] = bridge.pipelines
    assert isinstance(pipeline.source, BatchingSource)
    assert pipeline.max_batches == 16
    assert bridge.shared_subscription is not None
    assert bridge.shared_subscription.endpoint.receive_maximum == 1600
    # Never lowered, never above the MQTT limit (fewer batches in flight instead).
    small = build(config({"receiveMaximum": 5000}, batchMaxMessages=10))
    assert (source := small.shared_subscription) is not None and source.endpoint.receive_maximum == 5000
    huge = build(
        config(batchMaxMessages=1000, concurrency=256, function={"url": "http://f/", "maxConnections": 256})
    )
    assert huge.pipelines[0].max_batches == 65
    assert huge.shared_subscription is not None and huge.shared_subscription.endpoint.receive_maximum == 65000


def test_concurrency_is_bounded_by_the_connection_pool() -> None:
    bridge = build(config(concurrency=200, batchMaxMessages=2))
    assert bridge.pipelines[0].max_batches == 64
    assert (fn := only(bridge, FunctionSink)) is not None and fn.concurrency == 64


def test_refused_configs() -> None:
    fields = config().model_dump(by_alias=True, exclude_none=True)
    both = BridgeConfig.model_validate(
        {
            **fields,
            "kafka": {"bootstrapServers": "k:9092"},
            "mqttToKafka": {"topicFilters": ["b/#"], "shareGroup": "g", "kafkaTopic": "t"},
        }
    )
    with pytest.raises(ValueError, match="both mqttToKafka and mqttToFunction"):
        build(both)
    with pytest.raises(ValueError, match="replyTopic"):
        build(config(replyTopic="replies/{device}"))
    with pytest.raises(ValueError, match="absolute http"):
        build(config(function={"url": "ftp://fn/"}))
