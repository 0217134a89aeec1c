"""The operator's mosquitto.conf run by the real Mosquitto: it starts, authenticates and enforces the spec.

The file is the ConfigMap's, rendered with BrokerPaths pointing at a temp folder and free ports; the
dynamic-security file is made by the StatefulSet's own init script. Mosquitto started as root switches to
the `mosquitto` user, so the folders and files it writes are opened up (FACTS.md).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME, admin_secret, existing_password
from mqtt_operator.resources.broker_config import broker_config_map
from mqtt_operator.resources.identity import InstanceIdentity
from mqtt_operator.resources.mosquitto_conf import CONFIG_FILE, BrokerPaths
from mqtt_operator.resources.statefulset import statefulset
from testenv.mosquitto import broker_dir, dynsec_plugin, stamp_plugin
from testenv.paths import tool
from testenv.process import Server, free_port

pytestmark = pytest.mark.integration

ID = InstanceIdentity(name="devices", namespace="iot", uid="uid-1")
TIMEOUT = 10.0


@dataclass
class RenderedBroker:
    """Mosquitto run with the operator's file for `spec`; only paths and ports differ from a Pod."""

    spec: MqttInstanceSpec
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="conf-", dir=broker_dir())))
    server: Server | None = None

    def __post_init__(self) -> None:
        self.paths = BrokerPaths(
            config_dir=str(self.root / "config"),
            data_dir=str(self.root / "data"),
            tls_dir=str(self.root / "tls"),
            dynsec_plugin=dynsec_plugin(),
            stamp_plugin=stamp_plugin(),
        )
        for folder in (self.root, self.root / "config", self.root / "data", self.root / "tls"):
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o777)  # noqa: S103 - private temp folders the broker's user must write
        self.conf = broker_config_map(ID, self.spec, self.paths)["data"][CONFIG_FILE]
        Path(self.paths.config_file).write_text(self.conf)

    def port(self, listener: str = "mqtt") -> int:
        return self.spec.listeners.enabled()[listener].port

    @property
    def log(self) -> str:
        return (self.root / "mosquitto.log").read_text(errors="replace")

    def run_init_container(self, password: str) -> subprocess.CompletedProcess[str]:
        """The StatefulSet's init container run here, with its env (the Secret's key given as `password`)."""
        pod = statefulset(ID, self.spec, "hash", self.paths)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        env: dict[str, str] = {}
        for var in init["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                assert var["valueFrom"]["secretKeyRef"] == {"name": "devices-admin", "key": "password"}
                env[var["name"]] = password
        done = subprocess.run(
            init["command"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30, check=True
        )
        os.chmod(self.paths.dynsec_file, 0o666)  # noqa: S103 - written by root here, by the broker's uid in a Pod
        return done

    def start(self) -> RenderedBroker:
        # stdbuf: stdout line-buffered, as Mosquitto does itself since 2.0.16; 2.0.11 block-buffers it into
        # a pipe, and the log would only appear at exit.
        argv = [tool("stdbuf"), "-oL", tool("mosquitto"), "-c", self.paths.config_file]
        log = self.root / "mosquitto.log"
        seen = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
        self.server = Server("mosquitto", argv, log)
        self.server.start()
        # Ready when the log says so, not after a probe connection: 2.0.11 counts every closed connection
        # out twice (fixed in 2.0.12), so each probe would lift max_connections by one.
        self.server.wait_until(lambda: b" running" in log.read_bytes()[seen:], 30, "running")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def brokers() -> Iterator[list[RenderedBroker]]:
    """Brokers a test starts are appended here and stopped (their folders removed) after it."""
    started: list[RenderedBroker] = []
    yield started
    for broker in started:
        broker.stop()
        shutil.rmtree(broker.root, ignore_errors=True)


def make_spec(**overrides: Any) -> MqttInstanceSpec:
    return MqttInstanceSpec.model_validate({"listeners": {"mqtt": {"port": free_port()}}, **overrides})


@dataclass
class Session:
    client: mqtt.Client
    connack: ReasonCode | None
    properties: dict[str, Any]
    messages: queue.Queue[mqtt.MQTTMessage]
    disconnects: queue.Queue[ReasonCode]

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish_reason(self, topic: str, payload: bytes = b"x") -> ReasonCode:
        """The PUBACK reason of a QoS 1 publish."""
        acks: queue.Queue[ReasonCode] = queue.Queue()
        self.client.on_publish = lambda _c, _u, _mid, reason, _p: acks.put(reason)
        self.client.publish(topic, payload, qos=1)
        return acks.get(timeout=TIMEOUT)

    def subscribe(self, topic: str) -> None:
        granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put(codes)
        self.client.subscribe(topic, qos=1)
        codes = granted.get(timeout=TIMEOUT)
        assert not codes[0].is_failure, codes


@contextmanager
def session(
    port: int,
    username: str | None = None,
    password: str | None = None,
    *,
    transport: Literal["tcp", "websockets"] = "tcp",
    tls: dict[str, str] | None = None,
    wait: float = TIMEOUT,
) -> Iterator[Session]:
    """A paho MQTT 5 client; `connack` is None when the broker answered nothing within `wait`."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, transport=transport)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(**tls)
    connacks: queue.Queue[tuple[ReasonCode, Properties | None]] = queue.Queue()
    messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    disconnects: queue.Queue[ReasonCode] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, props: connacks.put((reason, props))
    client.on_message = lambda _c, _u, msg: messages.put(msg)
    client.on_disconnect = lambda _c, _u, _f, reason, _p: disconnects.put(reason)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        try:
            reason, props = connacks.get(timeout=wait)
        except queue.Empty:
            reason, props = None, None
        yield Session(client, reason, props.json() if props else {}, messages, disconnects)
    finally:
        client.disconnect()
        client.loop_stop()


def sys_topic(port: int, topic: str) -> str:
    """One message of a $SYS topic, read with mosquitto_sub."""
    done = subprocess.run(
        [tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    return done.stdout.strip()


# --- authorization on -------------------------------------------------------------------------------------


def test_authorization_on_admits_only_the_admin_and_loads_dynamic_security(
    brokers: list[RenderedBroker],
) -> None:
    broker = RenderedBroker(make_spec(authorization={"enabled": True}))
    brokers.append(broker)
    password = existing_password(admin_secret(ID, broker.spec, None))
    assert password
    broker.run_init_container(password)
    # A restarted Pod runs the init container again: the file (and its password) must be kept.
    before = Path(broker.paths.dynsec_file).read_bytes()
    again = broker.run_init_container("another-password")
    assert Path(broker.paths.dynsec_file).read_bytes() == before
    assert "kept" in again.stdout
    broker.start()

    with session(broker.port()) as anonymous:
        assert anonymous.connack is not None and anonymous.connack.is_failure
    with session(broker.port(), ADMIN_USERNAME, "wrong") as wrong:
        assert wrong.connack is not None and wrong.connack.is_failure
    with session(broker.port(), "anyone", "anything") as stranger:
        assert stranger.connack is not None and stranger.connack.is_failure

    with session(broker.port(), ADMIN_USERNAME, password) as admin:
        assert admin.connected, admin.connack
        # The plugin really runs on the file the init container wrote: ask it for its clients.
        admin.subscribe("$CONTROL/dynamic-security/v1/response")
        admin.client.publish(
            "$CONTROL/dynamic-security/v1", json.dumps({"commands": [{"command": "listClients"}]})
        )
        response = json.loads(admin.messages.get(timeout=TIMEOUT).payload)
        # Deny by default: the admin role `dynsec init` writes may not publish outside $CONTROL.
        assert admin.publish_reason("vehicles/1/state").getName() == "Not authorized"
    (result,) = response["responses"]
    assert result["command"] == "listClients" and "error" not in result
    assert result["data"]["clients"] == [ADMIN_USERNAME]

    # Connect notices reach stdout with the username, for whoever reads the broker's log.
    assert f"u'{ADMIN_USERNAME}'" in broker.log


# --- authorization off ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("username", "password"), [(None, None), ("anyone", "anything"), ("bob", None)])
def test_authorization_off_admits_any_credentials(
    brokers: list[RenderedBroker], username: str | None, password: str | None
) -> None:
    broker = RenderedBroker(make_spec(authorization={"enabled": False}))
    brokers.append(broker)
    broker.start()
    with session(broker.port(), username, password) as client:
        assert client.connected, client.connack
        client.subscribe("vehicles/#")
        client.client.publish("vehicles/1/state", b"ok", qos=1)
        assert client.messages.get(timeout=TIMEOUT).payload == b"ok"
    assert sys_topic(broker.port(), "$SYS/broker/version").startswith("mosquitto version 2.0.")


# --- the spec's values, as the broker applies them --------------------------------------------------------


def test_packet_size_and_inflight_limits_are_what_the_broker_enforces(brokers: list[RenderedBroker]) -> None:
    broker = RenderedBroker(
        make_spec(
            authorization={"enabled": False},
            limits={"maxPacketSize": 1024},
            sessions={"maxInflightMessages": 321},
        )
    )
    brokers.append(broker)
    broker.start()

    with session(broker.port()) as sub, session(broker.port()) as pub:
        # MQTT 5 CONNACK tells the client the broker's limits: the spec's values.
        assert pub.properties["MaximumPacketSize"] == 1024
        assert pub.properties["ReceiveMaximum"] == 321
        sub.subscribe("t")
        pub.client.publish("t", b"x" * 100, qos=1)
        assert len(sub.messages.get(timeout=TIMEOUT).payload) == 100

        # Over the limit: the broker cuts the publisher off and delivers nothing.
        pub.client.publish("t", b"x" * 2000, qos=1)
        reason = pub.disconnects.get(timeout=TIMEOUT)
        assert reason.getName() == "Packet too large"
        with pytest.raises(queue.Empty):
            sub.messages.get(timeout=1)
    assert "disconnected due to oversize packet" in broker.log


def test_max_connections_applies_to_the_listener(brokers: list[RenderedBroker]) -> None:
    # A fresh broker and no connection closed before the check (2.0.11 miscounts closed ones, see start()).
    broker = RenderedBroker(make_spec(authorization={"enabled": False}, limits={"maxConnections": 3}))
    brokers.append(broker)
    broker.start()
    with session(broker.port()) as a, session(broker.port()) as b, session(broker.port()) as c:
        assert a.connected and b.connected and c.connected
        # One attempt (paho would retry): the fourth is turned away.
        fourth = subprocess.run(
            [tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port()), "-t", "t", "-m", "x"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert fourth.returncode != 0
        assert "denied: max_connections exceeded" in broker.log


def test_retained_messages_persist_across_a_restart(brokers: list[RenderedBroker]) -> None:
    broker = RenderedBroker(
        make_spec(authorization={"enabled": False}, persistence={"autosaveInterval": "1s"})
    )
    brokers.append(broker)
    broker.start()
    with session(broker.port()) as client:
        client.client.publish("fleet/config", b"v1", qos=1, retain=True).wait_for_publish(TIMEOUT)
    broker.stop()
    assert (Path(broker.paths.data_dir) / "mosquitto.db").exists()
    broker.start()
    with session(broker.port()) as client:
        client.subscribe("fleet/config")
        assert client.messages.get(timeout=TIMEOUT).payload == b"v1"


def test_websocket_listener(brokers: list[RenderedBroker]) -> None:
    broker = RenderedBroker(
        make_spec(
            authorization={"enabled": False},
            listeners={"mqtt": {"port": free_port()}, "websocket": {"port": free_port()}},
        )
    )
    brokers.append(broker)
    broker.start()
    with session(broker.port("websocket"), transport="websockets") as client:
        assert client.connected, client.connack


# --- TLS --------------------------------------------------------------------------------------------------


def _openssl(command: str, folder: Path) -> None:
    subprocess.run(
        [tool("openssl"), *command.split()], cwd=folder, capture_output=True, check=True, timeout=60
    )


def _make_certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as cert-manager would write them."""
    _openssl("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.crt", folder)
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (folder / f"{name}.ext").write_text(extension + "\n")
        _openssl(f"req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr", folder)
        _openssl(
            f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
            f"-extfile {name}.ext -out {name}.crt",
            folder,
        )


def test_mqtts_with_client_certificates(brokers: list[RenderedBroker]) -> None:
    spec = make_spec(
        authorization={"enabled": False},
        listeners={
            "mqtt": {"port": free_port()},
            "mqtts": {
                "port": free_port(),
                "tls": {"secretName": "broker-tls", "requireClientCertificate": True},
            },
        },
    )
    broker = RenderedBroker(spec)
    brokers.append(broker)
    certs = broker.root / "certs"
    certs.mkdir()
    _make_certificates(certs)
    # The Secret's keys, where the StatefulSet mounts them.
    mount = Path(broker.paths.tls_mount("mqtts"))
    mount.mkdir(parents=True)
    for source, key in (("server.crt", "tls.crt"), ("server.key", "tls.key"), ("ca.crt", "ca.crt")):
        shutil.copy(certs / source, mount / key)
        os.chmod(mount / key, 0o644)
    broker.start()

    ca = str(certs / "ca.crt")
    with session(
        broker.port("mqtts"),
        tls={"ca_certs": ca, "certfile": str(certs / "client.crt"), "keyfile": str(certs / "client.key")},
    ) as client:
        assert client.connected, client.connack
    # Without a client certificate the broker ends the handshake: with TLS 1.3 the client may only learn
    # it after connect() returned, so either outcome counts, as long as no CONNACK arrives.
    admitted = False
    try:
        with session(broker.port("mqtts"), tls={"ca_certs": ca}, wait=3) as refused:
            admitted = refused.connected
    except OSError:  # ssl.SSLError included
        pass
    assert not admitted
