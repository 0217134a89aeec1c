"""The worker's Prometheus metrics and its HTTP endpoints: /metrics, /healthz, /readyz.

Counters are per direction (`mqtt_to_kafka`, `kafka_to_mqtt`, `mqtt_to_function`), except the
`bridge_function_*` ones, which only FunctionTrigger workers have. They are incremented once per
batch, and the end-to-end latency histogram takes a whole batch's observations in one call: at
tens of thousands of messages a second, per-message calls into prometheus_client (a lock each)
would cost more than the rest of the message's trip through the worker.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class BatchHistogram(Collector):
    """A histogram whose `observe_many` costs one lock per batch."""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = list(labelnames)
        self.buckets = list(buckets)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        counts_delta = [0] * (len(self.buckets) + 1)
        total = 0.0
        index = bisect.bisect_left
        buckets = self.buckets
        for value in values:
            counts_delta[index(buckets, value)] += 1
            total += value
        with self._lock:
            counts, sums = self._series.setdefault(labels, ([0] * (len(buckets) + 1), [0.0]))
            for i, delta in enumerate(counts_delta):
                counts[i] += delta
            sums[0] += total

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        with self._lock:
            series = {labels: (list(c), s[0]) for labels, (c, s) in self._series.items()}
        for labels, (counts, total) in series.items():
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, count in zip([*map(str, self.buckets), "+Inf"], counts, strict=True):
                cumulative += count
                points.append((bound, cumulative))
            family.add_metric(list(labels), points, total)
        yield family


class Metrics:
    """Every figure the worker exports, in its own registry (tests run several workers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["direction"]
        self.received = Counter(
            "bridge_received", "Messages taken from the source", labels, registry=self.registry
        )
        self.delivered = Counter(
            "bridge_delivered", "Messages the sink confirmed", labels, registry=self.registry
        )
        self.failed = Counter(
            "bridge_failed",
            "Delivery attempts that failed; transient ones are retried, permanent ones dead-lettered",
            [*labels, "kind"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "bridge_dead_lettered",
            "Messages written to the dead-letter topic",
            labels,
            registry=self.registry,
        )
        self.dropped = Counter(
            "bridge_dropped",
            "Undeliverable messages that could not be dead-lettered either (logged with their reason)",
            labels,
            registry=self.registry,
        )
        self.skipped = Counter(
            "bridge_skipped",
            "Messages acknowledged without delivery by design (e.g. an unregistered parent topic)",
            labels,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "bridge_in_flight", "Messages taken and not yet acknowledged", labels, registry=self.registry
        )
        self.latency = BatchHistogram(
            "bridge_end_to_end_latency_seconds",
            "From the message's origin (MQTT: received by the worker; Kafka: the record's timestamp) "
            "to the sink's confirmation",
            labels,
            LATENCY_BUCKETS,
        )
        self.registry.register(self.latency)
        self.retired = Gauge(
            "bridge_retired",
            "1 once this replica left its shared subscriptions and ended its session (POST /retire)",
            registry=self.registry,
        )
        self.connected = Gauge(
            "bridge_connected",
            "1 while the named endpoint is connected (function: the last call got an HTTP answer)",
            ["endpoint"],
            registry=self.registry,
        )
        # The HTTP function's calls (FunctionTrigger workers): counted per call, a call carrying
        # one message or a whole batch. The operator sums them into the trigger's status.counters.
        self.function_calls = Counter(
            "bridge_function_calls",
            "HTTP calls made to the function, first calls and retries",
            registry=self.registry,
        )
        self.function_succeeded = Counter(
            "bridge_function_succeeded", "Calls the function answered with 2xx", registry=self.registry
        )
        self.function_retries = Counter(
            "bridge_function_retries",
            "Calls that repeated an earlier call of the same messages",
            registry=self.registry,
        )
        self.function_timeouts = Counter(
            "bridge_function_timeouts",
            "Calls that got no answer within the timeout (their result is unknown; they are retried)",
            registry=self.registry,
        )
        self.function_replies = Counter(
            "bridge_function_replies",
            "Function answers published to the reply topic",
            registry=self.registry,
        )
        self.function_reply_failures = Counter(
            "bridge_function_reply_failures",
            "Function answers not published: the reply topic could not be filled or the broker refused it",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (for tests and status reporting)."""
        found = self.registry.get_sample_value(name, labels)
        return found or 0.0


async def serve(
    metrics: Metrics,
    port: int,
    ready: Callable[[], tuple[bool, str]],
    host: str = "0.0.0.0",  # noqa: S104
    retire: Callable[[], str] | None = None,
) -> web.AppRunner:
    """Start /metrics, /healthz (the process answers) and /readyz (`ready()` says both sides connected);
    with `retire`, POST /retire starts handing this replica's share back before a scale-down and
    answers its state (`retiring` or `retired`)."""

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, detail = ready()
        return web.Response(text=detail + "\n", status=200 if ok else 503)

    async def post_retire(_: web.Request) -> web.Response:
        assert retire is not None
        state = retire()
        return web.Response(text=state + "\n", status=200 if state == "retired" else 202)

    app = web.Application()
    if retire is not None:
        app.router.add_post("/retire", post_retire)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
