"""examples/functiontrigger.yaml, applied as it is: a car's battery report reaches a real HTTP function as
a CloudEvent, and the function's answer comes back to the car on its command topic.

The function is an HTTP server in this test process, listening on the local cluster's host address on
the bridge (where Pods reach this machine, as they reach Kafka), and named `battery-alerts` in the
namespace by a Service without selector and an EndpointSlice, the way devcluster names Kafka.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from e2e.helpers import MQACL, MQU, HostDevice, apply_examples, wait_ready_instance
from testenv.cluster import Namespace, wait_for

MQFT = "functiontriggers.mqtt-operator.io"
TRIGGER = "battery-alerts"
WORKERS = f"{TRIGGER}-trigger"
PORT = 8080  # the example's serviceRef port; no kube-proxy here, so the server listens on it


@contextmanager
def _function(host: str) -> Iterator[queue.Queue[tuple[dict[str, str], bytes]]]:
    """An HTTP function on `host:8080`: records each call (headers, body), answers with a JSON command."""
    calls: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            calls.put(({k.lower(): v for k, v in self.headers.items()}, body))
            level = json.loads(body).get("level")
            answer = json.dumps({"command": "notify-driver", "level": level}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, PORT), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="battery-alerts-function", daemon=True)
    thread.start()
    try:
        yield calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _function_service(address: str) -> list[dict[str, Any]]:
    """`battery-alerts.<ns>.svc:8080` -> `address:8080`, as the example's serviceRef expects."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": TRIGGER},
            "spec": {"ports": [{"name": "http", "port": PORT, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{TRIGGER}-external",
                "labels": {"kubernetes.io/service-name": TRIGGER},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address]}],
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        },
    ]


def _car_access(name: str) -> list[dict[str, Any]]:
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
            "metadata": {"name": f"{name}-battery"},
            "spec": {
                "instanceRef": {"name": "devices"},
                "users": [name],
                "rules": [
                    {"effect": "allow", "actions": ["publish"], "topics": [f"vehicles/{name}/battery"]},
                    {
                        "effect": "allow",
                        "actions": ["subscribe", "receive"],
                        "topics": [f"vehicles/{name}/cmd"],
                    },
                ],
            },
        },
    ]


@pytest.mark.local_only(
    "the function is an HTTP server in the test process; only the local cluster's Pods reach this "
    "machine (at the bridge's host address), kind's Pods would need the function as an image in the cluster"
)
def test_a_battery_report_calls_the_function_and_its_answer_reaches_the_car(
    cluster: Any, namespace: Namespace
) -> None:
    ns = namespace.namespace
    host = cluster.cluster.gateway  # the bridge's .1: where Pods reach this machine (and Kafka)
    with _function(host) as calls:
        for manifest in _function_service(host):
            namespace.apply(manifest)
        apply_examples(namespace, "mqttinstance", "functiontrigger")
        for manifest in _car_access("car-3"):
            namespace.apply(manifest)
        wait_ready_instance(namespace)
        namespace.wait_condition(MQU, "car-3", timeout=90)
        namespace.wait_condition(MQACL, "car-3-battery", timeout=90)
        namespace.wait_condition(MQFT, TRIGGER, timeout=120)
        trigger = namespace.get(MQFT, TRIGGER) or {}
        assert trigger["status"]["functionUrl"] == f"http://{TRIGGER}.{ns}.svc:{PORT}/"
        # A ready worker holds its subscription, so the car's message is not published to nobody.
        wait_for(
            "a ready trigger worker",
            lambda: ((namespace.get("statefulset", WORKERS) or {}).get("status") or {}).get("readyReplicas"),
            timeout=90,
        )
        assert calls.empty()  # nothing called the function before the car spoke

        with cluster.broker(ns, "devices") as (broker_host, broker_port):
            car = HostDevice(
                broker_host, broker_port, "car-3", namespace.secret("car-3-credentials"), client_id="car-3"
            )
            try:
                assert car.connect() == 0
                assert car.subscribe("vehicles/car-3/cmd") < 0x80
                assert car.publish("vehicles/car-3/battery", json.dumps({"level": 17}).encode()) < 0x80

                headers, body = calls.get(timeout=60)
                assert headers["ce-specversion"] == "1.0"
                assert headers["ce-subject"] == "vehicles/car-3/battery"
                assert headers["ce-type"] == "io.mqtt-operator.message"
                assert headers["ce-source"].endswith("/vehicles/car-3/battery")
                assert headers["content-type"] == "application/json"
                assert json.loads(body) == {"level": 17}

                topic, reply = car.messages.get(timeout=60)
                assert topic == "vehicles/car-3/cmd"
                assert json.loads(reply) == {"command": "notify-driver", "level": 17}
            finally:
                car.close()

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
