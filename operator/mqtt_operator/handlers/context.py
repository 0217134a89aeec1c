"""What every handler shares for the life of the process (kept in kopf's memo)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightkube import AsyncClient

from mqtt_operator.broker.pool import BrokerPool
from mqtt_operator.controllers.access import AccessSync
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.latency import LatencyWindows
from mqtt_operator.settings import OperatorSettings
from mqtt_operator.workers.scrape import FUNCTION_METRICS, REPLICATION_METRICS


@dataclass
class OperatorContext:
    settings: OperatorSettings
    client: AsyncClient
    pool: BrokerPool
    access: AccessSync
    counters: CounterBook = field(default_factory=CounterBook)  # KafkaConnectors'
    trigger_counters: CounterBook = field(default_factory=lambda: CounterBook(FUNCTION_METRICS))
    replication_counters: CounterBook = field(default_factory=lambda: CounterBook(REPLICATION_METRICS))
    latency: LatencyWindows = field(default_factory=LatencyWindows)  # ReplicationTasks'
