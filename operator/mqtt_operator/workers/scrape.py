"""Reading the bridge workers' message counters from their Prometheus `/metrics` endpoints.

The names below are the contract with the worker (operator/mqtt_operator/bridge): each is a counter
since the worker process started; samples with labels (per topic, per reason ...) are summed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from mqtt_operator import metrics as operator_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Series:
    """A worker metric summed over its label sets, or only over those carrying `required`."""

    metric: str
    required: str | None = None


# A KafkaConnector's status.counters field -> the worker's metric (bridge/metrics.py).
METRICS: Mapping[str, Series] = {
    "received": Series("bridge_received_total"),
    "delivered": Series("bridge_delivered_total"),
    # The worker counts every failed attempt; a message has failed only when the failure was permanent
    # (transient ones are retried until they succeed).
    "failed": Series("bridge_failed_total", 'kind="permanent"'),
    "deadLettered": Series("bridge_dead_lettered_total"),
    "skipped": Series("bridge_skipped_total"),
}
# A FunctionTrigger's: calls for invoked/succeeded/retried/timedOut, messages for failed/deadLettered.
FUNCTION_METRICS: Mapping[str, Series] = {
    "invoked": Series("bridge_function_calls_total"),
    "succeeded": Series("bridge_function_succeeded_total"),
    "failed": Series("bridge_failed_total", 'kind="permanent"'),
    "retried": Series("bridge_function_retries_total"),
    "timedOut": Series("bridge_function_timeouts_total"),
    "deadLettered": Series("bridge_dead_lettered_total"),
}
# A ReplicationTask's (top-level status fields): failed counts every failed attempt, transient ones
# included, so an outage of RocketMQ shows in it while nothing is lost; deadLettered the messages
# sent to the dead letter (the MQTT topic, or the consumer group's %DLQ% queue).
REPLICATION_METRICS: Mapping[str, Series] = {
    "consumed": Series("bridge_received_total"),
    "delivered": Series("bridge_delivered_total"),
    "failed": Series("bridge_failed_total"),
    "deadLettered": Series("bridge_dead_lettered_total"),
}
LATENCY_HISTOGRAM = "bridge_end_to_end_latency_seconds_bucket"
# A gauge, not a counter: how many workers reach the function now (kept out of status.counters).
FUNCTION_REACHABLE = "functionReachable"
FUNCTION_GAUGES: Mapping[str, Series] = {
    FUNCTION_REACHABLE: Series("bridge_connected", 'endpoint="function"'),
}
# One worker may take this long to answer.
SCRAPE_TIMEOUT = 3.0
Counters = dict[str, int]


def parse_counters(text: str, metrics: Mapping[str, Series] = METRICS) -> Counters:
    """The figures in a Prometheus text exposition: each of `metrics` summed over its label sets."""
    field_of: dict[str, list[str]] = {}
    for name, series in metrics.items():
        field_of.setdefault(series.metric, []).append(name)
    totals = dict.fromkeys(metrics, 0.0)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        fields = field_of.get(name.strip())
        if fields is None:
            continue
        parts = rest.split()
        try:
            value = float(parts[0])
        except (IndexError, ValueError):
            continue
        if not math.isfinite(value) or value <= 0:
            continue
        for field in fields:
            required = metrics[field].required
            if required is None or (brace >= 0 and required in line[brace:]):
                totals[field] += value
    return {name: int(value) for name, value in totals.items()}


def parse_histogram(text: str, name: str = LATENCY_HISTOGRAM) -> dict[float, float]:
    """Cumulative bucket counts of the histogram `name` (`<name>{...,le="x"} n`), summed over label sets."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, _, rest = line[len(name) + 1 :].rpartition("}")
        le = next((part[4:-1] for part in labels.split(",") if part.startswith('le="')), None)
        try:
            bound = math.inf if le == "+Inf" else float(le or "nan")
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if not math.isnan(bound) and math.isfinite(value):
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


async def scrape_text(session: aiohttp.ClientSession, address: str) -> str | None:
    """The worker at `address` (host:port)'s /metrics text, or None when it did not answer."""
    try:
        async with session.get(f"http://{address}/metrics") as response:
            if response.status != 200:
                log.debug("worker metrics answered HTTP %s", response.status, extra={"worker": address})
                return None
            return await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as err:
        log.debug("worker metrics not reachable: %s", err, extra={"worker": address})
        return None


async def scrape_texts(kind: str, targets: Mapping[str, str]) -> dict[str, str]:
    """worker name -> its /metrics text, for every worker of `targets` (name -> host:port) that answered;
    the others are counted in the operator's metrics under `kind` (the workers' owner kind)."""
    if not targets:
        return {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as session:
        results = await asyncio.gather(*(scrape_text(session, address) for address in targets.values()))
    failed = sum(1 for text in results if text is None)
    if failed:
        operator_metrics.WORKER_SCRAPE_FAILURES.labels(kind).inc(failed)
    return {name: text for name, text in zip(targets, results, strict=True) if text is not None}


async def scrape_all(
    kind: str, targets: Mapping[str, str], metrics: Mapping[str, Series] = METRICS
) -> dict[str, Counters]:
    """worker name -> its counters, for every worker of `targets` (name -> host:port) that answered."""
    return {name: parse_counters(text, metrics) for name, text in (await scrape_texts(kind, targets)).items()}
