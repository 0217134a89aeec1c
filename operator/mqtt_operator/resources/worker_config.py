"""The workers' ConfigMap `<workload>`: `config.json`, the BridgeConfig the bridge program reads, for
every integration kind; and the parts of that config every kind fills the same way (the broker).

No secret goes into it: passwords reach the workers as environment variables from Secrets, TLS
material as files mounted from Secrets (worker_statefulset.py), and the paths here name those files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mqtt_operator.bridge.config import BridgeConfig, MqttEndpoint
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_names import WORKER_COMPONENT, WorkerNames

CONFIG_DIR = "/etc/bridge"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
METRICS_PORT = 9090


@dataclass(frozen=True)
class BrokerTarget:
    """The instance's broker as the workers reach it from inside the cluster."""

    host: str  # the instance's Service, <instance>.<namespace>.svc
    port: int  # its mqtt listener
    # The instance's sessions.expiry: how long a paused integration's sessions (and messages) last.
    session_expiry_seconds: int
    # The broker plugin's client events topic (spec.clientEvents), None when the instance publishes none.
    client_events_topic: str | None = None


def mqtt_endpoint(names: WorkerNames, broker: BrokerTarget, username: str | None) -> MqttEndpoint:
    """`username` is the integration's own broker account, None when the instance enforces no
    authorization."""
    return MqttEndpoint(
        host=broker.host,
        port=broker.port,
        username=username,
        client_id_prefix=names.client_id_prefix,
        session_expiry_seconds=broker.session_expiry_seconds,
    )


def owner(names: WorkerNames) -> str:
    """How the workers name their integration in logs: `<namespace>/<name>`."""
    return f"{names.namespace}/{names.name}"


def render_config(config: BridgeConfig) -> str:
    """camelCase JSON with sorted keys, so the same config always hashes the same."""
    data = config.model_dump(mode="json", by_alias=True)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def worker_config_map(identity: OwnerIdentity, names: WorkerNames, config: BridgeConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": identity.metadata(names.workload, WORKER_COMPONENT),
        "data": {CONFIG_FILE: render_config(config)},
    }
