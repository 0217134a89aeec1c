"""FunctionTrigger reconciled for real: the operator against a real API server, a real Mosquitto run from
the mosquitto.conf the operator rendered, a real HTTP function started by the test, and a real worker
process (`mqtt-operator bridge`) run from the ConfigMap the operator wrote.

No kubelet runs here, so the test plays its part for the worker: it reads the config from the
ConfigMap, the password from the generated Secret, and starts the process with the Pod's name as its
replica id, pointing it at the loopback broker instead of the instance's Service name.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.integration.test_bridge_helpers import Subscriber, WorkerProcess, paho_publish

from testenv.cluster import Namespace, wait_for
from testenv.device import NOT_AUTHORIZED, Device
from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.operator import OperatorProcess
from testenv.process import free_port

pytestmark = pytest.mark.integration
DRIFT_PERIOD = 3
ADMIN = "mqtt-operator-admin"
MQI, MQU, MQACL, MQFT = (
    "mqttinstances.mqtt-operator.io",
    "authusers.mqtt-operator.io",
    "aclpolicies.mqtt-operator.io",
    "functiontriggers.mqtt-operator.io",
)
NAME = "battery-alerts"


class Function:
    """A real HTTP function on loopback: records every call; answers `status` (then 200) with `reply`."""

    def __init__(self, port: int = 0) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answered in turn before 200
        self.reply = b""
        self.lock = threading.Lock()
        function = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with function.lock:
                    function.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = function.statuses.pop(0) if function.statuses else 200
                    answer = function.reply if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def subjects(self) -> list[str]:
        with self.lock:
            return [headers.get("ce-subject", "") for headers, _ in self.calls]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack(Namespace):
    port: int = 0
    metrics_port: int = 0
    operator: OperatorProcess | None = None
    brokers: list[Mosquitto] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def status(self, name: str = NAME) -> dict[str, Any]:
        result: dict[str, Any] = (self.get(MQFT, name) or {}).get("status") or {}
        return result

    def config(self, name: str = NAME) -> dict[str, Any]:
        cm = wait_for(f"ConfigMap {name}-trigger", lambda: self.get("configmap", f"{name}-trigger"))
        result: dict[str, Any] = json.loads(cm["data"]["config.json"])
        return result

    def start_broker(self) -> Mosquitto:
        conf = wait_for("the rendered ConfigMap", lambda: self.get("configmap", "devices-config"))
        admin = (ADMIN, self.secret("devices-admin"))
        broker = from_rendered(conf["data"]["mosquitto.conf"], 1883, self.port, admin).start()
        self.brokers.append(broker)
        return broker

    def car(self) -> tuple[str, str]:
        """A device account that publishes battery levels and reads commands: (username, password)."""
        if self.get(MQU, "car") is None:
            self.apply(
                {**META_USER, "metadata": {"name": "car"}, "spec": {"instanceRef": {"name": "devices"}}}
            )
            self.apply(CAR_POLICY)
        self.wait_condition(MQU, "car", "True")
        self.wait_condition(MQACL, "car", "True")
        return "car", self.secret("car-credentials")

    def start_worker(self, name: str = NAME, ordinal: int = 0) -> WorkerProcess:
        """What the kubelet would run for Pod `<name>-trigger-<ordinal>`."""
        config = self.config(name)
        config["mqtt"] = {**config["mqtt"], "host": "127.0.0.1", "port": self.port}
        env = {"MQTT_PASSWORD": self.secret(f"{name}-trigger-credentials")}
        worker = WorkerProcess(
            config, replica_id=f"{name}-trigger-{ordinal}", port=self.metrics_port, env=env
        )
        self.workers.append(worker.start())
        return worker


META_USER = {"apiVersion": "mqtt-operator.io/v1alpha1", "kind": "AuthUser"}
CAR_POLICY = {
    "apiVersion": "mqtt-operator.io/v1alpha1",
    "kind": "AclPolicy",
    "metadata": {"name": "car"},
    "spec": {
        "instanceRef": {"name": "devices"},
        "users": ["car"],
        "rules": [
            {"effect": "allow", "actions": ["publish"], "topics": ["vehicles/+/battery"]},
            {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/+/cmd"]},
        ],
    },
}


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


def trigger(function: dict[str, Any], name: str = NAME, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "FunctionTrigger",
        "metadata": {"name": name},
        "spec": {
            "instanceRef": {"name": "devices"},
            "topicFilters": ["vehicles/+/battery"],
            "function": function,
            **spec,
        },
    }


@pytest.fixture
def stack(crds_installed: ControlPlane, namespace: str) -> Iterator[Stack]:
    """The operator, an MqttInstance `devices` with authorization on, and its broker running."""
    s = Stack(crds_installed, namespace, free_port(), free_port())
    try:
        s.operator = OperatorProcess(
            crds_installed,
            (namespace,),
            extra_args=(
                "--broker-address",
                f"{namespace}/devices=127.0.0.1:{s.port}",
                "--drift-period",
                str(DRIFT_PERIOD),
                "--worker-image",
                "registry.example/mqtt-operator:test",
                "--worker-metrics-address",
                f"{namespace}/{NAME}=127.0.0.1:{s.metrics_port}",
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


@pytest.fixture
def function() -> Iterator[Function]:
    f = Function()
    yield f
    f.stop()


def counters(stack: Stack) -> dict[str, Any]:
    result: dict[str, Any] = stack.status().get("counters") or {}
    return result


def test_trigger_builds_its_workers_and_a_real_worker_calls_the_function_and_replies(
    stack: Stack, function: Function
) -> None:
    ns = stack.namespace
    stack.apply(
        trigger(
            {"url": function.url},
            replicas=2,
            replyTopic="vehicles/{level.1}/cmd",
            deadLetter={"mqttTopic": "functions/battery-alerts/dead-letter"},
            retry={"attempts": 1, "initialDelay": "100ms"},
            resources={"limits": {"memory": "96Mi"}},
        )
    )
    ready = stack.wait_condition(MQFT, NAME, "True", "Running")
    assert "2 worker(s)" in ready["message"]
    reach = stack.wait_condition(MQFT, NAME, "True", "Reachable", type_="FunctionReachable")
    assert "operator connected" in reach["message"]
    status = stack.status()
    assert status["shareGroup"] == f"{ns}.functiontrigger.{NAME}"
    assert status["connectorUser"] == f"{NAME}-trigger"
    assert status["functionUrl"] == function.url

    cfg = stack.config()
    assert cfg["mqtt"]["host"] == f"devices.{ns}.svc" and cfg["mqtt"]["username"] == f"{NAME}-trigger"
    fn = cfg["mqttToFunction"]
    assert fn["shareGroup"] == f"{ns}.functiontrigger.{NAME}"
    assert fn["function"]["url"] == function.url and fn["function"]["format"] == "cloudevents"
    assert fn["eventSource"] == f"/mqtt-operator/{ns}/devices"
    assert fn["retry"]["attempts"] == 1 and fn["retry"]["initialDelaySeconds"] == 0.1
    assert fn["batchMaxMessages"] == 1 and fn["batchMaxWaitSeconds"] == 60
    assert fn["concurrency"] == 16 and fn["ordered"] is False
    assert fn["replyTopic"] == "vehicles/{level.1}/cmd"
    assert "kafka" not in cfg or cfg["kafka"] is None

    sts = stack.get("statefulset", f"{NAME}-trigger")
    assert sts is not None and sts["spec"]["replicas"] == 2
    assert sts["metadata"]["ownerReferences"][0]["kind"] == "FunctionTrigger"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"memory": "96Mi"}}
    password_env = next(e for e in container["env"] if e["name"] == "MQTT_PASSWORD")
    assert password_env["valueFrom"]["secretKeyRef"]["name"] == f"{NAME}-trigger-credentials"

    # Its own account: its filters (and their shared form), publish only to the dead letter and replies.
    policy = stack.get(MQACL, f"{NAME}-trigger")
    assert policy is not None
    assert policy["spec"]["rules"] == [
        {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/+/battery"]},
        {
            "effect": "allow",
            "actions": ["publish"],
            "topics": ["functions/battery-alerts/dead-letter", "vehicles/+/cmd"],
        },
    ]
    device = Device(stack.port, f"{NAME}-trigger", stack.secret(f"{NAME}-trigger-credentials"))
    try:
        assert device.connect() == 0
        assert device.subscribe("meters/#") == NOT_AUTHORIZED
        assert device.publish("vehicles/car-1/state") == NOT_AUTHORIZED
    finally:
        device.close()

    # A real worker, run as the kubelet would: a device's message reaches the function as a CloudEvent,
    # and the function's answer reaches the car.
    function.reply = b'{"command":"limit-speed"}'
    worker = stack.start_worker()
    admin = stack.car()
    car = Subscriber(stack.port, "vehicles/car-7/cmd", auth=admin)
    try:
        paho_publish(stack.port, [("vehicles/car-7/battery", b'{"level":9}', {})], auth=admin)
        wait_for("the function called", lambda: function.calls)
        headers, body = function.calls[0]
        assert headers["ce-subject"] == "vehicles/car-7/battery"
        assert headers["ce-source"].startswith(f"/mqtt-operator/{ns}/devices")
        assert headers["ce-specversion"] == "1.0" and headers["ce-id"]
        assert body == b'{"level":9}'
        wait_for("the reply on vehicles/car-7/cmd", lambda: car.messages)
        assert car.messages[0][1] == b'{"command":"limit-speed"}'
    finally:
        car.close()

    # The workers' figures reach the status (the counters timer runs every 15 s).
    wait_for("invoked and succeeded in status", lambda: counters(stack).get("succeeded") == 1, timeout=45)
    shown = counters(stack)
    assert shown["invoked"] == 1 and shown["failed"] == 0 and shown["retried"] == 0
    reach = stack.wait_condition(MQFT, NAME, "True", "Reachable", type_="FunctionReachable", timeout=30)
    assert "1 of 1 worker(s)" in reach["message"]

    # A message the function refuses (400) fails for good: dead-lettered, counted, and an Event says so.
    function.statuses = [400]
    paho_publish(stack.port, [("vehicles/car-8/battery", b"{}", {})], auth=admin)
    wait_for(
        "failed and dead-lettered in status", lambda: counters(stack).get("deadLettered") == 1, timeout=45
    )
    assert counters(stack)["failed"] == 1
    assert worker.metric("bridge_dead_lettered_total") == 1

    def failure_event() -> bool:
        events = stack.cp.kubectl("get", "events", "-n", ns, "-o", "json").stdout
        return any(e["reason"] == "MessagesFailed" for e in json.loads(events)["items"])

    wait_for("a MessagesFailed Event", failure_event, timeout=45)


def test_unreachable_function_makes_it_not_ready_until_it_answers(stack: Stack) -> None:
    down = Function()
    port = down.port
    down.stop()
    stack.apply(trigger({"url": f"http://127.0.0.1:{port}/hook"}))
    cond = stack.wait_condition(MQFT, NAME, "False", "FunctionUnreachable")
    assert f"127.0.0.1:{port}" in cond["message"] and "hold the subscription" in cond["message"]
    assert stack.condition(MQFT, NAME, "FunctionReachable")["status"] == "False"  # type: ignore[index]
    # The workers still run meanwhile: their sessions keep what devices publish.
    assert (stack.get("statefulset", f"{NAME}-trigger") or {})["spec"]["replicas"] == 1
    up = Function(port)
    try:
        stack.wait_condition(MQFT, NAME, "True", "Running")
        stack.wait_condition(MQFT, NAME, "True", "Reachable", type_="FunctionReachable")
    finally:
        up.stop()


def test_disabled_keeps_the_session_so_messages_wait_then_arrive(stack: Stack, function: Function) -> None:
    stack.apply(trigger({"url": function.url}, ordering="ordered"))
    stack.wait_condition(MQFT, NAME, "True", "Running")
    worker = stack.start_worker()
    admin = stack.car()
    paho_publish(stack.port, [("vehicles/car-1/battery", b"first", {})], auth=admin)
    wait_for("the first call", lambda: len(function.calls) == 1)

    stack.patch(MQFT, NAME, {"spec": {"enabled": False}})
    cond = stack.wait_condition(MQFT, NAME, "False", "Disabled")
    assert "sessions stay in the broker" in cond["message"]
    wait_for(
        "no worker", lambda: (stack.get("statefulset", f"{NAME}-trigger") or {})["spec"]["replicas"] == 0
    )
    assert worker.terminate() == 0  # the kubelet stops the Pod
    paho_publish(
        stack.port, [(f"vehicles/car-{i}/battery", f"m{i}".encode(), {}) for i in range(20)], auth=admin
    )
    time.sleep(1)
    assert len(function.calls) == 1  # nobody calls while disabled

    stack.patch(MQFT, NAME, {"spec": {"enabled": True}})
    stack.wait_condition(MQFT, NAME, "True", "Running")
    assert (stack.get("statefulset", f"{NAME}-trigger") or {})["spec"]["replicas"] == 1
    stack.start_worker()  # the same Pod name: it resumes its session
    wait_for("the 20 waiting messages", lambda: len(function.calls) == 21)
    # Ordered: one worker, calls in the order the messages were published.
    bodies = [body for _, body in function.calls[1:]]
    assert bodies == [f"m{i}".encode() for i in range(20)]


def test_function_targets_resolve_or_say_why_not(stack: Stack) -> None:
    ns = stack.namespace
    stack.apply(trigger({"serviceRef": {"name": "battery-fn", "port": 8080, "path": "/invoke"}}))
    cond = stack.wait_condition(MQFT, NAME, "False", "ServiceNotFound")
    assert "battery-fn" in cond["message"] and "spec.function.serviceRef" in cond["message"]
    stack.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "battery-fn"},
            "spec": {"ports": [{"port": 8080}], "selector": {"app": "battery-fn"}},
        }
    )
    wait_for(
        "the Service's cluster address",
        lambda: stack.status().get("functionUrl") == f"http://battery-fn.{ns}.svc:8080/invoke",
    )
    assert stack.config()["mqttToFunction"]["function"]["url"] == f"http://battery-fn.{ns}.svc:8080/invoke"

    stack.apply(trigger({"knativeServiceRef": {"name": "battery-ksvc"}}, name="knative-alerts"))
    cond = stack.wait_condition(MQFT, "knative-alerts", "False", "KnativeNotInstalled")
    assert "services.serving.knative.dev" in cond["message"]


def test_deleting_the_trigger_removes_what_it_created(stack: Stack, function: Function) -> None:
    stack.apply(trigger({"url": function.url}))
    stack.wait_condition(MQFT, NAME, "True", "Running")
    for kind, name in (
        (MQU, f"{NAME}-trigger"),
        (MQACL, f"{NAME}-trigger"),
        ("statefulset", f"{NAME}-trigger"),
    ):
        assert stack.get(kind, name) is not None, kind
    stack.cp.kubectl("delete", "-n", stack.namespace, MQFT, NAME, "--timeout=60s")
    for kind, name in (
        (MQU, f"{NAME}-trigger"),
        (MQACL, f"{NAME}-trigger"),
        ("statefulset", f"{NAME}-trigger"),
        ("configmap", f"{NAME}-trigger"),
    ):
        wait_for(f"{kind} {name} gone", lambda k=kind, n=name: stack.get(k, n) is None)
