"""What the e2e tests share: the examples, a device that connects to a given host, Pod lookups."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from testenv.cluster import Namespace, wait_for
from testenv.device import Device
from testenv.paths import tool

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MQI, MQU, MQACL, MQKC = (
    "mqttinstances.mqtt-operator.io",
    "authusers.mqtt-operator.io",
    "aclpolicies.mqtt-operator.io",
    "kafkaconnectors.mqtt-operator.io",
)


class HostDevice(Device):
    """testenv's device, connecting to `host` instead of loopback (a Pod's address here)."""

    def __init__(
        self, host: str, port: int, username: str | None, password: str | None, **kwargs: Any
    ) -> None:
        super().__init__(port, username, password, **kwargs)
        self.host = host

    def connect(self) -> int:
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        return int(self.connack.get(timeout=10).value)


def connects(host: str, port: int, username: str | None, password: str | None) -> bool:
    device = HostDevice(host, port, username, password)
    try:
        return device.connect() == 0
    except OSError:
        return False
    finally:
        device.close()


def device_access(
    name: str, publish: tuple[str, ...] = (), receive: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """A device's account on the examples' broker: AuthUser `name` (password generated into the Secret
    `<name>-credentials`) and AclPolicy `<name>-access` allowing it to publish and to subscribe and
    receive on these topics."""
    rules = [{"effect": "allow", "actions": ["publish"], "topics": list(publish)}] if publish else []
    if receive:
        rules.append({"effect": "allow", "actions": ["subscribe", "receive"], "topics": list(receive)})
    return [
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AuthUser",
            "metadata": {"name": name},
            "spec": {"instanceRef": {"name": "devices"}, "username": name},
        },
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AclPolicy",
            "metadata": {"name": f"{name}-access"},
            "spec": {"instanceRef": {"name": "devices"}, "users": [name], "rules": rules},
        },
    ]


def apply_examples(ns: Namespace, *names: str) -> None:
    """`kubectl apply -n NS -f examples/<name>.yaml ...`, as a user would."""
    args = [arg for name in names for arg in ("-f", str(EXAMPLES / f"{name}.yaml"))]
    ns.cp.kubectl("apply", "-n", ns.namespace, *args)


def example_connector_with_car(ns: Namespace, car: str) -> None:
    """examples/mqttinstance.yaml and kafkaconnector.yaml applied, and car `car` allowed to publish its
    state, all Ready: the broker, the car's account and the connector."""
    apply_examples(ns, "mqttinstance", "kafkaconnector")
    for manifest in device_access(car, publish=(f"vehicles/{car}/state",)):
        ns.apply(manifest)
    wait_ready_instance(ns)
    ns.wait_condition(MQU, car, timeout=90)
    ns.wait_condition(MQKC, "vehicle-state-to-kafka", timeout=120)


def pod(ns: Namespace, name: str) -> dict[str, Any]:
    return json.loads(ns.cp.kubectl("get", "pod", "-n", ns.namespace, name, "-o", "json").stdout)


def pod_ready(ns: Namespace, name: str) -> dict[str, Any] | None:
    """The Pod when it exists and its Ready condition is True."""
    found = ns.get("pod", name)
    conditions = ((found or {}).get("status") or {}).get("conditions") or []
    return found if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None


def restart_count(found: dict[str, Any], container: str) -> int:
    statuses = (found.get("status") or {}).get("containerStatuses") or []
    return next((int(s["restartCount"]) for s in statuses if s["name"] == container), 0)


def wait_ready_instance(ns: Namespace, name: str = "devices", timeout: float = 90) -> dict[str, Any]:
    ns.wait_condition(MQI, name, timeout=timeout)
    return wait_for(f"Pod {name}-0 Ready", lambda: pod_ready(ns, f"{name}-0"), timeout)


def kafka_key_counts(bootstrap: str, topic: str, prefix: str, timeout: float = 120) -> Counter[str]:
    """How many records of the Kafka topic so far have each key starting with `prefix` (kcat)."""
    proc = subprocess.run(
        [tool("kcat"), "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k\n", "-q"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Counter(line for line in proc.stdout.splitlines() if line.startswith(prefix))


def kafka_keys(bootstrap: str, topic: str, prefix: str) -> set[str]:
    """The keys starting with `prefix` of every record in the Kafka topic so far."""
    return set(kafka_key_counts(bootstrap, topic, prefix))
