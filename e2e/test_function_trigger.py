"""examples/functiontrigger.yaml, applied as it is: a car's battery report reaches the battery-alerts
function running in the cluster (images/function, a Deployment behind the Service the example's
serviceRef names), as a CloudEvent; the function's answer comes back to the car on its command topic.
What the function received is read from its log with `kubectl logs`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.helpers import MQACL, MQU, HostDevice, apply_examples, device_access, wait_ready_instance
from testenv.cluster import Namespace, wait_for

MQFT = "functiontriggers.mqtt-operator.io"
TRIGGER = "battery-alerts"
WORKERS = f"{TRIGGER}-trigger"
PORT = 8080  # the example's serviceRef port


def _function_calls(cluster: Any, ns: str) -> list[str]:
    """The function's log lines for calls (`POST / 200 subject=... levels=[...] -> command`)."""
    proc = cluster.kubectl("logs", "-n", ns, f"deployment/{TRIGGER}", check=False)
    return [line for line in proc.stdout.splitlines() if line.startswith("POST ")]


@pytest.mark.node_only("the function's image is built and imported on the node; e2e/kind/ does not load it")
def test_a_battery_report_calls_the_function_and_its_answer_reaches_the_car(
    cluster: Any, namespace: Namespace
) -> None:
    ns = namespace.namespace
    cluster.install_function(ns)
    apply_examples(namespace, "mqttinstance", "functiontrigger")
    for manifest in device_access(
        "car-3", publish=("vehicles/car-3/battery",), receive=("vehicles/car-3/cmd",)
    ):
        namespace.apply(manifest)
    wait_ready_instance(namespace)
    namespace.wait_condition(MQU, "car-3", timeout=90)
    namespace.wait_condition(MQACL, "car-3-access", timeout=90)
    namespace.wait_condition(MQFT, TRIGGER, timeout=120)
    trigger = namespace.get(MQFT, TRIGGER) or {}
    assert trigger["status"]["functionUrl"] == f"http://{TRIGGER}.{ns}.svc:{PORT}/"
    # A ready worker holds its subscription, so the car's message is not published to nobody.
    wait_for(
        "a ready trigger worker",
        lambda: ((namespace.get("statefulset", WORKERS) or {}).get("status") or {}).get("readyReplicas"),
        timeout=90,
    )
    wait_for(
        "the function Ready",
        lambda: ((namespace.get("deployment", TRIGGER) or {}).get("status") or {}).get("readyReplicas"),
        timeout=90,
    )
    assert _function_calls(cluster, ns) == []  # nothing called the function before the car spoke

    with cluster.broker(ns, "devices") as (broker_host, broker_port):
        car = HostDevice(
            broker_host, broker_port, "car-3", namespace.secret("car-3-credentials"), client_id="car-3"
        )
        try:
            assert car.connect() == 0
            assert car.subscribe("vehicles/car-3/cmd") < 0x80
            assert car.publish("vehicles/car-3/battery", json.dumps({"level": 17}).encode()) < 0x80

            topic, reply = car.messages.get(timeout=60)
            assert topic == "vehicles/car-3/cmd"
            assert json.loads(reply) == {"command": "notify-driver", "level": 17}
        finally:
            car.close()
    # One call, a binary-mode CloudEvent whose subject is the car's topic and whose body is the report.
    assert _function_calls(cluster, ns) == [
        "POST / 200 subject=vehicles/car-3/battery levels=[17] -> notify-driver"
    ]

    ready = namespace.wait_condition(MQFT, TRIGGER, timeout=60)
    assert ready["status"] == "True"
    reachable = namespace.condition(MQFT, TRIGGER, "FunctionReachable")
    assert reachable is not None and reachable["status"] == "True", reachable
    # The operator collects the workers' counters every 15 s.
    counters = wait_for(
        "the succeeded counter in status",
        lambda: (
            (c := ((namespace.get(MQFT, TRIGGER) or {}).get("status") or {}).get("counters") or {})
            and c.get("succeeded", 0) >= 1
            and c
        ),
        timeout=60,
    )
    assert counters.get("failed", 0) == 0
    assert counters.get("deadLettered", 0) == 0
