"""The operator's process settings, read once from the command line and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if self.all_namespaces and self.namespaces:
            raise ValueError("use either --all-namespaces or --namespace, not both")
        if not self.all_namespaces and not self.namespaces:
            raise ValueError("say which namespaces to watch: --namespace NS (repeatable) or --all-namespaces")

    @classmethod
    def default_namespaces(cls) -> tuple[str, ...]:
        """WATCH_NAMESPACES (comma-separated) or the pod's own namespace, for running in a cluster."""
        raw = os.environ.get("WATCH_NAMESPACES") or os.environ.get("POD_NAMESPACE") or ""
        return tuple(ns.strip() for ns in raw.split(",") if ns.strip())
