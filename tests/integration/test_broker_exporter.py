"""The broker's metrics exporter (spec.monitoring.exporter): `mqtt-operator broker-exporter`, configured
by the environment the StatefulSet builder gives its sidecar,
against a real Mosquitto run from the mosquitto.conf the operator renders (dynamic security on, so the
exporter logs in as the admin account, as in the Pod). The figures must move when a device publishes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from mqtt_operator.resources.identity import InstanceIdentity
from mqtt_operator.resources.mosquitto_conf import render_mosquitto_conf
from mqtt_operator.resources.statefulset import EXPORTER_CONTAINER, statefulset
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.paths import tool
from testenv.process import Server, free_port

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-secret-pw"
SPEC = MqttInstanceSpec.model_validate(
    {
        "authorization": {"enabled": True},
        "monitoring": {"exporter": {"enabled": True, "sysIntervalSeconds": 1}},
    }
)
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$")


def exporter_env(broker_port: int, metrics_port: int, password: str) -> dict[str, str]:
    """The sidecar's environment as the builder writes it, with the Pod's addresses and the Secret's
    value filled in the way the kubelet would."""
    pod = statefulset(InstanceIdentity(name="devices", namespace="iot", uid="u"), SPEC, "hash")["spec"][
        "template"
    ]
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == EXPORTER_CONTAINER]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "valueFrom" in var:
            assert var["valueFrom"]["secretKeyRef"]["key"] == "password"
            env[var["name"]] = password
        else:
            env[var["name"]] = var["value"]
    assert env["BROKER_ENDPOINT"] == "tcp://127.0.0.1:1883"
    env["BROKER_ENDPOINT"] = f"tcp://127.0.0.1:{broker_port}"
    assert env["BIND_ADDRESS"] == ":9234"
    env["BIND_ADDRESS"] = f"127.0.0.1:{metrics_port}"
    return env


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    result = {}
    for line in text.splitlines():
        if (m := METRIC_LINE.match(line)) is not None:
            result[m.group(1)] = float(m.group(2))
    return result


def wait_for_metrics(port: int, check: Any, what: str, timeout: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
        except (OSError, urllib.error.URLError):
            last = {}
        if last and check(last):
            return last
        time.sleep(0.3)
    broker_figures = {k: v for k, v in last.items() if k.startswith("broker_")}
    raise AssertionError(f"{what} not seen within {timeout}s; last broker_* figures: {broker_figures}")


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    conf = render_mosquitto_conf(SPEC)
    assert "sys_interval 1" in conf.splitlines()
    b = from_rendered(conf, 1883, free_port(), (ADMIN_USERNAME, ADMIN_PASSWORD)).start()
    yield b
    b.stop()


def start_exporter(broker: Mosquitto, password: str, log: Path) -> tuple[Server, int]:
    port = free_port()
    server = Server(
        "broker-exporter",
        [sys.executable, "-m", "mqtt_operator", "broker-exporter", "--log-format", "text"],
        log,
        env=exporter_env(broker.port, port, password),
    )
    server.start()
    return server, port


def test_exporter_serves_the_brokers_figures_as_they_move(broker: Mosquitto) -> None:
    exporter, port = start_exporter(broker, ADMIN_PASSWORD, broker.root / "exporter.log")
    try:
        # Once connected it subscribes to $SYS/# and serves /metrics. The first values are the retained
        # ones of before it connected; a second later the broker publishes figures that count the exporter.
        before = wait_for_metrics(
            port,
            lambda m: (
                m.get("broker_clients_connected", 0) >= 1 and "broker_publish_messages_received_total" in m
            ),
            "the first $SYS figures counting the exporter's own connection",
        )
        # A device (the admin account here: any account may publish) connects and publishes 25 messages.
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="car-1", protocol=mqtt.MQTTv5)
        device.username_pw_set(ADMIN_USERNAME, ADMIN_PASSWORD)
        device.connect("127.0.0.1", broker.port)
        device.loop_start()
        try:
            for i in range(25):
                device.publish("vehicles/car-1/state", f'{{"speed": {i}}}', qos=1).wait_for_publish(5)
            during = wait_for_metrics(
                port,
                lambda m: (
                    m["broker_clients_connected"] >= before["broker_clients_connected"] + 1
                    and m["broker_publish_messages_received_total"]
                    >= before["broker_publish_messages_received_total"] + 25
                ),
                "the device's connection and its 25 PUBLISHes",
            )
        finally:
            device.loop_stop()
            device.disconnect()
        assert during["broker_messages_received_total"] > before["broker_messages_received_total"]
        assert during["broker_bytes_received_total"] > before["broker_bytes_received_total"]
        assert during["broker_clients_known"] >= 2
        # The device left: connected falls back while the totals stay.
        after = wait_for_metrics(
            port,
            lambda m: m["broker_clients_connected"] == before["broker_clients_connected"],
            "the device's disconnect",
        )
        assert (
            after["broker_publish_messages_received_total"]
            >= during["broker_publish_messages_received_total"]
        )
        assert "broker_publish_messages_dropped_total" in after
        assert "broker_subscriptions" in after
        # Prometheus's own linter on the real exposition (counters end in _total, every series has help).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        lint = subprocess.run(
            [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
    finally:
        exporter.stop()


def test_exporter_with_a_wrong_password_serves_nothing(broker: Mosquitto) -> None:
    """Refused by the broker, it keeps retrying and never serves /metrics: the sidecar stays unready."""
    exporter, port = start_exporter(broker, "wrong", broker.root / "exporter-wrong.log")
    try:
        time.sleep(3)
        assert exporter.running
        with pytest.raises(OSError):
            scrape(port)
    finally:
        exporter.stop()
