"""The broker exporter's pure part: $SYS topics to Prometheus names and types."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mqtt_operator.broker.exporter import ExporterSettings, Figures, FiguresCollector, metric_name


def test_names_follow_the_topic_without_names_reserved_for_other_types() -> None:
    assert metric_name("broker/clients/connected") == "broker_clients_connected"
    assert metric_name("broker/subscriptions/count") == "broker_subscriptions"
    assert metric_name("broker/retained messages/count") == "broker_retained_messages"
    assert metric_name("broker/clients/total") == "broker_clients_known"
    assert metric_name("broker/load/messages/received/1min") == "broker_load_messages_received_1min"


def test_counters_gauges_uptime_and_version() -> None:
    figures = Figures()
    for topic, payload in (
        ("$SYS/broker/messages/received", b"120"),
        ("$SYS/broker/clients/connected", b"3"),
        ("$SYS/broker/uptime", b"42 seconds"),
        ("$SYS/broker/version", b"mosquitto version 2.0.21"),
        ("$SYS/broker/load/messages/received/1min", b"1.75"),
        ("$SYS/broker/unknown", b"not a number"),
    ):
        figures.update(topic, payload)
    registry = CollectorRegistry()
    registry.register(FiguresCollector(figures))
    text = generate_latest(registry).decode()
    assert "# TYPE broker_messages_received_total counter" in text
    assert "broker_messages_received_total 120.0" in text
    assert "# TYPE broker_clients_connected gauge" in text and "broker_clients_connected 3.0" in text
    assert "broker_uptime_seconds 42.0" in text
    assert 'broker_info{version="mosquitto version 2.0.21"} 1.0' in text
    assert "broker_load_messages_received_1min 1.75" in text
    assert "unknown" not in text
    assert not figures.ready  # figures, but not connected: /metrics answers 503


def test_settings_from_the_sidecars_environment() -> None:
    settings = ExporterSettings.from_env(
        {"BROKER_ENDPOINT": "tcp://127.0.0.1:1884", "BIND_ADDRESS": ":9234", "MQTT_USER": "admin"}
    )
    assert (settings.host, settings.port, settings.bind_host, settings.bind_port) == (
        "127.0.0.1",
        1884,
        "0.0.0.0",  # noqa: S104 - what the builder asks for
        9234,
    )
    assert settings.username == "admin" and settings.password is None
