"""No password in any log, Event, status or annotation after a realistic scenario, searched with the
scanner the e2e session runs last (testenv/secret_scan.py, e2e/test_zz_no_secret_leaked.py).

The operator runs for real at DEBUG (tests/integration/operator_stack.py) with a real Mosquitto from the
config it rendered, real workers run from the ConfigMaps it wrote, a real Kafka and a real HTTP function;
the scenario goes through generated and user-supplied passwords, a password rotation, a refused login, a
missing Secret reported and recovered, and messages through a FunctionTrigger and a KafkaConnector. Then
the namespace is collected by `collect()`, exactly as the e2e `namespace` fixture does it, and the logs of
the operator, the broker and the workers are added. The last part plants passwords through the same
path, in the API server, and checks that they are found.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from tests.integration.operator_stack import MQU, Stack, operator_stack
from tests.integration.test_access import password_secret, user
from tests.integration.test_bridge_helpers import create_topic, paho_publish
from tests.integration.test_connector import uplink
from tests.integration.test_trigger import Function, trigger

from testenv.cluster import wait_for
from testenv.device import connects
from testenv.kafka import Kafka
from testenv.kube import ControlPlane
from testenv.process import free_port
from testenv.secret_scan import LeakScan, collect

pytestmark = pytest.mark.integration

MQKC = "kafkaconnectors.mqtt-operator.io"
MQFT = "functiontriggers.mqtt-operator.io"
TRIGGER = "alerts"
CONNECTOR = "vehicles"
CAR_RULES = [
    {"effect": "allow", "actions": ["publish"], "topics": ["vehicles/+/battery", "vehicles/+/state"]}
]


def scenario(stack: Stack, function: Function, kafka: Kafka, trigger_metrics_port: int) -> list[str]:
    """What a user does in a day; returns the passwords no Secret holds any more (rotated away)."""
    car, car_password = stack.device("car", CAR_RULES)
    assert not connects(stack.port, car, car_password + "x")  # the broker logs a refused login

    # A password of the user's own, rotated: the operator reads both.
    first, second = f"meter-first-{uuid.uuid4().hex}", f"meter-second-{uuid.uuid4().hex}"
    stack.apply(password_secret("meter-pw", first))
    stack.apply(user("meter", secret_ref="meter-pw"))
    stack.wait_condition(MQU, "meter")
    stack.apply(password_secret("meter-pw", second))
    wait_for("the rotated password to work", lambda: connects(stack.port, "meter", second), timeout=60)

    # A missing Secret is reported (condition and Event), then found.
    stack.apply(user("pile", secret_ref="pile-pw"))
    stack.wait_condition(MQU, "pile", "False", "SecretNotFound")
    stack.apply(password_secret("pile-pw", f"pile-{uuid.uuid4().hex}"))
    stack.wait_condition(MQU, "pile", timeout=60)

    # A FunctionTrigger with a real worker calling a real function.
    stack.apply(trigger({"url": function.url}, name=TRIGGER))
    stack.wait_condition(MQFT, TRIGGER, "True", "Running")
    stack.start_worker(f"{TRIGGER}-trigger", trigger_metrics_port)
    paho_publish(stack.port, [("vehicles/car-1/battery", b'{"level":9}', {})], auth=(car, car_password))
    wait_for("the function called", lambda: function.calls)

    # A KafkaConnector into a real Kafka, with a real worker.
    topic = f"state-{uuid.uuid4().hex[:8]}"
    create_topic(kafka.bootstrap, topic, partitions=1)
    stack.apply(uplink(CONNECTOR, kafka.bootstrap, topic))
    stack.wait_condition(MQKC, CONNECTOR, "True", "Running", timeout=90)
    stack.start_worker(f"{CONNECTOR}-bridge", free_port(), credentials=f"{CONNECTOR}-connector-credentials")
    paho_publish(stack.port, [("vehicles/car-1/state", b'{"plate":"K-1"}', {})], auth=(car, car_password))
    return [first]


def scan_of(stack: Stack, rotated: list[str]) -> LeakScan:
    """The namespace as the e2e `namespace` fixture collects it, and the logs the Pods would have had."""
    scan = LeakScan()
    collect(scan, stack.cp.kubectl, stack.namespace)
    for value in rotated:
        scan.add_password(value, "Secret meter-pw key password, before its rotation")
    assert stack.operator is not None
    scan.add_text("log operator", stack.operator.log_text())
    for index, broker in enumerate(stack.brokers):
        scan.add_text(f"log broker {index}", (broker.root / "mosquitto.log").read_text(errors="replace"))
    for worker in stack.workers:
        log = worker.root / f"worker-{worker.replica_id}.log"
        scan.add_text(f"log worker {worker.replica_id}", log.read_text(errors="replace"))
    return scan


def test_no_password_in_any_log_event_status_or_annotation(
    crds_installed: ControlPlane, namespace: str, kafka: Kafka
) -> None:
    trigger_metrics_port = free_port()  # where the operator scrapes the trigger's worker
    function = Function()
    try:
        with operator_stack(
            crds_installed, namespace, {TRIGGER: f"127.0.0.1:{trigger_metrics_port}"}
        ) as stack:
            rotated = scenario(stack, function, kafka, trigger_metrics_port)
            check_scan(stack, rotated)
    finally:
        function.stop()


def check_scan(stack: Stack, rotated: list[str]) -> None:
    scan = scan_of(stack, rotated)

    ns = stack.namespace
    assert sorted(pw.origin for pw in scan.passwords.values()) == sorted(
        [
            f"Secret {ns}/devices-admin key password",
            f"Secret {ns}/car-credentials key password",
            f"Secret {ns}/meter-pw key password",
            "Secret meter-pw key password, before its rotation",
            f"Secret {ns}/pile-pw key password",
            f"Secret {ns}/{TRIGGER}-trigger-credentials key password",
            f"Secret {ns}/{CONNECTOR}-connector-credentials key password",
        ]
    )
    assert scan.too_short == []
    # What was searched: the operator's DEBUG log, the broker's and both workers' logs, every object.
    assert '"level": "debug"' in scan.texts[0][1] or '"level":"debug"' in scan.texts[0][1]
    assert len(scan.texts) == 4
    kinds = {where.split()[0] for where, _ in scan.objects}
    assert {"Event", "MqttInstance", "AuthUser", "AclPolicy", "KafkaConnector", "FunctionTrigger"} <= kinds
    assert {"StatefulSet", "ConfigMap", "Service"} <= kinds
    assert scan.hits() == [], scan.report()

    # The negative control, through the API server: a password in an Event and one in an annotation.
    car_password = stack.secret("car-credentials")
    admin_password = stack.secret("devices-admin")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "planted"},
        "involvedObject": {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AuthUser",
            "name": "car",
            "namespace": ns,
        },
        "reason": "Planted",
        "message": f"login as car with {car_password} refused",
        "type": "Warning",
    }
    stack.cp.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(event))
    encoded = base64.b64encode(admin_password.encode()).decode()
    stack.cp.kubectl("annotate", "-n", ns, MQFT, TRIGGER, f"debug={encoded}")
    planted = scan_of(stack, rotated)
    found = {(hit.password, hit.where, hit.form) for hit in planted.hits()}
    car_origin, admin_origin = (
        f"Secret {ns}/{name} key password" for name in ("car-credentials", "devices-admin")
    )
    assert {
        (car_origin, f"Event {ns}/planted .message", "text"),
        (admin_origin, f"FunctionTrigger {ns}/{TRIGGER} .metadata.annotations.debug", "base64+0"),
    } <= found
    # kopf copies an annotation into its last-handled-configuration, and the operator's DEBUG log shows it
    # (base64, which the log's redaction of known passwords cannot recognise): found too, and nothing else.
    assert {origin for origin, _, _ in found} == {car_origin, admin_origin}
