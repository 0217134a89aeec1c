"""`kubectl mqtt` as a user runs it against the real node: kubectl port-forwards through the API server
to the broker Pod and the plugin logs in with the instance's admin Secret; `status` shows the broker
the image runs, `tail` what a device publishes, `clients` the device with its address, `kick` takes it
offline; all answered by the broker plugin in the image's Mosquitto 2.0.21."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from e2e.helpers import MQU, HostDevice, apply_examples, device_access, wait_ready_instance
from testenv.cluster import Namespace, wait_for
from testenv.paths import tool

PLUGIN = str(Path(sys.executable).parent / "kubectl-mqtt")


def plugin(cluster: Any, namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLUGIN, "--kubeconfig", cluster.kubeconfig, "-n", namespace, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            "KUBECTL": tool("kubectl"),
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path(cluster.kubeconfig).parent),
        },
        check=False,
    )


def test_status_and_tail_through_a_port_forward(cluster: Any, namespace: Namespace) -> None:
    ns = namespace.namespace
    apply_examples(namespace, "mqttinstance")
    for manifest in device_access("car-17", publish=("vehicles/#",)):
        namespace.apply(manifest)
    wait_ready_instance(namespace)
    namespace.wait_condition(MQU, "car-17", timeout=90)

    proc = plugin(cluster, ns, "-o", "json", "status", "devices")
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["instance"]["ready"] == "True (BrokerReady)"
    assert view["broker"]["version"] == "2.0.21"  # the image's Mosquitto, reached through the API server

    password = namespace.secret("car-17-credentials")
    with cluster.broker(ns, "devices") as (host, port):
        car = HostDevice(host, port, "car-17", password, client_id="car-17")
        try:
            assert car.connect() == 0
            car.client.publish(
                "vehicles/car-17/state", b'{"speed": 88}', qos=1, retain=True
            ).wait_for_publish(10)
            listed = plugin(cluster, ns, "-o", "json", "clients", "devices", "car-*", "--online")
            assert listed.returncode == 0, listed.stderr
            (row,) = json.loads(listed.stdout)["clients"]
            # The device came in through a port-forward: the broker sees the Pod's loopback.
            assert (row["clientId"], row["username"], row["online"]) == ("car-17", "car-17", True)
            assert row["address"]
            kicked = plugin(cluster, ns, "kick", "devices", "car-17")
            assert kicked.returncode == 0, kicked.stderr
            assert car.disconnected.wait(15), "the broker did not disconnect car-17"
        finally:
            car.close()
    tail = plugin(
        cluster, ns, "-o", "json", "tail", "devices", "vehicles/#", "--count", "1", "--timeout", "20"
    )
    assert tail.returncode == 0, tail.stderr
    record = json.loads(tail.stdout.splitlines()[0])
    assert (record["topic"], record["payload"], record["retain"]) == (
        "vehicles/car-17/state",
        '{"speed": 88}',
        True,
    )
    # The plugin's port-forwards ended with it.
    wait_for(
        "no port-forward left",
        lambda: (
            not subprocess.run(["pgrep", "-f", f"--namespace {ns} port-forward"], capture_output=True).stdout
        ),
        10,
    )
