"""What every handler shares for the life of the process (kept in kopf's memo)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from lightkube import AsyncClient

from mqtt_operator.broker.pool import BrokerPool
from mqtt_operator.controllers.access import AccessSync
from mqtt_operator.controllers.integration import Memory
from mqtt_operator.handlers.handled import HandledMemory
from mqtt_operator.settings import OperatorSettings


@dataclass
class OperatorContext:
    settings: OperatorSettings
    client: AsyncClient
    pool: BrokerPool
    access: AccessSync
    integrations: Memory = field(default_factory=Memory)  # the integrations' counters, latency ...
    # What kopf remembers of each object between events (its diff base and handler progress).
    handled: HandledMemory = field(default_factory=HandledMemory)
    # One reconcile at a time per object: kopf serializes its change handlers, but the timers and the
    # workers' StatefulSet events reconcile the same object from other tasks.
    reconciling: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)

    def lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        return self.reconciling.setdefault((kind, namespace, name), asyncio.Lock())

    def forget(self, kind: str, namespace: str, name: str, uid: str = "") -> None:
        """An object was deleted: drop what is kept about it."""
        self.reconciling.pop((kind, namespace, name), None)
        if uid:
            self.handled.forget(uid)
