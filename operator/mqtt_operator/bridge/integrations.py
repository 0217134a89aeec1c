"""The Kafka and function integrations, each one function that makes its clients and pipelines (a `Wiring`).

- `kafka_uplink` (mqttToKafka): the MQTT source on the shared subscription, the `Uplink` mapping and
  the shared Kafka producer; dead letters to `deadLetterTopic` through the same producer.
- `kafka_downlink` (kafkaToMqtt): the Kafka consumer group, the `Downlink` mapping and the shared MQTT
  publisher; dead letters to Kafka.
- `device_events` (deviceEvents, the first replica only): the broker's connect/disconnect notices
  (`device_events.py`) to Kafka, on an MQTT session of their own.
- `mqtt_to_function` (a FunctionTrigger): the MQTT source, batched when `batchMaxMessages` > 1, the
  `ToEvent` mapping and the HTTP function sink; dead letters (and replies) to MQTT. It needs no Kafka.

The RocketMQ routes of a ReplicationTask are `rocketmq_routes.py`; the program (`program.py`) calls
them all and refuses the combinations that cannot run in one process.
"""

from __future__ import annotations

import logging

from mqtt_operator.bridge.batching import BatchingSource
from mqtt_operator.bridge.config import BridgeConfig, MqttToFunction
from mqtt_operator.bridge.dead_letter import KafkaDeadLetters
from mqtt_operator.bridge.device_events import LOG_TOPIC as DEVICE_LOG_TOPIC
from mqtt_operator.bridge.device_events import DeviceEventMapping
from mqtt_operator.bridge.function_events import FunctionEvent, ToEvent
from mqtt_operator.bridge.function_sink import FunctionSink
from mqtt_operator.bridge.kafka_mapping import Downlink, Uplink, downlink_dead_letter, uplink_dead_letter
from mqtt_operator.bridge.kafka_source import KafkaSource, Record
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.mqtt_dead_letter import MqttDeadLetters
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.pipeline import Pipeline
from mqtt_operator.bridge.records import KafkaRecord, Message, MqttPublish, Reject
from mqtt_operator.bridge.wiring import SharedClients, Wiring

log = logging.getLogger("mqtt_operator.bridge")

UPLINK = "mqtt_to_kafka"
DOWNLINK = "kafka_to_mqtt"
DEVICE_EVENTS = "device_events"
FUNCTION = "mqtt_to_function"
# The MQTT 5 Receive Maximum cannot be higher.
RECEIVE_MAXIMUM_LIMIT = 65535


def _describe_message(msg: Message) -> dict[str, object]:
    return {"mqtt_topic": msg.topic, "bytes": len(msg.payload), "packet_id": msg.packet_id}


def _describe_record(rec: Record) -> dict[str, object]:
    return {
        "kafka_topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "bytes": len(rec.value or b""),
    }


def _downlink_dead_letter(rec: Record, reason: str, topic: str, limit: int) -> KafkaRecord:
    return downlink_dead_letter(
        source_topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        headers=rec.headers,
        timestamp_ms=rec.timestamp,
        reason=reason,
        topic=topic,
        limit=limit,
    )


def kafka_uplink(config: BridgeConfig, shared: SharedClients, metrics: Metrics) -> Wiring:
    spec = config.mqtt_to_kafka
    assert spec is not None
    kafka = shared.kafka_producer()
    source = MqttSource(
        config.mqtt,
        client_id=shared.client_id,
        share_group=spec.share_group,
        topic_filters=spec.topic_filters,
        coalesce=True,
    )
    uplink: Pipeline[Message, KafkaRecord] = Pipeline(
        UPLINK,
        source,
        Uplink(spec),
        kafka,
        KafkaDeadLetters(
            UPLINK, kafka, config.dead_letter_topic, uplink_dead_letter, _describe_message, metrics
        ),
        metrics,
        max_batches=1 if spec.ordered else 4,
    )
    return Wiring([source], [uplink], shared_subscription=source)


def kafka_downlink(config: BridgeConfig, shared: SharedClients, metrics: Metrics) -> Wiring:
    spec = config.kafka_to_mqtt
    assert spec is not None and config.kafka is not None
    source = KafkaSource(config.kafka, spec, client_id=f"{shared.client_id}-down")
    route = Downlink(spec)

    def downlink(rec: Record) -> MqttPublish | Reject:
        return route(rec.value, rec.headers)

    # Without a dead-letter topic no Kafka producer is needed for it (the dead letters are logged).
    kafka = shared.kafka_producer() if config.dead_letter_topic else None
    down: Pipeline[Record, MqttPublish] = Pipeline(
        DOWNLINK,
        source,
        downlink,
        shared.mqtt_publisher(),
        KafkaDeadLetters(
            DOWNLINK, kafka, config.dead_letter_topic, _downlink_dead_letter, _describe_record, metrics
        ),
        metrics,
        max_batches=2,
    )
    source.drain_before_revoke(down.wait_idle)
    return Wiring([source], [down])


def reads_device_events(config: BridgeConfig, replica_id: str) -> bool:
    """Only the first replica (`...-0`, a StatefulSet's ordinal 0) reads the broker's connect and
    disconnect notices: `$SYS` topics cannot be shared, so each replica would write every event."""
    events = config.device_events
    wanted = events is not None and bool(events.connect_topic or events.disconnect_topic)
    return wanted and config.kafka is not None and replica_id.endswith("-0")


def device_events(config: BridgeConfig, shared: SharedClients, metrics: Metrics) -> Wiring:
    assert config.device_events is not None
    kafka = shared.kafka_producer()
    source = MqttSource(
        config.mqtt,
        client_id=f"{shared.client_id}-events",
        share_group=None,
        topic_filters=(DEVICE_LOG_TOPIC,)
        + ((config.device_events.plugin_topic,) if config.device_events.plugin_topic else ()),
        role="mqtt device events",
    )
    events: Pipeline[Message, KafkaRecord] = Pipeline(
        DEVICE_EVENTS,
        source,
        DeviceEventMapping(config.device_events),
        kafka,
        KafkaDeadLetters(
            DEVICE_EVENTS, kafka, config.dead_letter_topic, uplink_dead_letter, _describe_message, metrics
        ),
        metrics,
        max_batches=1,  # a device's connects and disconnects stay in order
    )
    return Wiring([source], [events])


def mqtt_to_function(config: BridgeConfig, shared: SharedClients, metrics: Metrics) -> Wiring:
    spec: MqttToFunction | None = config.mqtt_to_function
    assert spec is not None
    batch = max(spec.batch_max_messages, 1)
    # Calls in flight: with batches, each pipeline batch is one call.
    in_flight = 1 if spec.ordered else max(1, min(spec.concurrency, spec.function.max_connections))
    if not spec.ordered and spec.concurrency > spec.function.max_connections:
        log.warning(
            "concurrency is above the function's connection pool: calls in flight are limited to it",
            extra={"concurrency": spec.concurrency, "max_connections": spec.function.max_connections},
        )
    if batch * in_flight > RECEIVE_MAXIMUM_LIMIT:
        in_flight = max(1, RECEIVE_MAXIMUM_LIMIT // batch)
        log.warning(
            "fewer batches in flight than concurrency: the MQTT receive window cannot hold more",
            extra={"batch_max_messages": batch, "batches_in_flight": in_flight},
        )
    endpoint = config.mqtt
    # Every message held (the batch being gathered and the batches in flight) is unacknowledged:
    # the receive window must hold them all, or a batch would wait for its deadline forever.
    holdable = batch * in_flight if batch > 1 else 0
    if endpoint.receive_maximum < holdable:
        log.info(
            "raising the MQTT receive maximum to hold every batch in flight",
            extra={"configured": endpoint.receive_maximum, "receive_maximum": holdable},
        )
        endpoint = endpoint.model_copy(update={"receive_maximum": holdable})
    mqtt_source = MqttSource(
        endpoint,
        client_id=shared.client_id,
        share_group=spec.share_group,
        topic_filters=spec.topic_filters,
    )
    source: MqttSource | BatchingSource = mqtt_source
    if batch > 1:
        source = BatchingSource(mqtt_source, batch, spec.batch_max_wait_seconds)
    publisher = shared.mqtt_publisher() if spec.dead_letter_topic or spec.reply_topic else None
    function = FunctionSink(spec, metrics, publisher if spec.reply_topic else None)
    # One message per call, unordered: the sink's runners bound the calls in flight and the receive
    # window the messages, so the pipeline's window must not be the limit. Were it `concurrency`,
    # one slow call would stop the taking of messages once that many small batches queued behind
    # it, and the backlog would come back as one big batch, holding the window again (a convoy).
    # Why the runners are not folded into this window: docs/bridge.md, "Calls in flight".
    batches = in_flight if batch > 1 or spec.ordered else max(in_flight, endpoint.receive_maximum)
    pipeline: Pipeline[Message, FunctionEvent] = Pipeline(
        FUNCTION,
        source,
        ToEvent(spec),
        function,
        MqttDeadLetters(FUNCTION, publisher, spec.dead_letter_topic, metrics),
        metrics,
        max_batches=batches,
    )
    # The function first: its runners must exist before the pipeline delivers.
    return Wiring([function, mqtt_source], [pipeline], shared_subscription=mqtt_source)
