"""The operator's process settings, read once from the command line and the environment."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from mqtt_operator import __version__

# The default of --object-workers: measured with bench/bench_access.py (docs/helm.md).
OBJECT_WORKERS = 256


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"
    # kopf serves /healthz here; 0 disables it.
    health_port: int = 8080
    # The operator's Prometheus metrics (metrics.py) are served here; 0 disables them.
    metrics_port: int = 9090
    # Which component name Events and managed fields carry.
    field_manager: str = "mqtt-operator"
    # "namespace/instance" -> "host:port": where to reach a broker when the Service's cluster DNS name
    # does not resolve (the operator running outside the cluster: the integration tests).
    broker_addresses: Mapping[str, str] = field(default_factory=dict)
    # The same, in a file of NS/NAME=HOST:PORT lines re-read when it changes (brokers that appear
    # while the operator runs).
    broker_addresses_file: str | None = None
    # How often every broker is compared in full with the declared users and policies.
    drift_period_seconds: float = 30.0
    # How many objects are handled at once (kopf's worker limit); the others wait their turn.
    object_workers: int = OBJECT_WORKERS
    # The image of the bridge workers: the operator's own (one image, `mqtt-operator bridge`).
    worker_image: str = f"mqtt-operator:{__version__}"
    # The broker image of every MqttInstance that names none (spec.image): a mirror, or the image
    # built from images/mosquitto. None keeps the built-in default (resources/statefulset.py).
    broker_image: str | None = None
    # The exporter sidecar's image of every MqttInstance with spec.monitoring.exporter on and no image of
    # its own (it runs `mqtt-operator broker-exporter`). None: the worker image.
    exporter_image: str | None = None
    # "namespace/connector" -> ("host:port", ...): where to read that connector's workers' /metrics
    # when the operator runs outside the cluster (in a cluster: the worker Pods' IPs).
    worker_metrics_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The namespace the operator's own pod runs in (the chart sets POD_NAMESPACE); a broker's
    # NetworkPolicy lets it in. None outside a cluster.
    operator_namespace: str | None = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or None)

    def __post_init__(self) -> None:
        if self.all_namespaces and self.namespaces:
            raise ValueError("use either --all-namespaces or --namespace, not both")
        if not self.all_namespaces and not self.namespaces:
            raise ValueError("say which namespaces to watch: --namespace NS (repeatable) or --all-namespaces")
        if self.drift_period_seconds <= 0:
            raise ValueError("--drift-period must be positive")
        if self.object_workers < 1:
            raise ValueError("--object-workers must be at least 1")

    @classmethod
    def default_namespaces(cls) -> tuple[str, ...]:
        """WATCH_NAMESPACES (comma-separated) or the pod's own namespace, for running in a cluster."""
        raw = os.environ.get("WATCH_NAMESPACES") or os.environ.get("POD_NAMESPACE") or ""
        return tuple(ns.strip() for ns in raw.split(",") if ns.strip())

    def broker_address(self, namespace: str, instance: str, cluster_host: str, port: int) -> tuple[str, int]:
        """The override for this instance if one is set, else its Service address in the cluster."""
        key = f"{namespace}/{instance}"
        override = self.broker_addresses.get(key)
        if override is None and self.broker_addresses_file:
            override = _addresses_in_file(self.broker_addresses_file).get(key)
        if override is None:
            return cluster_host, port
        host, _, port_text = override.rpartition(":")
        return host, int(port_text)


def parse_worker_metrics_addresses(items: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """['ns/name=host:port,host:port', ...] -> {'ns/name': ('host:port', 'host:port')}."""
    result: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, addresses = item.partition("=")
        parts = tuple(a.strip() for a in addresses.split(",") if a.strip())
        well_formed = all(
            host and colon and port.isdigit() for host, colon, port in (a.rpartition(":") for a in parts)
        )
        if not sep or key.count("/") != 1 or not parts or not well_formed:
            raise ValueError(
                f"--worker-metrics-address {item!r}: expected NAMESPACE/NAME=HOST:PORT[,HOST:PORT...]"
            )
        result[key] = parts
    return result


def parse_broker_addresses(items: Iterable[str]) -> dict[str, str]:
    """['ns/name=host:port', ...] -> {'ns/name': 'host:port'}; refuses malformed entries by name."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, address = item.partition("=")
        host, colon, port = address.rpartition(":")
        if not sep or key.count("/") != 1 or not colon or not host or not port.isdigit():
            raise ValueError(f"--broker-address {item!r}: expected NAMESPACE/INSTANCE=HOST:PORT")
        result[key] = address
    return result


_file_cache: dict[str, tuple[float, dict[str, str]]] = {}


def _addresses_in_file(path: str) -> dict[str, str]:
    """The file's addresses, parsed again only when its modification time changed."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return {}
    cached = _file_cache.get(path)
    if cached is None or cached[0] != mtime:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        cached = (mtime, parse_broker_addresses(lines))
        _file_cache[path] = cached
    return cached[1]
