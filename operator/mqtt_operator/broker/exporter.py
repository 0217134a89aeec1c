"""The broker's own figures for Prometheus: `mqtt-operator broker-exporter`, the MqttInstance's optional
`exporter` sidecar (spec.monitoring.exporter; docs/observability.md, "Broker metrics").

Mosquitto publishes its figures under `$SYS/broker/...` every `sys_interval` seconds. The exporter
subscribes to them with the broker's admin account and serves the latest of each on /metrics:
counters (what Mosquitto counts since it started: messages, bytes, dropped publishes) as `*_total`,
everything else numeric as a gauge, the version as `broker_info{version}`. Names are the topic below
`$SYS/` with `/` and spaces turned into `_` (`$SYS/broker/clients/connected` ->
`broker_clients_connected`), a last `/count` dropped (`broker_subscriptions`), `clients/total` named
`broker_clients_known` and `uptime` `broker_uptime_seconds`: `promtool check metrics` passes.

/metrics answers 503 until the exporter is connected and has the broker's first figures, and again
while the connection is down: the sidecar's readiness probe then says the figures do not flow. Why
our own and not a Mosquitto exporter: the maintained one (sapcc/mosquitto-exporter) and the generic
MQTT exporters are not served by the package registries this project builds from, so the operator's
image (`mqtt-operator broker-exporter`, the same image as the workers) carries it.

Configured by the environment the StatefulSet builder writes: BROKER_ENDPOINT (tcp://host:port),
BIND_ADDRESS ([host]:port), MQTT_USER, MQTT_PASS (from the admin Secret), MQTT_CLIENT_ID.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SYS_TOPIC = "$SYS/broker/#"
# Figures Mosquitto counts up from its start (the others can go down): Prometheus counters.
COUNTERS = frozenset(
    {
        "broker/bytes/received",
        "broker/bytes/sent",
        "broker/messages/received",
        "broker/messages/sent",
        "broker/publish/messages/received",
        "broker/publish/messages/sent",
        "broker/publish/messages/dropped",
        "broker/publish/bytes/received",
        "broker/publish/bytes/sent",
    }
)
_NUMBER = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)")
_NAME = re.compile(r"[^a-zA-Z0-9_]")


# Names Prometheus's conventions reserve for other types: a gauge must not end in `_total` or `_count`.
_RENAMED = {"broker/clients/total": "broker_clients_known", "broker/uptime": "broker_uptime_seconds"}


def metric_name(path: str) -> str:
    """`broker/clients/connected` -> `broker_clients_connected`; `broker/subscriptions/count` ->
    `broker_subscriptions`; `broker/retained messages/count` -> `broker_retained_messages` (a counter's
    `_total` is added by the exposition)."""
    if path in _RENAMED:
        return _RENAMED[path]
    return _NAME.sub("_", path.removesuffix("/count"))


@dataclass
class Figures:
    """The latest value of each `$SYS/broker/...` topic (path below `$SYS/`), and whether they flow."""

    values: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    connected: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, topic: str, payload: bytes | bytearray) -> None:
        path = topic.removeprefix("$SYS/")
        text = payload.decode("utf-8", "replace")
        if path == "broker/version":
            with self.lock:
                self.version = text
            return
        match = _NUMBER.match(text)  # "123 seconds" (uptime) counts as 123
        if match is None:
            return
        with self.lock:
            self.values[path] = float(match.group(1))

    @property
    def ready(self) -> bool:
        with self.lock:
            return self.connected and bool(self.values)

    def snapshot(self) -> tuple[dict[str, float], str | None]:
        with self.lock:
            return dict(self.values), self.version


class FiguresCollector(Collector):
    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        values, version = self.figures.snapshot()
        for path, value in sorted(values.items()):
            name = metric_name(path)
            help_text = f"Mosquitto's $SYS/{path}"
            if path in COUNTERS:
                counter = CounterMetricFamily(name, help_text)  # exposed as <name>_total
                counter.add_metric([], value)
                yield counter
            else:
                gauge = GaugeMetricFamily(name, help_text)
                gauge.add_metric([], value)
                yield gauge
        if version is not None:
            info = GaugeMetricFamily(
                "broker_info", "The broker's version ($SYS/broker/version)", labels=["version"]
            )
            info.add_metric([version], 1.0)
            yield info


@dataclass(frozen=True)
class ExporterSettings:
    host: str
    port: int
    bind_host: str
    bind_port: int
    username: str | None
    password: str | None
    client_id: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExporterSettings:
        endpoint = urlsplit(env.get("BROKER_ENDPOINT", "tcp://127.0.0.1:1883"))
        if endpoint.scheme != "tcp" or endpoint.hostname is None:
            raise ValueError(f"BROKER_ENDPOINT must be tcp://host:port, not {env.get('BROKER_ENDPOINT')!r}")
        bind_host, _, bind_port = env.get("BIND_ADDRESS", ":9234").rpartition(":")
        return cls(
            host=endpoint.hostname,
            port=endpoint.port or 1883,
            bind_host=bind_host or "0.0.0.0",  # noqa: S104 - a Pod serves its metrics port
            bind_port=int(bind_port),
            username=env.get("MQTT_USER") or None,
            password=env.get("MQTT_PASS") or None,
            client_id=env.get("MQTT_CLIENT_ID", "mqtt-operator-exporter"),
        )


def _client(settings: ExporterSettings, figures: Figures) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv311)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    client.reconnect_delay_set(min_delay=1, max_delay=10)

    def on_connect(c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("the broker refused the exporter's login: %s", reason)
            return
        c.subscribe(SYS_TOPIC, qos=0)
        with figures.lock:
            figures.connected = True
        log.info("connected to the broker", extra={"broker": f"{settings.host}:{settings.port}"})

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with figures.lock:
            figures.connected = False
        log.warning("disconnected from the broker: %s", reason)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        figures.update(message.topic, message.payload)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    return client


def _server(settings: ExporterSettings, figures: Figures) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(FiguresCollector(figures))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            if not figures.ready:
                self.send_error(
                    503, "no figures from the broker (not connected yet, or the login is refused)"
                )
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # a scrape every few seconds is not news
            pass

    return ThreadingHTTPServer((settings.bind_host, settings.bind_port), Handler)


def main(env: Mapping[str, str] | None = None) -> int:
    try:
        settings = ExporterSettings.from_env(os.environ if env is None else env)
    except ValueError as err:
        log.error("bad configuration: %s", err)
        return 2
    figures = Figures()
    client = _client(settings, figures)
    server = _server(settings, figures)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client.connect_async(settings.host, settings.port, keepalive=30)
    client.loop_start()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    log.info("serving /metrics", extra={"address": f"{settings.bind_host}:{settings.bind_port}"})
    stop.wait()
    server.shutdown()
    client.disconnect()
    client.loop_stop()
    return 0
