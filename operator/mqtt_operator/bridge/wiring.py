"""What an integration registers with the program (`Wiring`), and the clients integrations share.

Each integration (`integrations.py`, `rocketmq_routes.py`) is one function that returns a `Wiring`:
the components it made, the pipelines over them and, when it reads a shared subscription, the MQTT
source that holds it (the one POST /retire hands back). Clients that several integrations use are
made once, by `SharedClients`, the first time one asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mqtt_operator.bridge.component import Component
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.kafka_sink import KafkaSink
from mqtt_operator.bridge.mqtt_sink import MqttSink
from mqtt_operator.bridge.mqtt_source import MqttSource
from mqtt_operator.bridge.pipeline import Pipeline


@dataclass
class Wiring:
    """What one integration adds to the program."""

    components: list[Component] = field(default_factory=list)
    pipelines: list[Pipeline[Any, Any]] = field(default_factory=list)
    # The MQTT source on the shared subscription (a connector's replicas split its stream); POST /retire
    # unsubscribes it before a scale-down. At most one per program: it is the replica's MQTT session.
    shared_subscription: MqttSource | None = None


class SharedClients:
    """The clients more than one integration uses, made on the first ask: one Kafka producer (the
    uplink, device events and both directions' dead letters) and one MQTT publisher (downlinks,
    replies, MQTT dead letters)."""

    def __init__(self, config: BridgeConfig, replica_id: str) -> None:
        self.config = config
        self.client_id = f"{config.mqtt.client_id_prefix}-{replica_id}"
        self._kafka: KafkaSink | None = None
        self._publisher: MqttSink | None = None

    def kafka_producer(self) -> KafkaSink:
        if self._kafka is None:
            cfg = self.config
            if cfg.kafka is None:
                raise ValueError("the config has a Kafka integration but no kafka endpoint")
            up = cfg.mqtt_to_kafka
            self._kafka = KafkaSink(
                cfg.kafka,
                client_id=self.client_id,
                round_robin=up is not None and up.partitioning == "roundRobin",
            )
        return self._kafka

    def mqtt_publisher(self) -> MqttSink:
        if self._publisher is None:
            self._publisher = MqttSink(self.config.mqtt, client_id=f"{self.client_id}-pub")
        return self._publisher

    def components(self) -> list[Component]:
        """The Kafka producer first: it is started (awaited) before anything else."""
        return [c for c in (self._kafka, self._publisher) if c is not None]
