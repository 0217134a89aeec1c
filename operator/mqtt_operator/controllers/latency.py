"""Replication latency over a recent window, from the workers' cumulative latency histograms. Pure.

Each scrape gives, per bucket bound, how many messages so far took at most that long (summed over the
workers). The difference between two scrapes is the histogram of the messages delivered in between;
its quantiles are interpolated inside their bucket, as Prometheus' histogram_quantile() does. A worker
restart makes counts fall: that window is skipped and the next one starts from the new counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    window_seconds: int
    count: int

    def to_status(self) -> dict[str, float | int]:
        return {"p50Ms": self.p50_ms, "p99Ms": self.p99_ms, "windowSeconds": self.window_seconds}


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The q-quantile (seconds) of a cumulative histogram {upper bound: count}; nan when it is empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = (bound if not math.isinf(bound) else lower), count
    return lower


class LatencyWindows:
    """The last histogram seen per object; `update` returns the latency since then, if messages moved."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], tuple[float, dict[float, float]]] = {}

    def update(self, key: tuple[str, str, str], buckets: Mapping[float, float], now: float) -> Latency | None:
        previous = self._last.get(key)
        self._last[key] = (now, dict(buckets))
        if previous is None:
            return None
        then, before = previous
        delta = {bound: count - before.get(bound, 0.0) for bound, count in buckets.items()}
        if any(value < 0 for value in delta.values()):
            return None  # a worker restarted (its counts began again)
        count = int(delta.get(math.inf, max(delta.values(), default=0.0)))
        if count <= 0:
            return None
        return Latency(
            p50_ms=round(quantile(0.5, delta) * 1000, 2),
            p99_ms=round(quantile(0.99, delta) * 1000, 2),
            window_seconds=max(1, round(now - then)),
            count=count,
        )

    def forget(self, key: tuple[str, str, str]) -> None:
        self._last.pop(key, None)
