"""What every handler shares for the life of the process (kept in kopf's memo)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightkube import AsyncClient

from mqtt_operator.broker.pool import BrokerPool
from mqtt_operator.controllers.access import AccessSync
from mqtt_operator.controllers.integration import Memory
from mqtt_operator.settings import OperatorSettings


@dataclass
class OperatorContext:
    settings: OperatorSettings
    client: AsyncClient
    pool: BrokerPool
    access: AccessSync
    integrations: Memory = field(default_factory=Memory)  # the integrations' counters, latency ...
