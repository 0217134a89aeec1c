"""MqttInstance, AuthUser and AclPolicy reconciled for real: the operator against a real API server,
and a real Mosquitto run with the mosquitto.conf the operator rendered into its ConfigMap.

Devices are paho-mqtt MQTT 5 clients; what they may do is read from the broker's reason codes.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testenv.cluster import Namespace, wait_for
from testenv.device import NOT_AUTHORIZED, Device, connects
from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto, from_rendered, init_dynsec
from testenv.operator import OperatorProcess
from testenv.paths import tool
from testenv.process import free_port

pytestmark = pytest.mark.integration
DRIFT_PERIOD = 3
ADMIN = "mqtt-operator-admin"


@dataclass
class Stack(Namespace):
    port: int = 0
    operator: OperatorProcess | None = None
    brokers: list[Mosquitto] = field(default_factory=list)

    def stop(self) -> None:
        if self.operator:
            self.operator.stop()
        for broker in self.brokers:
            broker.stop()

    def start_operator(self, *extra: str) -> OperatorProcess:
        self.operator = OperatorProcess(
            self.cp,
            (self.namespace,),
            extra_args=(
                "--broker-address",
                f"{self.namespace}/devices={'127.0.0.1'}:{self.port}",
                "--drift-period",
                str(DRIFT_PERIOD),
                *extra,
            ),
        ).start()
        return self.operator

    def start_broker(self, instance: str = "devices", port: int | None = None) -> Mosquitto:
        conf = wait_for("the rendered ConfigMap", lambda: self.get("configmap", f"{instance}-config"))
        spec = (self.get("mqttinstances.mqtt-operator.io", instance) or {})["spec"]
        admin = (ADMIN, self.secret(f"{instance}-admin")) if spec["authorization"]["enabled"] else None
        broker = from_rendered(
            conf["data"]["mosquitto.conf"], spec["listeners"]["mqtt"]["port"], port or self.port, admin
        ).start()
        self.brokers.append(broker)
        return broker


def instance(name: str = "devices", authorization: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "MqttInstance",
        "metadata": {"name": name},
        "spec": {
            "listeners": {"mqtt": {"port": 1883}},
            "authorization": {"enabled": authorization},
            "persistence": {"enabled": False},
        },
    }


def user(name: str, secret_ref: str | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "AuthUser",
        "metadata": {"name": name},
        "spec": {"instanceRef": {"name": "devices"}, **spec},
    }
    if secret_ref:
        body["spec"]["passwordSecretRef"] = {"name": secret_ref}
    return body


def policy(name: str, users: list[str], rules: list[dict[str, Any]], priority: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "AclPolicy",
        "metadata": {"name": name},
        "spec": {"instanceRef": {"name": "devices"}, "users": users, "priority": priority, "rules": rules},
    }


def password_secret(name: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"password": password},
    }


@pytest.fixture
def stack(crds_installed: ControlPlane, namespace: str) -> Iterator[Stack]:
    """The operator, an MqttInstance `devices` with authorization on, and its broker running."""
    s = Stack(crds_installed, namespace, free_port())
    try:
        s.start_operator()
        s.apply(instance())
        s.start_broker()
        s.wait_condition("mqttinstances.mqtt-operator.io", "devices", "True", "BrokerReady")
        yield s
    finally:
        s.stop()


MQU, MQACL, MQI = (
    "authusers.mqtt-operator.io",
    "aclpolicies.mqtt-operator.io",
    "mqttinstances.mqtt-operator.io",
)


def test_instance_reports_endpoints_admin_secret_and_a_reachable_broker(stack: Stack) -> None:
    status = (stack.get(MQI, "devices") or {})["status"]
    assert status["endpoints"] == {"mqtt": f"devices.{stack.namespace}.svc:1883"}
    assert status["adminSecretName"] == "devices-admin"
    assert status["driftRepairPeriodSeconds"] == DRIFT_PERIOD
    assert stack.condition(MQI, "devices", "BrokerReachable")["status"] == "True"  # type: ignore[index]
    for kind, name in (
        ("statefulset", "devices"),
        ("service", "devices"),
        ("service", "devices-headless"),
        ("configmap", "devices-config"),
        ("secret", "devices-admin"),
    ):
        assert stack.get(kind, name) is not None, f"{kind}/{name} was not created"
    # The admin password is generated once: a reconcile later keeps it.
    first = stack.secret("devices-admin")
    stack.cp.kubectl("annotate", "-n", stack.namespace, MQI, "devices", "touch=1")
    time.sleep(DRIFT_PERIOD + 1)
    assert stack.secret("devices-admin") == first


def test_generated_password_connects_a_wrong_one_does_not_and_deletion_refuses_again(stack: Stack) -> None:
    stack.apply(user("car-1"))
    stack.wait_condition(MQU, "car-1")
    password = stack.secret("car-1-credentials")
    assert stack.secret("car-1-credentials", "username") == "car-1"
    assert stack.secret("car-1-credentials", "endpoint") == f"devices.{stack.namespace}.svc:1883"
    assert connects(stack.port, "car-1", password)
    assert not connects(stack.port, "car-1", password + "x")
    status = (stack.get(MQU, "car-1") or {})["status"]
    assert status["username"] == "car-1" and status["secretName"] == "car-1-credentials"
    assert stack.condition(MQU, "car-1", "PasswordSynced")["status"] == "True"  # type: ignore[index]
    stack.cp.kubectl("delete", "-n", stack.namespace, MQU, "car-1", "--timeout=60s")
    assert not connects(stack.port, "car-1", password)


def test_rotating_the_referenced_secret_changes_the_password_without_a_broker_restart(stack: Stack) -> None:
    stack.apply(password_secret("meter-pw", "first-password-123"))
    stack.apply(user("meter-7", secret_ref="meter-pw"))
    stack.wait_condition(MQU, "meter-7")
    assert connects(stack.port, "meter-7", "first-password-123")
    broker_pid = stack.brokers[0].server.proc.pid  # type: ignore[union-attr]
    stack.apply(password_secret("meter-pw", "second-password-456"))
    wait_for("the new password to work", lambda: connects(stack.port, "meter-7", "second-password-456"))
    assert not connects(stack.port, "meter-7", "first-password-123")
    assert stack.brokers[0].server.proc.pid == broker_pid  # type: ignore[union-attr]


def test_missing_secret_and_unknown_instance_are_reported_and_recover(stack: Stack) -> None:
    stack.apply(user("pile-9", secret_ref="not-yet"))
    cond = stack.wait_condition(MQU, "pile-9", "False", "SecretNotFound")
    assert "not-yet" in cond["message"]
    events = stack.cp.kubectl("get", "events", "-n", stack.namespace, "-o", "json").stdout
    assert "SecretNotFound" in events
    stack.apply(password_secret("not-yet", "pile-password-1"))
    stack.wait_condition(MQU, "pile-9", timeout=60)
    assert connects(stack.port, "pile-9", "pile-password-1")

    orphan = user("lost-1")
    orphan["spec"]["instanceRef"]["name"] = "nowhere"
    stack.apply(orphan)
    stack.wait_condition(MQU, "lost-1", "False", "InstanceNotFound")


def test_policies_decide_publish_subscribe_shared_subscriptions_patterns_and_priority(stack: Stack) -> None:
    for name in ("car-1", "car-2", "dashboard"):
        stack.apply(user(name))
    stack.apply(
        policy(
            "cars",
            ["car-1", "car-2"],
            [
                {"effect": "allow", "actions": ["publish"], "topics": ["vehicles/+/state"]},
                {
                    "effect": "allow",
                    "actions": ["publish", "subscribe", "receive"],
                    "topics": ["devices/%u/#"],
                },
            ],
        )
    )
    stack.apply(
        policy(
            "dashboard-read",
            ["dashboard"],
            [{"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/#"]}],
        )
    )
    for name in ("cars", "dashboard-read"):
        stack.wait_condition(MQACL, name)
    for name in ("car-1", "car-2", "dashboard"):
        stack.wait_condition(MQU, name)

    car = Device(stack.port, "car-1", stack.secret("car-1-credentials"))
    dash = Device(stack.port, "dashboard", stack.secret("dashboard-credentials"))
    try:
        assert car.connect() == 0 and dash.connect() == 0
        assert car.publish("vehicles/car-1/state") < 0x80
        assert car.publish("vehicles/car-1/secret") == NOT_AUTHORIZED
        assert car.subscribe("vehicles/#") == NOT_AUTHORIZED
        # %u confines each car to its own subtree.
        assert car.publish("devices/car-1/telemetry") < 0x80
        assert car.publish("devices/car-2/telemetry") == NOT_AUTHORIZED
        assert car.subscribe("devices/car-1/cmd") < 0x80
        # A shared subscription works exactly when the policy grants its filter.
        assert dash.subscribe("$share/g/vehicles/#") < 0x80
        assert dash.subscribe("$share/g/devices/#") == NOT_AUTHORIZED
        assert car.subscribe("$share/g/vehicles/#") == NOT_AUTHORIZED
    finally:
        car.close()
        dash.close()

    # A deny with a higher priority wins over the allow.
    stack.apply(
        policy(
            "freeze",
            ["car-1"],
            [{"effect": "deny", "actions": ["publish"], "topics": ["vehicles/#"]}],
            priority=10,
        )
    )
    stack.wait_condition(MQACL, "freeze")
    car = Device(stack.port, "car-1", stack.secret("car-1-credentials"))
    try:
        assert car.connect() == 0
        assert car.publish("vehicles/car-1/state") == NOT_AUTHORIZED
    finally:
        car.close()
    status = (stack.get(MQACL, "cars") or {})["status"]
    assert status["grantedUsers"] == ["car-1", "car-2"] and status["pendingUsers"] == []


def test_an_unchanged_policy_never_disconnects_its_users(stack: Stack) -> None:
    stack.apply(user("car-3"))
    stack.apply(
        policy("cars", ["car-3"], [{"effect": "allow", "actions": ["publish"], "topics": ["vehicles/#"]}])
    )
    stack.wait_condition(MQACL, "cars")
    stack.wait_condition(MQU, "car-3")
    car = Device(stack.port, "car-3", stack.secret("car-3-credentials"))
    try:
        assert car.connect() == 0
        # Several drift-repair rounds and a no-op re-apply of the policy pass by.
        stack.cp.kubectl("annotate", "-n", stack.namespace, MQACL, "cars", "touch=1")
        time.sleep(DRIFT_PERIOD * 3)
        assert not car.disconnected.is_set()
        assert car.publish("vehicles/car-3/state") < 0x80
    finally:
        car.close()


def test_a_broker_restarted_empty_gets_users_and_policies_back_within_the_drift_period(stack: Stack) -> None:
    stack.apply(user("car-5"))
    stack.apply(
        policy("cars", ["car-5"], [{"effect": "allow", "actions": ["publish"], "topics": ["vehicles/#"]}])
    )
    stack.wait_condition(MQU, "car-5")
    stack.wait_condition(MQACL, "cars")
    password = stack.secret("car-5-credentials")
    broker = stack.brokers[0]
    broker.stop(keep=True)
    init_dynsec(broker.root / "data" / "dynamic-security.json", ADMIN, stack.secret("devices-admin"))
    broker.start()
    assert not connects(stack.port, "car-5", password)  # the broker really forgot
    wait_for(
        "car-5 back in the broker", lambda: connects(stack.port, "car-5", password), timeout=DRIFT_PERIOD * 6
    )
    car = Device(stack.port, "car-5", password)
    try:
        assert car.connect() == 0
        wait_for(
            "the policy back", lambda: car.publish("vehicles/car-5/state") < 0x80, timeout=DRIFT_PERIOD * 6
        )
    finally:
        car.close()
    assert (stack.get(MQI, "devices") or {})["status"].get("lastDriftRepairTime")


def test_operator_killed_mid_reconcile_leaves_no_duplicates_and_keeps_passwords(stack: Stack) -> None:
    names = [f"dev-{i:03d}" for i in range(60)]
    for name in names:
        stack.apply(user(name))
    wait_for("some credentials", lambda: stack.get("secret", "dev-000-credentials"), timeout=60)
    assert stack.operator is not None
    stack.operator.server.kill(signal.SIGKILL)  # type: ignore[union-attr]
    before = {n: stack.get("secret", f"{n}-credentials") for n in names}
    stack.start_operator()
    for name in names:
        stack.wait_condition(MQU, name, timeout=90)
    for name, secret in before.items():
        if secret is not None:  # generated before the kill: never regenerated
            assert (
                stack.secret(f"{name}-credentials") == base64.b64decode(secret["data"]["password"]).decode()
            )
    secrets = json.loads(stack.cp.kubectl("get", "secrets", "-n", stack.namespace, "-o", "json").stdout)[
        "items"
    ]
    credential_names = [
        s["metadata"]["name"] for s in secrets if s["metadata"]["name"].endswith("-credentials")
    ]
    assert sorted(credential_names) == sorted(f"{n}-credentials" for n in names)
    assert all(connects(stack.port, n, stack.secret(f"{n}-credentials")) for n in names[:5])
    stack.cp.kubectl("delete", "-n", stack.namespace, MQU, names[0], "--timeout=60s")
    assert not connects(stack.port, names[0], stack.secret(f"{names[1]}-credentials"))


def test_no_password_in_logs_events_status_or_annotations(stack: Stack) -> None:
    stack.apply(password_secret("own-pw", "own-secret-password-42"))
    stack.apply(user("car-8"))
    stack.apply(user("car-9", secret_ref="own-pw"))
    stack.wait_condition(MQU, "car-8")
    stack.wait_condition(MQU, "car-9")
    passwords = [stack.secret("car-8-credentials"), "own-secret-password-42", stack.secret("devices-admin")]
    assert stack.operator is not None
    log = stack.operator.log_text()
    assert "debug" in log  # the operator really logged at DEBUG
    dumps = log + stack.cp.kubectl("get", "events", "-n", stack.namespace, "-o", "json").stdout
    for resource in (MQU, MQACL, MQI):
        dumps += stack.cp.kubectl("get", resource, "-n", stack.namespace, "-o", "json").stdout
    for password in passwords:
        assert password not in dumps


def test_authorization_off_lets_any_credentials_connect(crds_installed: ControlPlane, namespace: str) -> None:
    s = Stack(crds_installed, namespace, free_port())
    s.start_operator()
    try:
        s.apply(instance(authorization=False))
        s.start_broker()
        s.wait_condition(MQI, "devices", "True", "BrokerReady")
        assert connects(s.port, "anyone", "anything")
        assert connects(s.port, None, None)
        s.apply(user("car-1"))
        s.wait_condition(MQU, "car-1", "False", "AuthorizationDisabled")
    finally:
        s.stop()


def test_deleting_the_instance_first_does_not_leave_users_stuck(stack: Stack) -> None:
    stack.apply(user("car-6"))
    stack.apply(policy("cars", ["car-6"], [{"effect": "allow", "actions": ["publish"], "topics": ["x/#"]}]))
    stack.wait_condition(MQU, "car-6")
    stack.cp.kubectl("delete", "-n", stack.namespace, MQI, "devices", "--timeout=60s")
    stack.cp.kubectl("delete", "-n", stack.namespace, MQU, "car-6", "--timeout=60s")
    stack.cp.kubectl("delete", "-n", stack.namespace, MQACL, "cars", "--timeout=60s")


def test_network_policy_follows_the_spec(stack: Stack) -> None:
    patch = {
        "spec": {
            "networkPolicy": {
                "enabled": True,
                "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "fleet"}}}],
            }
        }
    }
    stack.cp.kubectl("patch", "-n", stack.namespace, MQI, "devices", "--type=merge", "-p", json.dumps(patch))
    policy_obj = wait_for("the NetworkPolicy", lambda: stack.get("networkpolicy", "devices-broker"))
    peers = policy_obj["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "fleet"}}} in peers
    assert {"podSelector": {"matchLabels": {"mqtt-operator.io/client": "devices"}}} in peers
    patch["spec"]["networkPolicy"] = {"enabled": False, "allowFrom": []}
    stack.cp.kubectl("patch", "-n", stack.namespace, MQI, "devices", "--type=merge", "-p", json.dumps(patch))
    wait_for("the NetworkPolicy to go", lambda: stack.get("networkpolicy", "devices-broker") is None)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_progress_conditions_follow_the_objects(stack: Stack) -> None:
    """The operator's /metrics count reconciles, broker commands and objects by Ready; a cause the operator
    waits out says Reconciling, one only a spec change fixes says Stalled (what kstatus reads)."""
    ns = stack.namespace
    stack.apply(user("meter-1"))
    stack.wait_condition(MQU, "meter-1")
    orphan = user("lost-2")
    orphan["spec"]["instanceRef"]["name"] = "nowhere"
    stack.apply(orphan)
    stack.wait_condition(MQU, "lost-2", "False", "InstanceNotFound")
    # A username another AuthUser has, and the broker's own admin account: each refused on its own object.
    stack.apply(user("meter-1-twin", username="meter-1"))
    stack.apply(user("admin-taker", username=ADMIN))
    twin = stack.wait_condition(MQU, "meter-1-twin", "False", "Conflict")
    assert "'meter-1'" in twin["message"] and "spec.username" in twin["message"]
    stack.wait_condition(MQU, "admin-taker", "False", "Conflict")
    # ... while the broker's other accounts still sync.
    stack.apply(user("meter-2"))
    stack.wait_condition(MQU, "meter-2")
    assert connects(stack.port, "meter-2", stack.secret("meter-2-credentials"))
    assert connects(stack.port, "meter-1", stack.secret("meter-1-credentials"))
    assert stack.condition(MQU, "lost-2", "Reconciling")["status"] == "True"  # type: ignore[index]
    assert stack.condition(MQU, "lost-2", "Stalled") is None
    assert stack.condition(MQU, "meter-1-twin", "Stalled")["reason"] == "Conflict"  # type: ignore[index]
    assert stack.condition(MQU, "meter-1", "Reconciling") is None
    assert stack.condition(MQU, "meter-1", "Stalled") is None

    assert stack.operator is not None
    operator = stack.operator

    def objects(ready: str) -> float:
        return _samples(operator.metrics_text()).get(
            ("mqtt_operator_objects", (("kind", "AuthUser"), ("namespace", ns), ("ready", ready))), 0.0
        )

    wait_for("the objects by Ready in /metrics", lambda: objects("True") == 2 and objects("False") == 3)
    samples = _samples(operator.metrics_text())
    assert samples[("mqtt_operator_reconciles_total", (("kind", "AuthUser"), ("result", "success")))] >= 1
    assert samples[("mqtt_operator_reconciles_total", (("kind", "AuthUser"), ("result", "not_ready")))] >= 2
    assert samples[("mqtt_operator_reconcile_duration_seconds_count", (("kind", "AuthUser"),))] >= 5
    assert (
        samples[("mqtt_operator_broker_commands_total", (("command", "createClient"), ("result", "ok")))] >= 1
    )
    assert (
        samples[("mqtt_operator_broker_command_duration_seconds_count", (("command", "createClient"),))] >= 1
    )
    instance_ready = (
        "mqtt_operator_object_ready",
        (("kind", "MqttInstance"), ("name", "devices"), ("namespace", ns), ("reason", "BrokerReady")),
    )
    assert samples[instance_ready] == 1
    # Accounts are only counted: thousands of them must not make thousands of series.
    assert not any(
        name == "mqtt_operator_object_ready" and ("kind", "AuthUser") in labels for name, labels in samples
    )
    assert samples[("process_resident_memory_bytes", ())] > 0
    # Prometheus's own linter on the real exposition (names, units, suffixes, help texts).
    lint = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=operator.metrics_text(), capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    stack.cp.kubectl("delete", "-n", ns, MQU, "lost-2", "--timeout=60s")
    wait_for("a deleted object to leave /metrics", lambda: objects("False") == 2)
