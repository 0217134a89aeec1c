"""The operator's process settings, read once from the command line and the environment."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"
    # kopf serves /healthz here; 0 disables it.
    health_port: int = 8080
    # Which component name Events and managed fields carry.
    field_manager: str = "mqtt-operator"
    # "namespace/instance" -> "host:port": where to reach a broker when the Service's cluster DNS name
    # does not resolve (the operator running outside the cluster: `make dev`, the tests).
    broker_addresses: Mapping[str, str] = field(default_factory=dict)
    # How often every broker is compared in full with the declared users and policies.
    drift_period_seconds: float = 30.0
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

    @classmethod
    def default_namespaces(cls) -> tuple[str, ...]:
        """WATCH_NAMESPACES (comma-separated) or the pod's own namespace, for running in a cluster."""
        raw = os.environ.get("WATCH_NAMESPACES") or os.environ.get("POD_NAMESPACE") or ""
        return tuple(ns.strip() for ns in raw.split(",") if ns.strip())

    def broker_address(self, namespace: str, instance: str, cluster_host: str, port: int) -> tuple[str, int]:
        """The override for this instance if one is set, else its Service address in the cluster."""
        override = self.broker_addresses.get(f"{namespace}/{instance}")
        if override is None:
            return cluster_host, port
        host, _, port_text = override.rpartition(":")
        return host, int(port_text)


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
