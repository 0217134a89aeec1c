"""The worker program (`mqtt-operator bridge`): read the config, run its pipelines, drain on SIGTERM.

One process serves one connector: the MQTT -> Kafka pipeline (MQTT source, `Uplink` mapping,
Kafka sink) and/or the Kafka -> MQTT pipeline (Kafka source, `Downlink` mapping, MQTT sink), with
one Kafka producer shared by the uplink and both directions' dead letters, and the metrics server.
A FunctionTrigger's worker runs the MQTT -> function pipeline instead (MQTT source, batched when
`batchMaxMessages` > 1, `ToEvent` mapping, HTTP function sink, MQTT dead letter); it needs no Kafka.
A ReplicationTask's worker runs MQTT -> RocketMQ and/or RocketMQ -> MQTT (`rocketmq_routes.py`);
the RocketMQ client is loaded only then.

Shutdown (SIGTERM or SIGINT): every source stops taking messages, the pipelines finish what they
hold (deliver, dead-letter, acknowledge / commit), the connections close normally (the MQTT
session stays for the replica's return) and the process exits 0, all within `drainSeconds`.
Whatever is still unconfirmed at the deadline stays unacknowledged in the broker's session or
uncommitted in the group: it comes again, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from mqtt_operator.bridge.batching import BatchingSource
from mqtt_operator.bridge.config import BridgeConfig, MqttToFunction
from mqtt_operator.bridge.dead_letter import KafkaDeadLetters
from mqtt_operator.bridge.device_events import LOG_TOPIC as DEVICE_LOG_TOPIC
from mqtt_operator.bridge.device_events import DeviceEventMapping
from mqtt_operator.bridge.function_events import FunctionEvent, ToEvent
from mqtt_operator.bridge.function_sink import FunctionSink
from mqtt_operator.bridge.kafka_sink import KafkaSink
from mqtt_operator.bridge.kafka_source import KafkaSource, Record
from mqtt_operator.bridge.mapping import (
    Downlink,
    KafkaRecord,
    MqttPublish,
    Reject,
    Uplink,
    downlink_dead_letter,
    uplink_dead_letter,
)
from mqtt_operator.bridge.metrics import Metrics, serve
from mqtt_operator.bridge.mqtt5 import Message
from mqtt_operator.bridge.mqtt_client import ConnectionLost, MqttError
from mqtt_operator.bridge.mqtt_dead_letter import MqttDeadLetters
from mqtt_operator.bridge.mqtt_sink import MqttSink
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.pipeline import Pipeline
from mqtt_operator.bridge.rocketmq_routes import RocketMQRoutes

log = logging.getLogger("mqtt_operator.bridge")

UPLINK = "mqtt_to_kafka"
DEVICE_EVENTS = "device_events"
# Retiring: the replica's session counts as drained after this long without a message.
RETIRE_QUIET_S = 1.0
DOWNLINK = "kafka_to_mqtt"
FUNCTION = "mqtt_to_function"
# The MQTT 5 Receive Maximum cannot be higher.
RECEIVE_MAXIMUM_LIMIT = 65535
# Kept back from drainSeconds for closing the connections after the pipelines drained.
CLOSE_RESERVE_S = 2.0
# Seconds between two checks that Kafka answers (for /readyz, also while no message flows).
PROBE_EVERY = 5


def replica_identity(explicit: str | None = None) -> str:
    """This replica's stable name: --replica-id, else $POD_NAME (a StatefulSet pod's), else the host name."""
    return explicit or os.environ.get("POD_NAME") or socket.gethostname()


def load_config(path: str | Path) -> BridgeConfig:
    return BridgeConfig.model_validate_json(Path(path).read_text())


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


class Worker:
    def __init__(self, config: BridgeConfig, replica_id: str, metrics: Metrics | None = None) -> None:
        self.config = config
        self.replica_id = replica_id
        self.metrics = metrics or Metrics()
        self.kafka: KafkaSink | None = None
        self.mqtt_source: MqttSource | None = None
        self.events_source: MqttSource | None = None  # device lifecycle events (device_events.py)
        self._retiring: asyncio.Task[None] | None = None
        self.mqtt_sink: MqttSink | None = None
        self.kafka_source: KafkaSource | None = None
        self.function: FunctionSink | None = None
        self.rocketmq: RocketMQRoutes | None = None
        self.pipelines: list[Pipeline[Any, Any]] = []
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._build()

    def _build(self) -> None:
        cfg = self.config
        prefix = cfg.mqtt.client_id_prefix
        if (cfg.mqtt_to_kafka or cfg.kafka_to_mqtt) and cfg.kafka is None:
            raise ValueError("the config has a Kafka integration but no kafka endpoint")
        if cfg.kafka is not None and (
            cfg.mqtt_to_kafka or cfg.dead_letter_topic or self._reads_device_events()
        ):
            up = cfg.mqtt_to_kafka
            self.kafka = KafkaSink(
                cfg.kafka,
                client_id=f"{prefix}-{self.replica_id}",
                round_robin=up is not None and up.partitioning == "roundRobin",
            )
        if cfg.mqtt_to_kafka is not None:
            spec = cfg.mqtt_to_kafka
            assert self.kafka is not None
            self.mqtt_source = MqttSource(
                cfg.mqtt,
                client_id=f"{prefix}-{self.replica_id}",
                share_group=spec.share_group,
                topic_filters=spec.topic_filters,
            )
            uplink: Pipeline[Message, KafkaRecord] = Pipeline(
                UPLINK,
                self.mqtt_source,
                Uplink(spec),
                self.kafka,
                KafkaDeadLetters(
                    UPLINK,
                    self.kafka,
                    cfg.dead_letter_topic,
                    uplink_dead_letter,
                    _describe_message,
                    self.metrics,
                ),
                self.metrics,
                max_batches=1 if spec.ordered else 4,
            )
            self.pipelines.append(uplink)
        if cfg.kafka_to_mqtt is not None:
            assert cfg.kafka is not None
            down_spec = cfg.kafka_to_mqtt
            self.kafka_source = KafkaSource(
                cfg.kafka, down_spec, client_id=f"{prefix}-{self.replica_id}-down"
            )
            self.mqtt_sink = MqttSink(cfg.mqtt, client_id=f"{prefix}-{self.replica_id}-pub")
            route = Downlink(down_spec)

            def downlink(rec: Record) -> MqttPublish | Reject:
                return route(rec.value, rec.headers)

            down: Pipeline[Record, MqttPublish] = Pipeline(
                DOWNLINK,
                self.kafka_source,
                downlink,
                self.mqtt_sink,
                KafkaDeadLetters(
                    DOWNLINK,
                    self.kafka,
                    cfg.dead_letter_topic,
                    _downlink_dead_letter,
                    _describe_record,
                    self.metrics,
                ),
                self.metrics,
                max_batches=2,
            )
            self.kafka_source.drain = down.wait_idle
            self.pipelines.append(down)
        if cfg.mqtt_to_function is not None:
            if cfg.mqtt_to_kafka is not None:
                raise ValueError(
                    "the config has both mqttToKafka and mqttToFunction: they would share one MQTT "
                    "session; run one worker for each"
                )
            self._build_function(cfg.mqtt_to_function)
        if cfg.mqtt_to_rocketmq is not None or cfg.rocketmq_to_mqtt is not None:
            self._build_rocketmq()
        if not self.pipelines:
            raise ValueError("the config names no integration (mqttToKafka, kafkaToMqtt or mqttToFunction)")
        self._build_device_events()

    def _build_function(self, spec: MqttToFunction) -> None:
        cfg = self.config
        prefix = cfg.mqtt.client_id_prefix
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
        endpoint = cfg.mqtt
        # Every message held (the batch being gathered and the batches in flight) is unacknowledged:
        # the receive window must hold them all, or a batch would wait for its deadline forever.
        holdable = batch * in_flight if batch > 1 else 0
        if endpoint.receive_maximum < holdable:
            log.info(
                "raising the MQTT receive maximum to hold every batch in flight",
                extra={"configured": endpoint.receive_maximum, "receive_maximum": holdable},
            )
            endpoint = endpoint.model_copy(update={"receive_maximum": holdable})
        self.mqtt_source = MqttSource(
            endpoint,
            client_id=f"{prefix}-{self.replica_id}",
            share_group=spec.share_group,
            topic_filters=spec.topic_filters,
        )
        source: MqttSource | BatchingSource = self.mqtt_source
        if batch > 1:
            source = BatchingSource(self.mqtt_source, batch, spec.batch_max_wait_seconds)
        if (spec.dead_letter_topic or spec.reply_topic) and self.mqtt_sink is None:
            self.mqtt_sink = MqttSink(cfg.mqtt, client_id=f"{prefix}-{self.replica_id}-pub")
        self.function = FunctionSink(spec, self.metrics, self.mqtt_sink if spec.reply_topic else None)
        # One message per call, unordered: the sink's runners bound the calls in flight and the receive
        # window the messages, so the pipeline's window must not be the limit. Were it `concurrency`,
        # one slow call would stop the taking of messages once that many small batches queued behind
        # it, and the backlog would come back as one big batch, holding the window again (a convoy).
        batches = in_flight if batch > 1 or spec.ordered else max(in_flight, endpoint.receive_maximum)
        pipeline: Pipeline[Message, FunctionEvent] = Pipeline(
            FUNCTION,
            source,
            ToEvent(spec),
            self.function,
            MqttDeadLetters(FUNCTION, self.mqtt_sink, spec.dead_letter_topic, self.metrics),
            self.metrics,
            max_batches=batches,
        )
        self.pipelines.append(pipeline)

    def _build_rocketmq(self) -> None:
        cfg = self.config
        if cfg.mqtt_to_rocketmq is not None and self.mqtt_source is not None:
            raise ValueError(
                "the config has mqttToRocketmq and another MQTT source: they would share one MQTT "
                "session; run one worker for each"
            )
        self.rocketmq = RocketMQRoutes(
            cfg,
            self.metrics,
            client_id=f"{cfg.mqtt.client_id_prefix}-{self.replica_id}",
            mqtt_sink=self.mqtt_sink,
        )
        self.mqtt_source = self.rocketmq.mqtt_source or self.mqtt_source
        self.mqtt_sink = self.rocketmq.mqtt_sink
        self.pipelines.extend(self.rocketmq.pipelines)

    def _reads_device_events(self) -> bool:
        """Only the first replica (`...-0`, a StatefulSet's ordinal 0) reads the broker's connect and
        disconnect notices: `$SYS` topics cannot be shared, so each replica would write every event."""
        events = self.config.device_events
        wanted = events is not None and bool(events.connect_topic or events.disconnect_topic)
        return wanted and self.config.kafka is not None and self.replica_id.endswith("-0")

    def _build_device_events(self) -> None:
        cfg = self.config
        if not self._reads_device_events():
            return
        assert cfg.device_events is not None and self.kafka is not None
        self.events_source = MqttSource(
            cfg.mqtt,
            client_id=f"{cfg.mqtt.client_id_prefix}-{self.replica_id}-events",
            share_group=None,
            topic_filters=(DEVICE_LOG_TOPIC,),
        )
        events: Pipeline[Message, KafkaRecord] = Pipeline(
            DEVICE_EVENTS,
            self.events_source,
            DeviceEventMapping(cfg.device_events),
            self.kafka,
            KafkaDeadLetters(
                DEVICE_EVENTS,
                self.kafka,
                cfg.dead_letter_topic,
                uplink_dead_letter,
                _describe_message,
                self.metrics,
            ),
            self.metrics,
            max_batches=1,  # a device's connects and disconnects stay in order
        )
        self.pipelines.append(events)

    def retire(self) -> str:
        """Start (once) handing this replica's share of the shared subscriptions back; its state."""
        source = self.mqtt_source
        if source is None or source.retired:
            return "retired"
        if self._retiring is None:
            self._retiring = asyncio.create_task(self._retire(source), name="retire")
        return "retiring"

    async def _retire(self, source: MqttSource) -> None:
        """Unsubscribe, process what the broker had queued for this replica, then end its session, so
        that after the scale-down no session keeps receiving a share nobody reads (Mosquitto routes a
        share to offline sessions too)."""
        log.info("retiring: leaving the shared subscriptions before a scale-down")
        try:
            await source.retire()
        except (MqttError, TimeoutError, ConnectionLost) as err:
            log.warning("could not unsubscribe; retrying on the next request", extra={"error": str(err)})
            self._retiring = None
            return
        # A quiet period has no event to wait on: poll it.
        while not (source.drained(RETIRE_QUIET_S) and all(p.idle for p in self.pipelines)):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await source.end_session()
        self.metrics.retired.set(1)
        log.info("retired: the session is ended; waiting to be stopped")

    def readiness(self) -> tuple[bool, str]:
        parts: list[tuple[str, bool, str | None]] = []
        if self.mqtt_source is not None:
            parts.append(("mqtt source", self.mqtt_source.ready, self.mqtt_source.last_error))
        if self.events_source is not None:
            parts.append(("mqtt device events", self.events_source.ready, self.events_source.last_error))
        if self.mqtt_sink is not None:
            parts.append(("mqtt publisher", self.mqtt_sink.ready, self.mqtt_sink.last_error))
        if self.kafka is not None:
            parts.append(("kafka producer", self.kafka.ready, None))
        if self.kafka_source is not None:
            parts.append(("kafka consumer", self.kafka_source.ready, self.kafka_source.last_error))
        if self.rocketmq is not None:
            parts.extend(self.rocketmq.readiness())
        for name, ok, _ in parts:
            self.metrics.connected.labels(endpoint=name).set(1 if ok else 0)
        detail = "; ".join(f"{name}: {'ok' if ok else (err or 'not connected')}" for name, ok, err in parts)
        if self.function is not None:
            # Reported, not required: an unready worker would not bring the function back, and the
            # messages wait in the broker meanwhile (the sink sets its own gauge).
            fn = self.function
            state = "reachable" if fn.reachable else (fn.last_error or "no call yet")
            detail += f"; function (not required for readiness): {state}"
        return all(ok for _, ok, _ in parts), detail

    def stop(self) -> None:
        self._stop.set()

    def _on_pipeline_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
        self._stop.set()

    async def _watch(self) -> None:
        tick = 0
        while not self._stop.is_set():
            for pipeline in self.pipelines:
                if pipeline.failure is not None:
                    self._failure = pipeline.failure
                    self._stop.set()
            if self.kafka is not None and tick % PROBE_EVERY == 0:
                await self.kafka.probe()
            if self.function is not None and tick % PROBE_EVERY == 0:
                await self.function.probe()
            if self.rocketmq is not None and tick % PROBE_EVERY == 0:
                await self.rocketmq.probe()
            tick += 1
            self.readiness()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def run(self) -> int:
        """Run until stop() (or a signal); 0 after a clean drain, 1 after an internal failure."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        runner: web.AppRunner | None = None
        if cfg.metrics_port:
            runner = await serve(self.metrics, cfg.metrics_port, self.readiness, retire=self.retire)
        log.info(
            "bridge worker starting",
            extra={
                "owner": cfg.owner,
                "replica": self.replica_id,
                "pipelines": [p.direction for p in self.pipelines],
            },
        )
        if self.kafka is not None:
            try:
                await self.kafka.start()
            except (KafkaError, OSError) as err:
                log.warning("Kafka not reachable yet; delivery will retry", extra={"error": str(err)})
        if self.function is not None:
            await self.function.start()
        if self.mqtt_source is not None:
            self.mqtt_source.start()
        if self.events_source is not None:
            self.events_source.start()
        if self.mqtt_sink is not None:
            self.mqtt_sink.start()
        if self.rocketmq is not None:
            self.rocketmq.start()
        # What exists now (modules, config, clients) lives as long as the process: kept out of every
        # later garbage collection, a full one no longer scans it (pauses of ~10 ms, a latency tail).
        gc.freeze()
        tasks = []
        for pipeline in self.pipelines:
            task = asyncio.create_task(pipeline.run(), name=pipeline.direction)
            task.add_done_callback(self._on_pipeline_failure)
            tasks.append(task)
        watcher = asyncio.create_task(self._watch())
        await self._stop.wait()
        started = time.monotonic()
        log.info("stopping: draining in-flight messages", extra={"drain_seconds": cfg.drain_seconds})
        for pipeline in self.pipelines:
            pipeline.source.stop_taking()
        budget = max(cfg.drain_seconds - CLOSE_RESERVE_S, 0.5)
        _, pending = await asyncio.wait(tasks, timeout=budget)
        if pending:
            log.warning(
                "drain deadline reached; unconfirmed messages stay unacknowledged and come again",
                extra={"in_flight": sum(p._in_flight_count for p in self.pipelines)},
            )
            for pipeline in self.pipelines:
                pipeline.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        watcher.cancel()
        closers = []
        if self.mqtt_source is not None:
            closers.append(self.mqtt_source.close())
        if self.events_source is not None:
            closers.append(self.events_source.close())
        if self.mqtt_sink is not None:
            closers.append(self.mqtt_sink.close())
        if self.kafka_source is not None:
            closers.append(self.kafka_source.close())
        if self.kafka is not None:
            closers.append(self.kafka.close())
        if self.function is not None:
            closers.append(self.function.close())
        if self.rocketmq is not None:
            closers.append(self.rocketmq.close())
        remaining = max(cfg.drain_seconds - (time.monotonic() - started), 0.5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*closers, return_exceptions=True), remaining)
        if runner is not None:
            await runner.cleanup()
        if self._failure is not None:
            log.error("bridge worker stopped after an internal failure", exc_info=self._failure)
            return 1
        log.info("bridge worker stopped", extra={"seconds": round(time.monotonic() - started, 2)})
        return 0


def main(config_path: str, replica_id: str | None = None) -> int:
    config = load_config(config_path)
    worker_replica = replica_identity(replica_id)

    async def _run() -> int:
        return await Worker(config, worker_replica).run()

    return asyncio.run(_run())
