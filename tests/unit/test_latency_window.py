"""Latency quantiles over the window between two scrapes of the workers' cumulative histograms."""

from __future__ import annotations

import math

import pytest

from mqtt_operator.controllers.latency import LatencyWindows, quantile
from mqtt_operator.workers.scrape import parse_histogram

INF = math.inf
KEY = ("iot", "route", "uid")


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, INF: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.015)
    assert quantile(0.99, buckets) == pytest.approx(0.047)
    assert math.isnan(quantile(0.5, {0.01: 0.0, INF: 0.0}))
    # Beyond the last finite bound all that is known is that bound.
    assert quantile(0.99, {0.01: 1.0, INF: 100.0}) == pytest.approx(0.01)


def test_the_window_is_the_difference_between_scrapes() -> None:
    windows = LatencyWindows()
    assert windows.update(KEY, {0.01: 1000.0, 0.1: 1000.0, INF: 1000.0}, now=100.0) is None  # first sight
    latest = windows.update(KEY, {0.01: 1000.0, 0.1: 1100.0, INF: 1100.0}, now=115.0)
    # The 100 messages of the window all took 10..100 ms, whatever the 1,000 before them took.
    assert latest is not None and latest.count == 100 and latest.window_seconds == 15
    assert 10 < latest.p50_ms < latest.p99_ms <= 100
    assert latest.to_status() == {"p50Ms": latest.p50_ms, "p99Ms": latest.p99_ms, "windowSeconds": 15}
    assert windows.update(KEY, {0.01: 1000.0, 0.1: 1100.0, INF: 1100.0}, now=130.0) is None  # nothing moved
    assert windows.update(KEY, {0.01: 5.0, 0.1: 5.0, INF: 5.0}, now=145.0) is None  # a worker restarted


def test_histogram_lines_are_summed_over_workers_and_directions() -> None:
    text = (
        "# TYPE bridge_end_to_end_latency_seconds histogram\n"
        'bridge_end_to_end_latency_seconds_bucket{direction="mqtt_to_rocketmq",le="0.01"} 3.0\n'
        'bridge_end_to_end_latency_seconds_bucket{direction="mqtt_to_rocketmq",le="+Inf"} 4.0\n'
        'bridge_end_to_end_latency_seconds_bucket{direction="other",le="0.01"} 1.0\n'
        'bridge_end_to_end_latency_seconds_count{direction="mqtt_to_rocketmq"} 4.0\n'
    )
    assert parse_histogram(text) == {0.01: 4.0, INF: 4.0}
