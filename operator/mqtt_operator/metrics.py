"""The operator's own Prometheus metrics: one registry, served on `--metrics-port` (/metrics).

What a platform team alerts on (docs/observability.md): reconciles by kind and result and how long they
took, the dynamic-security commands sent to brokers and their latency, the objects of each kind by
their Ready condition (as the watch streams report them), and the worker scrapes that failed (the
figures in an integration's status are then stale). Process figures come from prometheus_client's
own collectors. The bridge workers have their own registry (bridge/metrics.py).

Module state on purpose: a process runs one operator, and every part that counts (handlers, the broker
client, the scraper) reaches these through one import, without threading a registry through.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
for _builtin in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_builtin)

# A reconcile is a few API calls and maybe broker commands: milliseconds to tens of seconds.
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RECONCILES = Counter(
    "mqtt_operator_reconciles",
    "Reconciles run, by kind and result (success: Ready=True; not_ready; error: raised; paused)",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "mqtt_operator_reconcile_duration_seconds",
    "How long one reconcile took, by kind",
    ["kind"],
    buckets=_RECONCILE_BUCKETS,
    registry=REGISTRY,
)
BROKER_COMMANDS = Counter(
    "mqtt_operator_broker_commands",
    "Dynamic-security commands sent to brokers, by command and result (ok, error: refused or unanswered)",
    ["command", "result"],
    registry=REGISTRY,
)
BROKER_COMMAND_SECONDS = Histogram(
    "mqtt_operator_broker_command_duration_seconds",
    "From sending a batch of broker commands to the last answer, observed once per command in it",
    ["command"],
    buckets=_COMMAND_BUCKETS,
    registry=REGISTRY,
)
WORKER_SCRAPE_FAILURES = Counter(
    "mqtt_operator_worker_scrape_failures",
    "Scrapes of a bridge worker's /metrics that got no answer (its figures in status are not refreshed)",
    ["kind"],
    registry=REGISTRY,
)

# Kinds whose objects get a per-object readiness series: few per cluster, and an alert must name the
# one that is not Ready. Accounts and policies (thousands) are only counted.
PER_OBJECT_KINDS = frozenset({"MqttInstance", "KafkaConnector", "ReplicationTask", "FunctionTrigger"})


def ready_of(body: Any) -> tuple[str, str]:
    """The Ready condition of an object body: (status "True"/"False"/"Unknown", reason); Unknown and no
    reason before the operator wrote one."""
    for condition in (body.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            return str(condition.get("status", "Unknown")), str(condition.get("reason") or "")
    return "Unknown", ""


class ObjectsCollector(Collector):
    """The objects the watch streams last showed: counted per kind, namespace and Ready status, and a
    0/1 Ready series per object of PER_OBJECT_KINDS with Ready's reason (an alert names the object, says
    why, and leaves out the objects at rest: Paused, Stopped, Disabled)."""

    def __init__(self) -> None:
        self._ready: dict[tuple[str, str, str], tuple[str, str]] = {}

    def seen(self, kind: str, namespace: str, name: str, ready: tuple[str, str]) -> None:
        self._ready[(kind, namespace, name)] = ready

    def gone(self, kind: str, namespace: str, name: str) -> None:
        self._ready.pop((kind, namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        counts: dict[tuple[str, str, str], int] = {}
        per_object = GaugeMetricFamily(
            "mqtt_operator_object_ready",
            "1 when the object's Ready condition is True, else 0; reason is Ready's (MqttInstance and the "
            "worker kinds)",
            labels=["kind", "namespace", "name", "reason"],
        )
        for (kind, namespace, name), (ready, reason) in sorted(self._ready.items()):
            key = (kind, namespace, ready)
            counts[key] = counts.get(key, 0) + 1
            if kind in PER_OBJECT_KINDS:
                per_object.add_metric([kind, namespace, name, reason], 1.0 if ready == "True" else 0.0)
        objects = GaugeMetricFamily(
            "mqtt_operator_objects",
            "Objects of each kind the operator watches, by namespace and Ready status (True, False, Unknown)",
            labels=["kind", "namespace", "ready"],
        )
        for (kind, namespace, ready), count in sorted(counts.items()):
            objects.add_metric([kind, namespace, ready], float(count))
        yield objects
        yield per_object


OBJECTS = ObjectsCollector()
REGISTRY.register(OBJECTS)


def reconcile_result(conditions: Sequence[Any]) -> str:
    """ "success" when the outcome's Ready condition is True, else "not_ready"."""
    ready = next((c for c in conditions if c.type == "Ready"), None)
    return "success" if ready is not None and ready.status == "True" else "not_ready"


class ReconcileTimer:
    """`with ReconcileTimer(kind) as timer: ...; timer.result = ...`: one count and one duration per
    reconcile; an exception leaving the block counts as "error"."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.result = "success"
        self._started = 0.0

    def __enter__(self) -> ReconcileTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        RECONCILE_SECONDS.labels(self.kind).observe(time.perf_counter() - self._started)
        RECONCILES.labels(self.kind, "error" if exc_type is not None else self.result).inc()


def commands_done(names: Iterable[str], results: Iterable[str], seconds: float) -> None:
    """Count each command by its result and observe the batch's latency once per command."""
    for name, result in zip(names, results, strict=True):
        BROKER_COMMANDS.labels(name, result).inc()
        BROKER_COMMAND_SECONDS.labels(name).observe(seconds)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 (a Pod serves its metrics port)
    """Serve /metrics on `port` from a daemon thread (0: not at all)."""
    if port:
        start_http_server(port, addr=address, registry=REGISTRY)
