"""Shared by the integration tests of the worker kinds (no tests here): the operator as a real process,
an MqttInstance `devices` with authorization on and a real Mosquitto run from its rendered config,
device accounts, real workers run from the ConfigMaps the operator wrote, and stand-ins for the
workers' /metrics where no worker runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.integration.test_bridge_helpers import WorkerProcess

from testenv.cluster import Namespace, wait_for
from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.operator import OperatorProcess
from testenv.process import free_port

DRIFT_PERIOD = 3
ADMIN = "mqtt-operator-admin"
MQI = "mqttinstances.mqtt-operator.io"
MQU = "authusers.mqtt-operator.io"
MQACL = "aclpolicies.mqtt-operator.io"
AUTH_USER = {"apiVersion": "mqtt-operator.io/v1alpha1", "kind": "AuthUser"}
ACL_POLICY = {"apiVersion": "mqtt-operator.io/v1alpha1", "kind": "AclPolicy"}


class MetricsServer:
    """A loopback HTTP server answering /metrics with `text`, as a bridge worker would."""

    def __init__(self) -> None:
        self.text = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack(Namespace):
    port: int = 0
    operator: OperatorProcess | None = None
    brokers: list[Mosquitto] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def status(self, resource: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = (self.get(resource, name) or {}).get("status") or {}
        return result

    def worker_config(self, workload: str) -> dict[str, Any]:
        cm = wait_for(f"ConfigMap {workload}", lambda: self.get("configmap", workload))
        result: dict[str, Any] = json.loads(cm["data"]["config.json"])
        return result

    def start_broker(self) -> Mosquitto:
        conf = wait_for("the rendered ConfigMap", lambda: self.get("configmap", "devices-config"))
        admin = (ADMIN, self.secret("devices-admin"))
        broker = from_rendered(conf["data"]["mosquitto.conf"], 1883, self.port, admin).start()
        self.brokers.append(broker)
        return broker

    def device(self, name: str, rules: list[dict[str, Any]]) -> tuple[str, str]:
        """An AuthUser `name` with an AclPolicy of `rules`, both ready: (username, password)."""
        ref = {"instanceRef": {"name": "devices"}}
        self.apply({**AUTH_USER, "metadata": {"name": name}, "spec": ref})
        policy = {**ref, "users": [name], "rules": rules}
        self.apply({**ACL_POLICY, "metadata": {"name": name}, "spec": policy})
        self.wait_condition(MQU, name, "True")
        self.wait_condition(MQACL, name, "True")
        return name, self.secret(f"{name}-credentials")

    def start_worker(
        self, workload: str, metrics_port: int, ordinal: int = 0, credentials: str | None = None
    ) -> WorkerProcess:
        """What the kubelet would run for Pod `<workload>-<ordinal>`: the config from the ConfigMap the
        operator wrote (pointed at this broker), the password from the Secret it generated
        (`credentials`, by default `<workload>-credentials`), /metrics on `metrics_port` (where the
        operator was told to scrape it)."""
        config = self.worker_config(workload)
        config["mqtt"] = {**config["mqtt"], "host": "127.0.0.1", "port": self.port}
        env = {"MQTT_PASSWORD": self.secret(credentials or f"{workload}-credentials")}
        worker = WorkerProcess(config, replica_id=f"{workload}-{ordinal}", port=metrics_port, env=env)
        self.workers.append(worker.start())
        return worker


def instance() -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "MqttInstance",
        "metadata": {"name": "devices"},
        "spec": {
            "listeners": {"mqtt": {"port": 1883}},
            "authorization": {"enabled": True},
            "persistence": {"enabled": False},
        },
    }


@contextmanager
def operator_stack(
    cp: ControlPlane, namespace: str, worker_metrics: dict[str, str], drift_period: float = DRIFT_PERIOD
) -> Iterator[Stack]:
    """The operator (its workers' /metrics at `worker_metrics`: object name -> host:port; its periodic
    re-checks every `drift_period` seconds), the instance `devices` and its broker, until the block ends."""
    s = Stack(cp, namespace, free_port())
    metrics_args: list[str] = []
    for name, address in worker_metrics.items():
        metrics_args += ["--worker-metrics-address", f"{namespace}/{name}={address}"]
    try:
        s.operator = OperatorProcess(
            cp,
            (namespace,),
            extra_args=(
                "--broker-address",
                f"{namespace}/devices=127.0.0.1:{s.port}",
                "--drift-period",
                str(drift_period),
                "--worker-image",
                "registry.example/mqtt-operator:test",
                *metrics_args,
            ),
        ).start()
        s.apply(instance())
        s.start_broker()
        s.wait_condition(MQI, "devices", "True", "BrokerReady")
        yield s
    finally:
        for worker in s.workers:
            worker.stop()
        if s.operator:
            s.operator.stop()
        for broker in s.brokers:
            broker.stop()
