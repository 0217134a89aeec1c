"""The broker's ConfigMap `<name>-config` (mosquitto.conf) and the hash that rolls the Pod on change."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.identity import BROKER_COMPONENT, InstanceIdentity
from mqtt_operator.resources.mosquitto_conf import (
    CONFIG_FILE,
    IN_POD_PATHS,
    BrokerPaths,
    render_mosquitto_conf,
)

# Pod-template annotation carrying config_hash(): Mosquitto reads its file only at start, so a new
# file must reach the broker as a new Pod.
CONFIG_HASH_ANNOTATION = "mqtt-operator.io/config-hash"


def config_map_name(instance_name: str) -> str:
    return f"{instance_name}-config"


def config_hash(data: Mapping[str, str]) -> str:
    """sha256 of the ConfigMap's data; independent of key order, so only a real change moves it."""
    canonical = json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def broker_config_map(
    identity: InstanceIdentity, spec: MqttInstanceSpec, paths: BrokerPaths = IN_POD_PATHS
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": identity.metadata(config_map_name(identity.name), BROKER_COMPONENT),
        "data": {CONFIG_FILE: render_mosquitto_conf(spec, paths)},
    }
