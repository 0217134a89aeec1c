"""The bridge program's wiring: command line, replica identity, config checks, no kopf import."""

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
