"""`kubectl mqtt` (the console script `kubectl-mqtt`) against a real API server and a real Mosquitto with
dynamic security: it finds the instance, logs in with the admin Secret it reads through kubectl, shows
the broker's figures and the integrations bound to the instance, and prints what devices publish.

No kubelet runs here, so the broker is reached with `--address` (the port-forward path is
e2e/test_kubectl_plugin.py on the real node)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto, dynsec_plugin, init_dynsec, stamp_plugin
from testenv.paths import tool

ADMIN = ("mqtt-operator-admin", "admin-pw-7f3a")
PLUGIN = str(Path(sys.executable).parent / "kubectl-mqtt")
INSTANCE = """
apiVersion: mqtt-operator.io/v1alpha1
kind: MqttInstance
metadata: {name: devices}
spec:
  listeners: {mqtt: {port: 1883}}
"""
CONNECTOR = """
apiVersion: mqtt-operator.io/v1alpha1
kind: KafkaConnector
metadata: {name: vehicles}
spec:
  instanceRef: {name: devices}
  direction: mqttToKafka
  kafka: {bootstrapServers: "kafka:9092"}
  mqttToKafka: {topicFilters: ["cars/#"], topic: vehicles}
"""


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """Mosquitto with our plugin and dynamic security, loaded and initialised as in the broker Pod, `$SYS`
    figures every second, and a device account `car` that may publish under cars/ and subscribe to
    cmd/."""
    server = Mosquitto(config="")
    data = server.root / "dynsec.json"
    init_dynsec(data, *ADMIN)
    server.config = (
        f"plugin {stamp_plugin()}\nplugin_opt_clients on\nplugin_opt_control_users {ADMIN[0]}\n"
        f"plugin {dynsec_plugin()}\nplugin_opt_config_file {data}\nsys_interval 1\n"
    )
    server.start()
    ctrl = [tool("mosquitto_ctrl"), "-h", "127.0.0.1", "-p", str(server.port), "-u", ADMIN[0], "-P", ADMIN[1]]
    for command in (
        ["createClient", "car", "-p", "car-pw"],
        ["createRole", "cars"],
        ["addRoleACL", "cars", "publishClientSend", "cars/#", "allow"],
        ["addRoleACL", "cars", "subscribePattern", "cmd/#", "allow"],
        ["addRoleACL", "cars", "publishClientReceive", "cmd/#", "allow"],
        ["addClientRole", "car", "cars"],
    ):
        subprocess.run([*ctrl, "dynsec", *command], check=True, capture_output=True, timeout=10)
    yield server
    server.stop()


def plugin(
    cp: ControlPlane, namespace: str, *args: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLUGIN, "--kubeconfig", str(cp.kubeconfig), "-n", namespace, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"KUBECTL": tool("kubectl"), "PATH": "/usr/bin:/bin", "HOME": str(cp.root)},
        check=False,
        input=stdin,
    )


class Car:
    """A device `car` (MQTT 5) connected as `client_id`, subscribed to cmd/<client_id>, recording what it
    receives and why it was disconnected."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.gone: queue.Queue[Any] = queue.Queue()
        ready: queue.Queue[Any] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set("car", "car-pw")
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.gone.put(rc)
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: ready.put(codes)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(f"cmd/{client_id}", qos=2)
        self.client.connect("127.0.0.1", broker.port, keepalive=40)
        self.client.loop_start()
        (code,) = ready.get(timeout=10)
        assert not code.is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker: Mosquitto, topic: str, payload: str, *extra: str) -> None:
    subprocess.run(
        [tool("mosquitto_pub"), "-p", str(broker.port), "-u", "car", "-P", "car-pw", "-V", "mqttv5",
         "-q", "1", "-t", topic, "-m", payload, *extra],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip


def setup_instance(cp: ControlPlane, namespace: str) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=INSTANCE)
    cp.kubectl(
        "create", "secret", "generic", "devices-admin", "-n", namespace,
        f"--from-literal=username={ADMIN[0]}", f"--from-literal=password={ADMIN[1]}",
    )  # fmt: skip


def test_status_shows_the_broker_and_the_integrations_bound_to_it(
    crds_installed: ControlPlane, namespace: str, broker: Mosquitto
) -> None:
    cp = crds_installed
    setup_instance(cp, namespace)
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=CONNECTOR)
    status = {"replicas": 2, "readyReplicas": 1, "counters": {"received": 42, "delivered": 40, "failed": 2}}
    cp.kubectl(
        "patch", "kafkaconnector", "vehicles", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    # A device stays connected; $SYS shows it from the broker's next update (every second here).
    device = subprocess.Popen(
        [
            tool("mosquitto_sub"),
            "-p",
            str(broker.port),
            "-u",
            ADMIN[0],
            "-P",
            ADMIN[1],
            "-t",
            "$SYS/broker/uptime",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.5)
        proc = plugin(
            cp, namespace, "--address", f"127.0.0.1:{broker.port}", "-o", "json", "status", "devices"
        )
    finally:
        device.terminate()
        device.wait()
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["instance"]["name"] == "devices"
    assert view["broker"]["version"].startswith("2.0.")
    assert view["broker"]["clientsConnected"] >= 1  # the device
    assert view["integrations"] == [
        {
            "kind": "KafkaConnector",
            "name": "vehicles",
            "ready": "Unknown",
            "workers": "1/2",
            "figures": {"received": 42, "delivered": 40, "failed": 2},
        }
    ]
    table = plugin(cp, namespace, "--address", f"127.0.0.1:{broker.port}", "status", "devices")
    assert table.returncode == 0, table.stderr
    assert "KafkaConnector  vehicles" in table.stdout and "received 42" in table.stdout
    assert ADMIN[1] not in table.stdout + table.stderr + proc.stdout + proc.stderr


def test_tail_prints_what_devices_publish_with_their_properties(
    crds_installed: ControlPlane, namespace: str, broker: Mosquitto
) -> None:
    cp = crds_installed
    setup_instance(cp, namespace)
    # Retained, so they reach the tail whenever its subscription starts.
    publish(
        broker, "cars/17/state", '{"speed": 88}', "-r", "-D", "publish", "user-property", "fleet", "north"
    )
    publish(broker, "cars/18/state", "parked", "-r")
    publish(broker, "elsewhere/x", "not matched", "-r")
    proc = plugin(
        cp, namespace, "--address", f"127.0.0.1:{broker.port}", "-o", "json",
        "tail", "devices", "cars/#", "--count", "2", "--timeout", "10",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = sorted((json.loads(line) for line in proc.stdout.splitlines()), key=lambda r: r["topic"])
    assert [(r["topic"], r["payload"], r["retain"]) for r in records] == [
        ("cars/17/state", '{"speed": 88}', True),
        ("cars/18/state", "parked", True),
    ]
    # The device's own property, and who sent it as the broker plugin stamped it (not forgeable).
    assert records[0]["userProperties"] == [["fleet", "north"]]
    assert records[0]["publisher"]["address"] == "127.0.0.1"
    assert records[0]["publisher"]["clientId"].startswith("auto-")  # mosquitto_pub's generated id
    assert len(records[0]["messageId"]) == 36


def test_errors_say_what_to_do(crds_installed: ControlPlane, namespace: str, broker: Mosquitto) -> None:
    cp = crds_installed
    missing = plugin(cp, namespace, "--address", f"127.0.0.1:{broker.port}", "status", "nope")
    assert missing.returncode == 1
    assert f"no MqttInstance 'nope' in namespace '{namespace}'" in missing.stderr

    setup_instance(cp, namespace)
    # A user who may read MqttInstances but not the admin Secret.
    viewer = f"system:serviceaccount:{namespace}:viewer"
    cp.kubectl("create", "role", "mqi-reader", "-n", namespace, "--verb=get,list", "--resource=mqttinstances")
    cp.kubectl(
        "create", "rolebinding", "mqi-reader", "-n", namespace, "--role=mqi-reader", f"--user={viewer}"
    )
    refused = plugin(
        cp, namespace, "--as", viewer, "--address", f"127.0.0.1:{broker.port}", "status", "devices"
    )
    assert refused.returncode == 1
    assert "you may not read Secret 'devices-admin'" in refused.stderr, refused.stderr
    assert "ask for `get` on it" in refused.stderr

    down = shutil.which("true") and plugin(cp, namespace, "--address", "127.0.0.1:1", "status", "devices")
    assert down and down.returncode == 1
    assert "does not answer" in down.stderr


def test_clients_client_publish_unsubscribe_and_kick(
    crds_installed: ControlPlane, namespace: str, broker: Mosquitto
) -> None:
    cp = crds_installed
    setup_instance(cp, namespace)
    at = ("--address", f"127.0.0.1:{broker.port}")
    car = Car(broker, "car-17")
    try:
        listed = plugin(cp, namespace, *at, "-o", "json", "clients", "devices", "car-*")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["clients"]
        assert (row["clientId"], row["address"], row["username"], row["keepalive"]) == (
            "car-17",
            "127.0.0.1",
            "car",
            40,
        )
        table = plugin(cp, namespace, *at, "clients", "devices", "--online")
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines()[0].split()[:3] == ["CLIENT", "ID", "ONLINE"]
        assert any(line.split()[:3] == ["car-17", "yes", "127.0.0.1"] for line in table.stdout.splitlines())

        detail = plugin(cp, namespace, *at, "client", "devices", "car-17")
        assert detail.returncode == 0, detail.stderr
        assert "Client car-17: online" in detail.stdout
        assert any(line.split() == ["cmd/car-17", "2"] for line in detail.stdout.splitlines())

        sent = plugin(cp, namespace, *at, "publish", "devices", "cmd/car-17", "-", "--qos", "2",
                      "--user-property", "requestedBy=oncall", stdin="unlock")  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        msg = car.received.get(timeout=10)
        assert (msg.payload, msg.qos) == (b"unlock", 2)
        assert ("requestedBy", "oncall") in msg.properties.UserProperty

        gone = plugin(cp, namespace, *at, "unsubscribe", "devices", "car-17", "cmd/car-17")
        assert gone.returncode == 0, gone.stderr
        plugin(cp, namespace, *at, "publish", "devices", "cmd/car-17", "not delivered")
        with pytest.raises(queue.Empty):
            car.received.get(timeout=1)

        kicked = plugin(cp, namespace, *at, "kick", "devices", "car-17")
        assert kicked.returncode == 0, kicked.stderr
        assert getattr(car.gone.get(timeout=10), "value", None) == 0x98  # administrative action
        again = plugin(cp, namespace, *at, "kick", "devices", "car-17")
        assert again.returncode == 1
        assert "client car-17 is not connected" in again.stderr
    finally:
        car.close()
    outputs = plugin(cp, namespace, *at, "clients", "devices")
    assert ADMIN[1] not in outputs.stdout + outputs.stderr


def test_clients_watch_prints_connects_and_disconnects(
    crds_installed: ControlPlane, namespace: str, broker: Mosquitto
) -> None:
    cp = crds_installed
    setup_instance(cp, namespace)
    watch = subprocess.Popen(
        [PLUGIN, "--kubeconfig", str(cp.kubeconfig), "-n", namespace, "--address", f"127.0.0.1:{broker.port}",
         "clients", "devices", "car-*", "--watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"KUBECTL": tool("kubectl"), "PATH": "/usr/bin:/bin", "HOME": str(cp.root)},
    )  # fmt: skip
    try:
        assert watch.stdout is not None and watch.stderr is not None
        first = watch.stdout.readline()
        assert first.startswith("No clients"), (
            watch.stderr.read() if watch.poll() is not None else first
        )  # the list first, then the events
        car = Car(broker, "car-watch")
        car.close()
        lines = [watch.stdout.readline().split() for _ in range(2)]
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    assert [(words[1], words[2], words[3]) for words in lines] == [
        ("connect", "car-watch", "127.0.0.1"),
        ("disconnect", "car-watch", "127.0.0.1"),
    ]
