"""The bridge program (`mqtt-operator bridge`): wire the config's integrations, run them, drain on SIGTERM.

A worker (a Pod of a connector, a FunctionTrigger or a ReplicationTask) runs one `Bridge`. The
config names the integrations (`integrations.py`: Kafka uplink and downlink, device events, the
HTTP function; `rocketmq_routes.py`: the RocketMQ routes); each returns its `Wiring` — components
and pipelines — and the program runs the lot without knowing which is which: it starts the
components in the order they were registered, runs every pipeline, serves /metrics, /healthz,
/readyz (every component's readiness) and POST /retire (the shared subscription's MQTT source),
and probes every component every `PROBE_EVERY` seconds.

Shutdown (SIGTERM or SIGINT): every source stops taking messages, the pipelines finish what they
hold (deliver, dead-letter, acknowledge / commit), the components close normally (the MQTT
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

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.allocator import keep_freed_memory
from mqtt_operator.bridge.component import Component
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.integrations import (
    device_events,
    kafka_downlink,
    kafka_uplink,
    mqtt_to_function,
    reads_device_events,
)
from mqtt_operator.bridge.kafka_batch import builds_batches_in_c
from mqtt_operator.bridge.metrics import Metrics, serve
from mqtt_operator.bridge.mqtt_client import ConnectionLost, MqttError
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.pipeline import Pipeline
from mqtt_operator.bridge.rocketmq_routes import rocketmq_routes
from mqtt_operator.bridge.wiring import SharedClients, Wiring

log = logging.getLogger("mqtt_operator.bridge")

# Allocations between two collections of the youngest generation, in a worker (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000

# Retiring: the replica's session counts as drained after this long without a message.
RETIRE_QUIET_S = 1.0
# Kept back from drainSeconds for closing the connections after the pipelines drained.
CLOSE_RESERVE_S = 2.0
# Seconds between two probes of every component (for /readyz, also while no message flows).
PROBE_EVERY = 5


def replica_identity(explicit: str | None = None) -> str:
    """This replica's stable name: --replica-id, else $POD_NAME (a StatefulSet pod's), else the host name."""
    return explicit or os.environ.get("POD_NAME") or socket.gethostname()


def load_config(path: str | Path) -> BridgeConfig:
    return BridgeConfig.model_validate_json(Path(path).read_text())


def wire(config: BridgeConfig, replica_id: str, metrics: Metrics) -> Wiring:
    """Every integration the config names, in one `Wiring`: the shared clients' components first (the
    Kafka producer is started before anything else), then each integration's, in this order."""
    cfg = config
    if (cfg.mqtt_to_kafka or cfg.kafka_to_mqtt) and cfg.kafka is None:
        raise ValueError("the config has a Kafka integration but no kafka endpoint")
    if cfg.mqtt_to_function is not None and cfg.mqtt_to_kafka is not None:
        raise ValueError(
            "the config has both mqttToKafka and mqttToFunction: they would share one MQTT "
            "session; run one worker for each"
        )
    if cfg.mqtt_to_rocketmq is not None and (cfg.mqtt_to_kafka or cfg.mqtt_to_function):
        raise ValueError(
            "the config has mqttToRocketmq and another MQTT source: they would share one MQTT "
            "session; run one worker for each"
        )
    shared = SharedClients(cfg, replica_id)
    parts: list[Wiring] = []
    if cfg.mqtt_to_kafka is not None:
        parts.append(kafka_uplink(cfg, shared, metrics))
    if cfg.kafka_to_mqtt is not None:
        parts.append(kafka_downlink(cfg, shared, metrics))
    if cfg.mqtt_to_function is not None:
        parts.append(mqtt_to_function(cfg, shared, metrics))
    if cfg.mqtt_to_rocketmq is not None or cfg.rocketmq_to_mqtt is not None:
        parts.append(rocketmq_routes(cfg, shared, metrics))
    if not any(part.pipelines for part in parts):
        raise ValueError("the config names no integration (mqttToKafka, kafkaToMqtt or mqttToFunction)")
    if reads_device_events(cfg, replica_id):
        parts.append(device_events(cfg, shared, metrics))
    wiring = Wiring(shared.components())
    for part in parts:
        wiring.components += part.components
        wiring.pipelines += part.pipelines
        # At most one: the checks above refuse two integrations on one MQTT session.
        wiring.shared_subscription = part.shared_subscription or wiring.shared_subscription
    return wiring


class Bridge:
    def __init__(self, config: BridgeConfig, replica_id: str, metrics: Metrics | None = None) -> None:
        self.config = config
        self.replica_id = replica_id
        self.metrics = metrics or Metrics()
        wiring = wire(config, replica_id, self.metrics)
        self.components: list[Component] = wiring.components
        self.pipelines: list[Pipeline[Any, Any]] = wiring.pipelines
        self.shared_subscription: MqttSource | None = wiring.shared_subscription
        self._retiring: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None

    def retire(self) -> str:
        """Start (once) handing this replica's share of the shared subscriptions back; its state."""
        source = self.shared_subscription
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
        """Ready when every required component is; the detail names each (the reported-only ones last)."""
        required: list[str] = []
        reported: list[str] = []
        ready = True
        for component in self.components:
            name, ok, error, needed = component.readiness()
            if needed:
                self.metrics.connected.labels(endpoint=name).set(1 if ok else 0)
                required.append(f"{name}: {'ok' if ok else (error or 'not connected')}")
                ready = ready and ok
            else:
                state = "reachable" if ok else (error or "no call yet")
                reported.append(f"{name} (not required for readiness): {state}")
        return ready, "; ".join(required) + "".join(f"; {line}" for line in reported)

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
            if tick % PROBE_EVERY == 0:
                for component in self.components:
                    await component.probe()
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
        if not mqtt5.reads_publishes_in_c():
            log.warning(
                "the C PUBLISH reader was not built with this install: every message is read in Python, "
                "the uplinks are slower (docs/bridge.md)"
            )
        if not builds_batches_in_c():
            log.warning(
                "the C Kafka record batches are not in this install: aiokafka's builder writes them, "
                "the Kafka uplink is slower (docs/bridge.md)"
            )
        if not keep_freed_memory():
            log.info("the C allocator's thresholds are its own: large buffers are faulted in again per batch")
        for component in self.components:
            await component.start()
        # What exists now (modules, config, clients) lives as long as the process: kept out of every
        # later garbage collection, a full one no longer scans it (pauses of ~10 ms, a latency tail).
        gc.freeze()
        # Every message makes about ten container objects (the message, its stamps, headers, the record)
        # that live for one batch of hundreds. At Python's default of 700 allocations a young collection
        # ran every ~60 messages and traversed each batch's objects again and again; at 20,000 most die
        # before one runs. One worker: 0.3-0.8 µs less CPU per message (about a tenth; docs/bridge.md).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
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
                extra={"in_flight": sum(p.in_flight for p in self.pipelines)},
            )
            for pipeline in self.pipelines:
                pipeline.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        watcher.cancel()
        closers = [component.close() for component in self.components]
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
    replica = replica_identity(replica_id)

    async def _run() -> int:
        return await Bridge(config, replica).run()

    return asyncio.run(_run())
