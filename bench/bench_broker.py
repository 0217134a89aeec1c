"""The broker plugin's own figures (docs/broker-plugin.md):

- `broker_plugin_cost_ratio`: the broker's throughput (Mosquitto's own C clients, QoS 1, 256-byte
  payloads, one publisher -> one subscriber) with the plugin loaded as the operator loads it (stamps,
  client table, ACL callback) over the same broker without any plugin, same run;
- `plugin_clients_5000_s`: `kubectl mqtt clients`' broker side (the paged `listClients` requests over
  the admin session) with 5,000 clients connected; `plugin_clients_50_s` the same with 50, same run;
- `broker_backlog_intake_msgs_s_autosave_{1,5,30}s`: how fast a broker queues 200,000 messages for an
  offline persistent session (the backlog a sink outage builds) when it saves every 1, 5 or 30 s, and
  `broker_autosave_5s_intake_ratio` (5 s over 30 s, same run): the cost behind the default
  `spec.persistence.autosaveInterval` (docs/reliability.md); `broker_clean_stop_save_s` how long the
  final save of that backlog takes on SIGTERM.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, record
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.kubectl.broker import Session, session
from mqtt_operator.kubectl.cluster import Login
from mqtt_operator.kubectl.main import list_clients
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from mqtt_operator.resources.mosquitto_conf import render_mosquitto_conf
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.paths import tool
from testenv.process import free_port

MESSAGES = 100_000
PAYLOAD = "x" * 256
ROUNDS = 3


def rendered(keep_plugin: bool) -> Mosquitto:
    # Authorization off: the plugin is the only one (access allow), so the comparison is the plugin's
    # cost alone, not dynamic security's. Without it: the same file with the plugin's lines left out.
    spec = MqttInstanceSpec.model_validate({"authorization": {"enabled": False}})
    conf = render_mosquitto_conf(spec)
    if not keep_plugin:
        conf = "\n".join(line for line in conf.splitlines() if not line.startswith("plugin"))
    return from_rendered(conf, 1883, free_port(), None)


def with_plugin() -> Mosquitto:
    return rendered(keep_plugin=True)


def without_plugin() -> Mosquitto:
    return rendered(keep_plugin=False)


def throughput(broker: Mosquitto) -> tuple[float, float]:
    """Messages per second from one mosquitto_pub (QoS 1) to one mosquitto_sub (QoS 1), from the
    first message published to the last one received, and the broker's CPU (user + system) per
    message in microseconds: the rate is bounded by the clients too, the CPU is the broker's alone."""
    port = str(broker.port)
    sub = subprocess.Popen(
        [tool("mosquitto_sub"), "-p", port, "-q", "1", "-t", "bench/t", "-V", "5"],
        stdout=subprocess.PIPE,
    )
    assert sub.stdout is not None
    received = 0
    done = threading.Event()

    def count() -> None:
        nonlocal received
        for _ in sub.stdout:  # type: ignore[union-attr]
            received += 1
            if received == MESSAGES + 1:
                done.set()

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    try:
        # The subscription is live once a probe comes through; it counts as the first message.
        while received == 0:
            subprocess.run(
                [tool("mosquitto_pub"), "-p", port, "-q", "1", "-t", "bench/t", "-m", "probe"], check=True
            )
            time.sleep(0.2)
        while received > 1:  # more than one probe went through: start the count after them
            received = 1
        assert broker.server is not None and broker.server.proc is not None
        pid = broker.server.proc.pid
        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        # --repeat, not -l: at the end of its input `-l` disconnects with messages still unsent.
        subprocess.run(
            [tool("mosquitto_pub"), "-p", port, "-q", "1", "-t", "bench/t", "-V", "5",
             "--repeat", str(MESSAGES), "-m", PAYLOAD],
            check=True, timeout=600,
        )  # fmt: skip
        assert done.wait(600), f"the subscriber received {received - 1} of {MESSAGES}"
        rate = MESSAGES / (time.monotonic() - start)
        return rate, (cpu_seconds(pid) - cpu_before) / MESSAGES * 1e6
    finally:
        sub.terminate()
        sub.wait(timeout=10)


def plugin_cost() -> dict[str, dict[str, object]]:
    rates: dict[str, list[float]] = {"with": [], "without": []}
    cpu: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(ROUNDS):  # interleaved, so drift on the shared machine hits both alike
        for name, make in (("without", without_plugin), ("with", with_plugin)):
            broker = make().start()
            try:
                rate, us = throughput(broker)
            finally:
                broker.stop()
            rates[name].append(rate)
            cpu[name].append(us)
    best = {name: max(values) for name, values in rates.items()}
    least = {name: min(values) for name, values in cpu.items()}
    how = f"mosquitto_pub --repeat -> mosquitto_sub, QoS 1, 256 B, {MESSAGES} msgs, best of {ROUNDS}"
    same = "the operator's mosquitto.conf with the plugin (stamps, client table) over the same without it"
    return {
        "broker_with_plugin_msgs_s": {"value": round(best["with"]), "unit": "msg/s", "how": how},
        "broker_without_plugin_msgs_s": {"value": round(best["without"]), "unit": "msg/s", "how": how},
        "broker_plugin_cost_ratio": {
            "value": round(best["with"] / best["without"], 3),
            "unit": "ratio",
            "how": f"throughput: {same}, same run",
        },
        "broker_cpu_us_per_msg_with_plugin": {"value": round(least["with"], 2), "unit": "us/msg", "how": how},
        "broker_cpu_us_per_msg_without_plugin": {
            "value": round(least["without"], 2),
            "unit": "us/msg",
            "how": how,
        },
        "broker_plugin_cpu_ratio": {
            "value": round(least["with"] / least["without"], 3),
            "unit": "ratio",
            "how": f"broker CPU per message: {same}, same run",
        },
    }


def connect_many(port: int, count: int, prefix: str) -> list[socket.socket]:
    """`count` MQTT 3.1.1 logins over raw sockets: all CONNECTs sent, then all CONNACKs read."""

    def utf8(s: str) -> bytes:
        return struct.pack("!H", len(s.encode())) + s.encode()

    socks = []
    for i in range(count):
        body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + utf8(f"{prefix}-{i:05d}")
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(bytes([0x10, len(body)]) + body)
        socks.append(s)
    for s in socks:
        assert s.recv(4) == b"\x20\x02\x00\x00"
    return socks


def listing_seconds(s: Session, expected: int) -> float:
    list_clients(s, "car-*", online_only=True)  # warm-up
    best = float("inf")
    for _ in range(5):
        start = time.monotonic()
        found = list_clients(s, "car-*", online_only=True)
        best = min(best, time.monotonic() - start)
        assert len(found) == expected, len(found)
    return best


def clients_listing() -> dict[str, dict[str, object]]:
    figures: dict[str, dict[str, object]] = {}
    admin = Login(ADMIN_USERNAME, "unused-without-authorization")
    for count in (50, 5000):
        broker = with_plugin().start()
        try:
            # The admin session first: paho's select() cannot watch a socket numbered above 1024.
            with session("127.0.0.1", broker.port, admin, "bench-admin") as s:
                socks = connect_many(broker.port, count, "car")
                try:
                    seconds = listing_seconds(s, count)
                finally:
                    for sock in socks:
                        sock.close()
        finally:
            broker.stop()
        figures[f"plugin_clients_{count}_s"] = {
            "value": round(seconds, 3),
            "unit": "s",
            "how": f"every page of listClients (1000 per page) with {count} clients online, best of 5",
        }
    return figures


BACKLOG = 200_000
AUTOSAVE_INTERVALS = ("1s", "5s", "30s")


def backlog_intake(autosave: str) -> tuple[float, float]:
    """Messages a second one mosquitto_pub (QoS 1) gets into a backlog for an offline persistent session,
    and the seconds the broker takes to exit on SIGTERM (its final save of that backlog)."""
    spec = MqttInstanceSpec.model_validate(
        {"authorization": {"enabled": False}, "persistence": {"autosaveInterval": autosave}}
    )
    broker = from_rendered(render_mosquitto_conf(spec), 1883, free_port(), None).start()
    try:
        port = str(broker.port)
        # The session's owner subscribes and leaves (-E), its session kept for an hour.
        subprocess.run(
            [tool("mosquitto_sub"), "-p", port, "-V", "5", "-c", "-x", "3600", "-i", "backlog-owner",
             "-q", "1", "-t", "bench/backlog", "-E"],
            check=True, timeout=30,
        )  # fmt: skip
        start = time.monotonic()
        subprocess.run(
            [tool("mosquitto_pub"), "-p", port, "-q", "1", "-t", "bench/backlog", "-V", "5",
             "--repeat", str(BACKLOG), "-m", PAYLOAD],
            check=True, timeout=900,
        )  # fmt: skip
        rate = BACKLOG / (time.monotonic() - start)
        assert broker.server is not None
        stop = time.monotonic()
        broker.server.stop(timeout=120)
        return rate, time.monotonic() - stop
    finally:
        broker.stop()


def autosave_cost() -> dict[str, dict[str, object]]:
    rates: dict[str, list[float]] = {interval: [] for interval in AUTOSAVE_INTERVALS}
    saves: list[float] = []
    for _ in range(2):  # interleaved, so drift on the shared machine hits every setting alike
        for interval in AUTOSAVE_INTERVALS:
            rate, save = backlog_intake(interval)
            rates[interval].append(rate)
            saves.append(save)
    best = {interval: max(values) for interval, values in rates.items()}
    how = (
        f"mosquitto_pub --repeat QoS 1, 256 B, {BACKLOG} msgs queued for an offline persistent session; "
        "the operator's mosquitto.conf with that autosaveInterval; best of 2"
    )
    figures: dict[str, dict[str, object]] = {
        f"broker_backlog_intake_msgs_s_autosave_{interval}": {
            "value": round(best[interval]),
            "unit": "msg/s",
            "how": how,
        }
        for interval in AUTOSAVE_INTERVALS
    }
    figures["broker_autosave_5s_intake_ratio"] = {
        "value": round(best["5s"] / best["30s"], 3),
        "unit": "ratio",
        "how": "backlog intake with autosaveInterval 5s (the default) over 30s, same run",
    }
    figures["broker_clean_stop_save_s"] = {
        "value": round(min(saves), 2),
        "unit": "s",
        "how": f"SIGTERM to exit of a broker holding {BACKLOG} queued 256 B messages (its final save), best",
    }
    return figures


def main() -> None:
    only = sys.argv[1:]
    for measure in (clients_listing, plugin_cost, autosave_cost):
        if only and measure.__name__ not in only:
            continue
        figures = measure()
        for name, figure in figures.items():
            print(f"{name}: {figure['value']} {figure['unit']}", flush=True)
        record(figures)


if __name__ == "__main__":
    main()
