"""Reading the bridge workers' message counters from their Prometheus `/metrics` endpoints.

The names below are the contract with the worker (operator/mqtt_operator/bridge): each is a counter
since the worker process started; samples with labels (per topic, per reason ...) are summed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping

import aiohttp

log = logging.getLogger(__name__)

# status.counters field -> the worker's metric (bridge/metrics.py).
METRICS: Mapping[str, str] = {
    "received": "bridge_received_total",
    "delivered": "bridge_delivered_total",
    "failed": "bridge_failed_total",
    "deadLettered": "bridge_dead_lettered_total",
    "skipped": "bridge_skipped_total",
}
# The worker counts every failed attempt; a message has failed only when the failure was permanent
# (transient ones are retried until they succeed).
REQUIRED_LABEL: Mapping[str, str] = {"failed": 'kind="permanent"'}
# One worker may take this long to answer.
SCRAPE_TIMEOUT = 3.0
_FIELD_OF = {metric: name for name, metric in METRICS.items()}
Counters = dict[str, int]


def parse_counters(text: str) -> Counters:
    """The counters in a Prometheus text exposition: each METRICS name summed over its label sets."""
    totals = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        field = _FIELD_OF.get(name.strip())
        if field is None:
            continue
        required = REQUIRED_LABEL.get(field)
        if required is not None and required not in line[brace:]:
            continue
        parts = rest.split()
        try:
            value = float(parts[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            totals[field] += value
    return {name: int(value) for name, value in totals.items()}


async def scrape(session: aiohttp.ClientSession, address: str) -> Counters | None:
    """The worker at `address` (host:port)'s counters, or None when it did not answer."""
    try:
        async with session.get(f"http://{address}/metrics") as response:
            if response.status != 200:
                log.debug("worker metrics answered HTTP %s", response.status, extra={"worker": address})
                return None
            return parse_counters(await response.text())
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as err:
        log.debug("worker metrics not reachable: %s", err, extra={"worker": address})
        return None


async def scrape_all(targets: Mapping[str, str]) -> dict[str, Counters]:
    """worker name -> its counters, for every worker of `targets` (name -> host:port) that answered."""
    if not targets:
        return {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as session:
        results = await asyncio.gather(*(scrape(session, address) for address in targets.values()))
    return {name: counters for name, counters in zip(targets, results, strict=True) if counters is not None}
