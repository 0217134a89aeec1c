"""KafkaConnector reconciled for real: the operator against a real API server, a real Mosquitto run
from the mosquitto.conf the operator rendered, and real Kafka brokers.

No kubelet runs here, so no worker Pod ever starts: what is checked is what the operator builds and
decides, plus the broker-side behaviour it relies on (shared-subscription sessions kept while paused,
removed when stopped), played by test clients using the workers' client ids. The workers' counters come
from small HTTP servers serving Prometheus text, given to the operator with --worker-metrics-address.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tests.integration import test_bridge_helpers
from tests.integration.operator_stack import operator_stack
from tests.integration.test_bridge_helpers import Subscriber

from mqtt_operator.broker.errors import BrokerAuthFailed
from mqtt_operator.broker.probe import MqttLogin, check_login
from testenv.cluster import Namespace, wait_for
from testenv.device import NOT_AUTHORIZED, Device
from testenv.kafka import Kafka
from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.operator import OperatorProcess
from testenv.process import free_port

pytestmark = pytest.mark.integration
DRIFT_PERIOD = 3  # also how often a connector is re-checked
ADMIN = "mqtt-operator-admin"
MQI, MQU, MQACL, MQKC = (
    "mqttinstances.mqtt-operator.io",
    "authusers.mqtt-operator.io",
    "aclpolicies.mqtt-operator.io",
    "kafkaconnectors.mqtt-operator.io",
)
COUNTED = "counted"  # the connector whose workers' /metrics the fake servers play


def create_topic(bootstrap: str, name: str) -> None:
    test_bridge_helpers.create_topic(bootstrap, name, partitions=2)


class FakeWorker:
    """A loopback HTTP server answering /metrics with `text`, as a bridge worker would."""

    def __init__(self) -> None:
        self.text = ""
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = worker.text.encode()
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

    def serve(self, received: int, delivered: int, failed: int = 0, dead: int = 0) -> None:
        self.text = (
            "# TYPE bridge_received_total counter\n"
            f'bridge_received_total{{direction="mqttToKafka"}} {received}.0\n'
            f'bridge_delivered_total{{direction="mqttToKafka"}} {delivered}.0\n'
            f'bridge_failed_total{{direction="mqttToKafka",kind="permanent"}} {failed}.0\n'
            f"bridge_dead_lettered_total {dead}\n"
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Session:
    """A worker's MQTT session played by a test client: its client id, clean start false, 1 h expiry."""

    def __init__(self, port: int, client_id: str, username: str | None, password: str | None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.port = port
        self.connack: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.client.on_connect = lambda _c, _u, f, rc, _p: self.connack.put((rc.value, f.session_present))
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put(rcs[0].value)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg.payload)

    def connect(self) -> bool:
        """Connects and returns whether the broker still had the session."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, 30, clean_start=False, properties=props)
        self.client.loop_start()
        code, present = self.connack.get(timeout=10)
        assert code == 0, f"CONNACK {code:#x}"
        return present

    def subscribe(self, topic_filter: str) -> int:
        self.client.subscribe(topic_filter, qos=1)
        return self.subacks.get(timeout=10)

    def drain(self, seconds: float = 1.5) -> list[bytes]:
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(self.messages.get(timeout=0.1))
            except queue.Empty:
                continue
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Stack(Namespace):
    port: int = 0
    workers: list[FakeWorker] = field(default_factory=list)
    operator: OperatorProcess | None = None
    brokers: list[Mosquitto] = field(default_factory=list)

    def status(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = (self.get(MQKC, name) or {}).get("status") or {}
        return result

    def config(self, name: str) -> dict[str, Any]:
        cm = wait_for(f"ConfigMap {name}-bridge", lambda: self.get("configmap", f"{name}-bridge"))
        result: dict[str, Any] = json.loads(cm["data"]["config.json"])
        return result

    def start_broker(self, authorization: bool = True) -> Mosquitto:
        conf = wait_for("the rendered ConfigMap", lambda: self.get("configmap", "devices-config"))
        admin = (ADMIN, self.secret("devices-admin")) if authorization else None
        broker = from_rendered(conf["data"]["mosquitto.conf"], 1883, self.port, admin).start()
        self.brokers.append(broker)
        return broker


def instance(authorization: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "MqttInstance",
        "metadata": {"name": "devices"},
        "spec": {
            "listeners": {"mqtt": {"port": 1883}},
            "authorization": {"enabled": authorization},
            "persistence": {"enabled": False},
        },
    }


def uplink(name: str, bootstrap: str, topic: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mqtt-operator.io/v1alpha1",
        "kind": "KafkaConnector",
        "metadata": {"name": name},
        "spec": {
            "instanceRef": {"name": "devices"},
            "direction": "mqttToKafka",
            "kafka": {"bootstrapServers": bootstrap},
            "mqttToKafka": {"topicFilters": ["vehicles/+/state"], "topic": topic},
            **spec,
        },
    }


@pytest.fixture(scope="module")
def strict_kafka() -> Iterator[Kafka]:
    """A Kafka that does not create topics on first use, as most production clusters are set up."""
    broker = Kafka(auto_create_topics=False).start()
    yield broker
    broker.stop()


@pytest.fixture
def stack(crds_installed: ControlPlane, namespace: str) -> Iterator[Stack]:
    """The operator, an MqttInstance `devices` with authorization on, and its broker running."""
    workers = [FakeWorker(), FakeWorker()]
    s = Stack(crds_installed, namespace, free_port(), workers)
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
                f"{namespace}/{COUNTED}={','.join(w.address for w in workers)}",
            ),
        ).start()
        s.apply(instance())
        s.start_broker()
        s.wait_condition(MQI, "devices", "True", "BrokerReady")
        yield s
    finally:
        if s.operator:
            s.operator.stop()
        for broker in s.brokers:
            broker.stop()
        for worker in workers:
            worker.stop()


def test_uplink_gets_its_config_workers_and_own_broker_identity(stack: Stack, kafka: Kafka) -> None:
    ns, topic = stack.namespace, f"vehicle-state-{uuid.uuid4().hex[:6]}"
    create_topic(kafka.bootstrap, topic)
    stack.apply(
        uplink(
            "vehicles",
            kafka.bootstrap,
            topic,
            replicas=2,
            deadLetter={"topic": "mqtt-dead-letter"},
            resources={"limits": {"memory": "128Mi"}},
            deviceEvents={"connectTopic": topic},
        )
    )
    ready = stack.wait_condition(MQKC, "vehicles", "True", "Running")
    assert "2 worker(s)" in ready["message"]
    valid = stack.wait_condition(MQKC, "vehicles", "True", "Connected", type_="ConnectionValid")
    assert kafka.bootstrap in valid["message"] and "vehicles-connector" in valid["message"]
    status = stack.status("vehicles")
    assert status["shareGroup"] == f"{ns}.vehicles"
    assert status["connectorUser"] == "vehicles-connector"
    assert "consumerGroup" not in status

    cfg = stack.config("vehicles")
    assert cfg["mqtt"]["host"] == f"devices.{ns}.svc" and cfg["mqtt"]["port"] == 1883
    assert cfg["mqtt"]["clientIdPrefix"] == f"{ns}.vehicles"
    assert cfg["mqtt"]["username"] == "vehicles-connector"
    assert cfg["mqttToKafka"]["shareGroup"] == f"{ns}.vehicles"
    assert cfg["mqttToKafka"]["kafkaTopic"] == topic
    assert cfg["kafka"] == {
        **cfg["kafka"],
        "bootstrapServers": kafka.bootstrap,
        "securityProtocol": "PLAINTEXT",
    }
    assert cfg["deadLetterTopic"] == "mqtt-dead-letter"

    sts = stack.get("statefulset", "vehicles-bridge")
    assert sts is not None
    assert sts["spec"]["replicas"] == 2
    assert sts["metadata"]["ownerReferences"][0]["kind"] == "KafkaConnector"
    pod = sts["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example/mqtt-operator:test"
    assert container["args"] == ["bridge", "--config", "/etc/bridge/config.json"]
    assert container["resources"] == {"limits": {"memory": "128Mi"}}
    password_env = next(e for e in container["env"] if e["name"] == "MQTT_PASSWORD")
    assert password_env["valueFrom"]["secretKeyRef"] == {
        "name": "vehicles-connector-credentials",
        "key": "password",
    }
    first_hash = pod["metadata"]["annotations"]["mqtt-operator.io/config-hash"]

    # The workers' Pod is admitted where the restricted Pod Security Standard is enforced.
    stack.cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    dry_run = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "w", **pod["metadata"]},
        "spec": pod["spec"],
    }
    proc = stack.cp.kubectl(
        "create", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(dry_run), check=False
    )
    assert proc.returncode == 0 and "would violate" not in proc.stderr, proc.stderr

    # The connector's own account: generated password, exactly its filters, shared form included.
    user, policy = stack.get(MQU, "vehicles-connector"), stack.get(MQACL, "vehicles-connector")
    assert user is not None and policy is not None
    assert user["metadata"]["ownerReferences"][0]["name"] == "vehicles"
    assert policy["spec"]["rules"] == [
        {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["vehicles/+/state"]},
        # Device events: the broker's log, and the broker plugin's client events where the instance
        # publishes them.
        {
            "effect": "allow",
            "actions": ["subscribe", "receive"],
            "topics": ["$SYS/broker/log/N", "$SYS/mqtt-operator/client-events"],
        },
    ]
    password = stack.secret("vehicles-connector-credentials")
    # Device events: the connector's account reads the broker's connect notices (and only it does).
    notices = Subscriber(stack.port, "$SYS/broker/log/N", auth=("vehicles-connector", password))
    try:
        probe = Device(stack.port, "vehicles-connector", password, client_id="notice-probe")
        assert probe.connect() == 0
        probe.close()
        wait_for("the connect notice", lambda: any(b"as notice-probe" in m[1] for m in notices.messages))
    finally:
        notices.close()
    device = Device(stack.port, "vehicles-connector", password)
    try:
        assert device.connect() == 0
        assert device.subscribe("$SYS/broker/log/N") < 0x80
        assert device.subscribe("$SYS/mqtt-operator/client-events") < 0x80
        assert device.subscribe(f"$share/{ns}.vehicles/vehicles/+/state") < 0x80
        assert device.subscribe("meters/#") == NOT_AUTHORIZED
        assert device.publish("vehicles/car-1/state") == NOT_AUTHORIZED
    finally:
        device.close()
    with pytest.raises(BrokerAuthFailed):  # the probe tells a refused login apart
        asyncio.run(check_login(MqttLogin("127.0.0.1", stack.port, "vehicles-connector", "wrong-password")))

    # A new mapping rolls the workers: the Pod template's config hash moves.
    stack.patch(MQKC, "vehicles", {"spec": {"mqttToKafka": {"value": "envelope"}}})
    wait_for(
        "the envelope in config.json", lambda: stack.config("vehicles")["mqttToKafka"]["value"] == "envelope"
    )
    new_sts = stack.get("statefulset", "vehicles-bridge") or {}
    assert (
        new_sts["spec"]["template"]["metadata"]["annotations"]["mqtt-operator.io/config-hash"] != first_hash
    )


def test_kubectl_scale_drives_the_workers_through_the_scale_subresource(stack: Stack, kafka: Kafka) -> None:
    """`kubectl scale` (what an HPA or KEDA does) sets spec.replicas; the workers follow; the scale
    subresource shows the replicas and the workers' label selector."""
    ns, topic = stack.namespace, f"scaled-{uuid.uuid4().hex[:6]}"
    create_topic(kafka.bootstrap, topic)
    stack.apply(uplink("scaled", kafka.bootstrap, topic, replicas=1))
    wait_for("the workers' StatefulSet", lambda: stack.get("statefulset", "scaled-bridge"), timeout=60)
    stack.cp.kubectl("scale", "-n", ns, f"{MQKC}/scaled", "--replicas", "3")
    assert (stack.get(MQKC, "scaled") or {})["spec"]["replicas"] == 3
    wait_for(
        "three workers in the StatefulSet",
        lambda: (stack.get("statefulset", "scaled-bridge") or {})["spec"]["replicas"] == 3,
        timeout=60,
    )

    def scale() -> dict[str, Any]:
        out = stack.cp.kubectl("get", "-n", ns, f"{MQKC}/scaled", "--subresource=scale", "-o", "json").stdout
        return dict(json.loads(out))

    shown = wait_for(
        "the selector in the scale subresource", lambda: scale()["status"].get("selector"), timeout=60
    )
    assert set(shown.split(",")) == {
        "app.kubernetes.io/name=kafkaconnector",
        "app.kubernetes.io/instance=scaled",
        "app.kubernetes.io/component=bridge",
    }
    assert scale()["spec"]["replicas"] == 3


def test_status_follows_the_statefulsets_not_a_timer(
    crds_installed: ControlPlane, namespace: str, kafka: Kafka
) -> None:
    """The workers becoming ready (here: the StatefulSet's status, as the kubelet's Pods would make the
    StatefulSet controller write it) shows in status.readyReplicas and in the Ready message that counts
    them. The periodic re-check is an hour away, so only the StatefulSet's watch event can do it."""
    topic = f"counted-{uuid.uuid4().hex[:6]}"
    create_topic(kafka.bootstrap, topic)
    with operator_stack(crds_installed, namespace, {}, drift_period=3600) as s:
        s.apply(uplink("fleet", kafka.bootstrap, topic, replicas=2))
        first = s.wait_condition(MQKC, "fleet", "True", "Running")
        assert first["message"].endswith("0 ready")
        s.cp.kubectl(
            "patch",
            "-n",
            namespace,
            "statefulset",
            "fleet-bridge",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}}),
        )
        wait_for(
            "the Ready message to count two ready workers",
            lambda: (s.condition(MQKC, "fleet", "Ready") or {}).get("message", "").endswith("2 ready"),
            timeout=60,
        )
        shown = s.status(MQKC, "fleet")
        assert (shown["replicas"], shown["readyReplicas"]) == (2, 2)

        # The same for the broker's StatefulSet and its MqttInstance.
        assert s.status(MQI, "devices").get("readyReplicas", 0) == 0
        s.cp.kubectl(
            "patch",
            "-n",
            namespace,
            "statefulset",
            "devices",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}),
        )
        wait_for("the instance's ready replicas", lambda: s.status(MQI, "devices").get("readyReplicas") == 1)


def test_downlink_publishes_where_records_say_with_its_consumer_group(stack: Stack, kafka: Kafka) -> None:
    topic = f"mq2mqtt-{uuid.uuid4().hex[:6]}"
    create_topic(kafka.bootstrap, topic)
    stack.apply(
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "KafkaConnector",
            "metadata": {"name": "commands"},
            "spec": {
                "instanceRef": {"name": "devices"},
                "direction": "kafkaToMqtt",
                "kafka": {"bootstrapServers": kafka.bootstrap},
                "kafkaToMqtt": {"topic": topic, "defaultTopic": "devices/all/cmd"},
            },
        }
    )
    stack.wait_condition(MQKC, "commands", "True", "Running")
    status = stack.status("commands")
    assert status["consumerGroup"] == f"mqtt-operator.{stack.namespace}.commands"
    assert "shareGroup" not in status
    cfg = stack.config("commands")
    assert cfg["kafkaToMqtt"]["consumerGroup"] == status["consumerGroup"]
    assert cfg["kafkaToMqtt"]["defaultTopic"] == "devices/all/cmd"
    policy = stack.get(MQACL, "commands-connector") or {}
    assert policy["spec"]["rules"] == [{"effect": "allow", "actions": ["publish"], "topics": ["#"]}]
    device = Device(stack.port, "commands-connector", stack.secret("commands-connector-credentials"))
    try:
        assert device.connect() == 0
        assert device.publish("vehicles/car-1/cmd") < 0x80
        assert device.subscribe("vehicles/#") == NOT_AUTHORIZED
    finally:
        device.close()


def test_connection_check_reasons_and_recovery(stack: Stack, kafka: Kafka, strict_kafka: Kafka) -> None:
    closed = f"127.0.0.1:{free_port()}"
    stack.apply(uplink("checked", closed, "meter-readings"))
    cond = stack.wait_condition(MQKC, "checked", "False", "KafkaUnreachable", type_="ConnectionValid")
    assert closed in cond["message"] and "refused" in cond["message"]
    stack.wait_condition(MQKC, "checked", "False", "KafkaUnreachable")
    events = stack.cp.kubectl("get", "events", "-n", stack.namespace, "-o", "json").stdout
    assert "KafkaUnreachable" in events
    # Checked before workers start: none were created.
    assert stack.get("statefulset", "checked-bridge") is None

    # A cluster that does not create topics on first use: the topic must exist.
    stack.patch(MQKC, "checked", {"spec": {"kafka": {"bootstrapServers": strict_kafka.bootstrap}}})
    cond = stack.wait_condition(MQKC, "checked", "False", "TopicMissing", type_="ConnectionValid")
    assert "meter-readings" in cond["message"]
    create_topic(strict_kafka.bootstrap, "meter-readings")
    stack.wait_condition(MQKC, "checked", "True", "Running", timeout=30)  # the periodic re-check
    assert (stack.get("statefulset", "checked-bridge") or {})["spec"]["replicas"] == 1

    # A cluster that does create them: a missing topic is no error (the workers' first record creates it).
    fresh = f"created-on-use-{uuid.uuid4().hex[:6]}"
    stack.patch(
        MQKC,
        "checked",
        {"spec": {"kafka": {"bootstrapServers": kafka.bootstrap}, "mqttToKafka": {"topic": fresh}}},
    )
    wait_for(
        "the new topic in config.json", lambda: stack.config("checked")["mqttToKafka"]["kafkaTopic"] == fresh
    )
    stack.wait_condition(MQKC, "checked", "True", "Connected", type_="ConnectionValid")


def test_paused_keeps_the_sessions_stopped_removes_them_running_brings_workers_back(
    stack: Stack, kafka: Kafka
) -> None:
    ns = stack.namespace
    stack.apply(uplink("trips", kafka.bootstrap, f"trips-{uuid.uuid4().hex[:6]}", replicas=2))
    stack.wait_condition(MQKC, "trips", "True", "Running")
    stack.apply(
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AuthUser",
            "metadata": {"name": "car-1"},
            "spec": {"instanceRef": {"name": "devices"}},
        }
    )
    stack.apply(
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AclPolicy",
            "metadata": {"name": "cars"},
            "spec": {
                "instanceRef": {"name": "devices"},
                "users": ["car-1"],
                "rules": [{"effect": "allow", "actions": ["publish"], "topics": ["vehicles/#"]}],
            },
        }
    )
    stack.wait_condition(MQACL, "cars")
    stack.wait_condition(MQU, "car-1")
    password = stack.secret("trips-connector-credentials")
    worker_id = f"{ns}.trips-trips-bridge-0"  # what worker 0 of the StatefulSet connects as
    worker = Session(stack.port, worker_id, "trips-connector", password)
    worker.connect()
    assert worker.subscribe(f"$share/{ns}.trips/vehicles/+/state") < 0x80
    worker.close()

    stack.patch(MQKC, "trips", {"spec": {"state": "paused"}})
    stack.wait_condition(MQKC, "trips", "False", "Paused")
    assert (stack.get("statefulset", "trips-bridge") or {})["spec"]["replicas"] == 0
    assert stack.condition(MQKC, "trips", "ConnectionValid")["status"] == "Unknown"  # type: ignore[index]
    car = Device(stack.port, "car-1", stack.secret("car-1-credentials"))
    try:
        assert car.connect() == 0
        for i in range(3):
            assert car.publish("vehicles/car-1/state", f"paused-{i}".encode()) < 0x80
        # Paused: the session kept every message published meanwhile.
        worker = Session(stack.port, worker_id, "trips-connector", password)
        assert worker.connect() is True
        assert worker.drain() == [b"paused-0", b"paused-1", b"paused-2"]
        worker.close()
        for i in range(2):
            assert car.publish("vehicles/car-1/state", f"queued-{i}".encode()) < 0x80

        # Stopped: the session is gone, with what was queued for it.
        stack.patch(MQKC, "trips", {"spec": {"state": "stopped"}})
        stack.wait_condition(MQKC, "trips", "False", "Stopped")
        assert (stack.get("statefulset", "trips-bridge") or {})["spec"]["replicas"] == 0
        worker = Session(stack.port, worker_id, "trips-connector", password)
        assert worker.connect() is False
        assert worker.drain() == []
        worker.close()
    finally:
        car.close()

    stack.patch(MQKC, "trips", {"spec": {"state": "running"}})
    stack.wait_condition(MQKC, "trips", "True", "Running")
    assert (stack.get("statefulset", "trips-bridge") or {})["spec"]["replicas"] == 2


def test_identity_goes_with_the_connector_and_with_authorization(stack: Stack, kafka: Kafka) -> None:
    stack.apply(uplink("gone", kafka.bootstrap, f"gone-{uuid.uuid4().hex[:6]}"))
    stack.wait_condition(MQKC, "gone", "True", "Running")
    stack.cp.kubectl("delete", "-n", stack.namespace, MQKC, "gone", "--timeout=60s")
    for resource in (MQU, MQACL, "statefulset", "configmap"):
        name = "gone-connector" if resource in (MQU, MQACL) else "gone-bridge"
        wait_for(f"{resource}/{name} deleted", lambda r=resource, n=name: stack.get(r, n) is None, timeout=20)

    # A same-named account that is not the connector's is neither taken over nor deleted with it.
    stack.apply(
        {
            "apiVersion": "mqtt-operator.io/v1alpha1",
            "kind": "AuthUser",
            "metadata": {"name": "taken-connector"},
            "spec": {"instanceRef": {"name": "devices"}},
        }
    )
    stack.apply(uplink("taken", kafka.bootstrap, "taken"))
    cond = stack.wait_condition(MQKC, "taken", "False", "Conflict")
    assert "AuthUser taken-connector" in cond["message"]
    stack.cp.kubectl("delete", "-n", stack.namespace, MQKC, "taken", "--timeout=60s")
    assert stack.get(MQU, "taken-connector") is not None

    stack.apply(uplink("open", kafka.bootstrap, f"open-{uuid.uuid4().hex[:6]}"))
    stack.wait_condition(MQKC, "open", "True", "Running")
    assert stack.get(MQU, "open-connector") is not None
    # Authorization turned off: the broker restarts with the new configuration (as its Pod would).
    stack.patch(MQI, "devices", {"spec": {"authorization": {"enabled": False}}})
    wait_for(
        "allow_anonymous true",
        lambda: (
            "allow_anonymous true"
            in (stack.get("configmap", "devices-config") or {})["data"]["mosquitto.conf"]
        ),
    )
    stack.brokers.pop().stop()
    stack.start_broker(authorization=False)
    wait_for("the AuthUser removed", lambda: stack.get(MQU, "open-connector") is None, timeout=30)
    assert stack.get(MQACL, "open-connector") is None
    wait_for("connectorUser cleared", lambda: "connectorUser" not in stack.status("open"), timeout=30)
    # The status reports the desired identity even while a connection check holds the apply back
    # (the broker was just restarted): the worker config follows on the next successful reconcile.
    wait_for(
        "the worker config without a username",
        lambda: stack.config("open")["mqtt"]["username"] is None,
        timeout=30,
    )
    env = (stack.get("statefulset", "open-bridge") or {})["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "MQTT_PASSWORD" not in {e["name"] for e in env}
    valid = stack.wait_condition(MQKC, "open", "True", "Connected", type_="ConnectionValid")
    assert "anonymous" in valid["message"]


def test_counters_follow_the_workers_within_30_seconds(stack: Stack) -> None:
    first, second = stack.workers
    first.serve(received=120, delivered=118, failed=1, dead=1)
    second.serve(received=80, delivered=80)
    # The counters come from the workers whatever the connector's Ready says (no Kafka needed here).
    stack.apply(uplink(COUNTED, f"127.0.0.1:{free_port()}", "counted"))
    started = time.monotonic()

    def counters(expected: dict[str, int]) -> dict[str, Any] | None:
        shown = stack.status(COUNTED).get("counters") or {}
        return shown if all(shown.get(k) == v for k, v in expected.items()) else None

    shown = wait_for(
        "the first counters",
        lambda: counters({"received": 200, "delivered": 198, "failed": 1, "deadLettered": 1, "skipped": 0}),
        timeout=30,
    )
    assert shown["lastUpdateTime"].endswith("Z")
    assert time.monotonic() - started < 30
    # One worker moves on, the other restarts (its counters fall): the connector's never go back.
    first.serve(received=150, delivered=149, failed=1, dead=1)
    second.serve(received=5, delivered=5)
    wait_for(
        "the counters after a worker restart",
        lambda: counters({"received": 235, "delivered": 234}),
        timeout=30,
    )
