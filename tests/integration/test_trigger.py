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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.integration.operator_stack import MQACL, MQU, Stack, operator_stack
from tests.integration.test_bridge_helpers import Subscriber, paho_publish

from testenv.cluster import wait_for
from testenv.device import NOT_AUTHORIZED, Device
from testenv.kube import ControlPlane
from testenv.process import free_port

pytestmark = pytest.mark.integration
MQFT = "functiontriggers.mqtt-operator.io"
NAME = "battery-alerts"
WORKLOAD = f"{NAME}-trigger"


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


CAR_RULES = [
    {"effect": "allow", "actions": ["publish"], "topics": ["vehicles/+/battery"]},
    {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/+/cmd"]},
]


def trigger_status(stack: Stack, name: str = NAME) -> dict[str, Any]:
    return stack.status(MQFT, name)


def car_account(stack: Stack) -> tuple[str, str]:
    """A device account that publishes battery levels and reads commands: (username, password)."""
    return stack.device("car", CAR_RULES)


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
def metrics_port() -> int:
    """Where the operator scrapes the trigger's worker 0 (the test starts it there)."""
    return free_port()


@pytest.fixture
def stack(crds_installed: ControlPlane, namespace: str, metrics_port: int) -> Iterator[Stack]:
    with operator_stack(crds_installed, namespace, {NAME: f"127.0.0.1:{metrics_port}"}) as s:
        yield s


@pytest.fixture
def function() -> Iterator[Function]:
    f = Function()
    yield f
    f.stop()


def counters(stack: Stack) -> dict[str, Any]:
    result: dict[str, Any] = trigger_status(stack).get("counters") or {}
    return result


def test_trigger_builds_its_workers_and_a_real_worker_calls_the_function_and_replies(
    stack: Stack, function: Function, metrics_port: int
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
    status = trigger_status(stack)
    assert status["shareGroup"] == f"{ns}.functiontrigger.{NAME}"
    assert status["connectorUser"] == f"{NAME}-trigger"
    assert status["functionUrl"] == function.url

    cfg = stack.worker_config(WORKLOAD)
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
    worker = stack.start_worker(WORKLOAD, metrics_port)
    admin = car_account(stack)
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

    # Until a reconcile has scraped the worker the operator probes the function itself ("no worker
    # reports yet"); the recheck (every 30 s) brings what the worker reports.
    def reach_reported() -> dict[str, Any] | None:
        cond = stack.condition(MQFT, NAME, "FunctionReachable")
        return cond if cond and "worker(s) reach" in cond["message"] else None

    reach = wait_for("FunctionReachable from the worker's report", reach_reported, timeout=45)
    assert reach["status"] == "True" and reach["reason"] == "Reachable"
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


def test_disabled_keeps_the_session_so_messages_wait_then_arrive(
    stack: Stack, function: Function, metrics_port: int
) -> None:
    stack.apply(trigger({"url": function.url}, ordering="ordered"))
    stack.wait_condition(MQFT, NAME, "True", "Running")
    worker = stack.start_worker(WORKLOAD, metrics_port)
    admin = car_account(stack)
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
    stack.start_worker(WORKLOAD, metrics_port)  # the same Pod name: it resumes its session
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
        lambda: trigger_status(stack).get("functionUrl") == f"http://battery-fn.{ns}.svc:8080/invoke",
    )
    assert (
        stack.worker_config(WORKLOAD)["mqttToFunction"]["function"]["url"]
        == f"http://battery-fn.{ns}.svc:8080/invoke"
    )

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
