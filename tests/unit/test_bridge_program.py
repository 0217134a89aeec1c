"""The bridge program's wiring: command line, replica identity, config checks, components, no kopf import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from mqtt_operator.__main__ import parser
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.program import replica_identity


def config(**extra: Any) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {"owner": "ns/c", "mqtt": {"host": "h", "port": 1883, "clientIdPrefix": "c"}, **extra}
    )


def test_bridge_subcommand_parses() -> None:
    args = parser().parse_args(["bridge", "--config", "/etc/bridge/config.json", "--replica-id", "c-0"])
    assert (args.command, args.config, args.replica_id, args.log_format) == (
        "bridge",
        "/etc/bridge/config.json",
        "c-0",
        "json",
    )


def test_replica_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "conn-worker-1")
    assert replica_identity() == "conn-worker-1"
    assert replica_identity("explicit") == "explicit"
    monkeypatch.delenv("POD_NAME")
    assert replica_identity()  # the host name


def _bridge(cfg: BridgeConfig) -> None:
    import asyncio

    from mqtt_operator.bridge.program import Bridge

    async def build() -> None:
        Bridge(cfg, "r0")

    asyncio.run(build())


def test_config_without_an_integration_or_kafka_is_refused() -> None:
    with pytest.raises(ValueError, match="no integration"):
        _bridge(config())
    with pytest.raises(ValueError, match="no kafka endpoint"):
        _bridge(config(mqttToKafka={"topicFilters": ["a/#"], "shareGroup": "g", "kafkaTopic": "t"}))


def test_the_bridge_program_never_imports_kopf() -> None:
    code = (
        "import sys, mqtt_operator.__main__, mqtt_operator.bridge.program; assert 'kopf' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_connector_is_one_list_of_components_with_shared_clients() -> None:
    import asyncio

    from mqtt_operator.bridge.kafka_sink import KafkaSink
    from mqtt_operator.bridge.mqtt_sink import MqttSink
    from mqtt_operator.bridge.program import Bridge

    cfg = config(
        kafka={"bootstrapServers": "k:9092"},
        deadLetterTopic="dead",
        mqttToKafka={"topicFilters": ["a/#"], "shareGroup": "g", "kafkaTopic": "t"},
        kafkaToMqtt={"kafkaTopic": "cmd", "consumerGroup": "cg"},
        deviceEvents={"connectTopic": "connects"},
    )

    async def build() -> Bridge:
        return Bridge(cfg, "c-0")

    bridge = asyncio.run(build())
    names = [c.readiness().name for c in bridge.components]
    # The shared clients first (the Kafka producer is started before anything else), made once.
    assert names == [
        "kafka producer",
        "mqtt publisher",
        "mqtt source",
        "kafka consumer",
        "mqtt device events",
    ]
    assert sum(isinstance(c, KafkaSink) for c in bridge.components) == 1
    assert sum(isinstance(c, MqttSink) for c in bridge.components) == 1
    assert [p.direction for p in bridge.pipelines] == ["mqtt_to_kafka", "kafka_to_mqtt", "device_events"]
    # /retire hands back the uplink's shared subscription, not the device events' own session.
    assert bridge.shared_subscription is bridge.pipelines[0].source
    ready, detail = bridge.readiness()
    assert not ready and detail.startswith("kafka producer: not connected; mqtt publisher: not connected")
