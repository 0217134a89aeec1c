"""The test environment's components are the real thing and really answer."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from testenv.kafka import Kafka
from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto
from testenv.paths import tool, versions

pytestmark = pytest.mark.integration


def test_api_server_reports_the_pinned_version(control_plane: ControlPlane) -> None:
    info = json.loads(control_plane.kubectl("get", "--raw", "/version").stdout)
    assert info["gitVersion"] == versions()["KUBERNETES_VERSION"]
    client = json.loads(control_plane.kubectl("version", "--client", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]


@pytest.mark.parametrize("binary", ["promtool", "prometheus"])
def test_prometheus_binaries_report_the_pinned_version(binary: str) -> None:
    """Prometheus 3.x is the module's v0.3XX.Y: v0.316.0 must say 3.16.0."""
    minor_patch = versions()["PROMETHEUS_VERSION"].removeprefix("v0.")
    major_minor, patch = minor_patch.split(".", 1)
    release = f"{int(major_minor) // 100}.{int(major_minor) % 100}.{patch}"
    out = subprocess.run([tool(binary), "--version"], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.startswith(f"{binary}, version {release} "), out.stdout


def test_rbac_is_enforced_for_users_without_grants(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl("auth", "can-i", "create", "deployments").stdout.strip() == "yes"
    denied = control_plane.kubectl("auth", "can-i", "create", "deployments", "--as", "nobody", check=False)
    assert denied.stdout.strip() == "no"


def test_api_server_stores_objects_in_etcd(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "configmap", "probe", "-n", namespace, "--from-literal=k=v")
    out = control_plane.kubectl("get", "configmap", "probe", "-n", namespace, "-o", "jsonpath={.data.k}")
    assert out.stdout == "v"


def test_kafka_round_trip_with_kcat(kafka: Kafka) -> None:
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [tool("kcat"), "-b", kafka.bootstrap, "-P", "-t", topic, "-K", ":"],
        input="k1:hello\nk2:world\n",
        text=True,
        check=True,
        timeout=30,
    )
    out = subprocess.run(
        [
            tool("kcat"),
            "-b",
            kafka.bootstrap,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-c",
            "2",
            "-e",
            "-f",
            "%k=%s\\n",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.splitlines() == ["k1=hello", "k2=world"]


def test_mosquitto_round_trip(mosquitto: Mosquitto) -> None:
    sub = subprocess.Popen(
        [
            tool("mosquitto_sub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-q",
            "1",
            "-t",
            "probe/#",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # The subscriber needs a moment to subscribe; a retained message closes that race.
    subprocess.run(
        [
            tool("mosquitto_pub"),
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-q",
            "1",
            "-r",
            "-t",
            "probe/x",
            "-m",
            "hi",
        ],
        check=True,
        timeout=10,
    )
    out, _ = sub.communicate(timeout=15)
    assert out.strip() == "probe/x hi"


def test_mosquitto_dynamic_security_plugin_loads() -> None:
    from testenv.mosquitto import dynsec_plugin

    broker = Mosquitto(config="")
    dynsec = broker.root / "dynsec.json"
    subprocess.run(
        [tool("mosquitto_ctrl"), "dynsec", "init", str(dynsec), "admin", "admin-password-1"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    dynsec.chmod(0o666)
    broker.config = f"plugin {dynsec_plugin()}\nplugin_opt_config_file {dynsec}\n"
    broker.start()
    try:
        listed = subprocess.run(
            [
                tool("mosquitto_ctrl"),
                "-h",
                "127.0.0.1",
                "-p",
                str(broker.port),
                "-u",
                "admin",
                "-P",
                "admin-password-1",
                "dynsec",
                "listClients",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert "admin" in listed.stdout
        refused = subprocess.run(
            [
                tool("mosquitto_pub"),
                "-h",
                "127.0.0.1",
                "-p",
                str(broker.port),
                "-u",
                "admin",
                "-P",
                "wrong",
                "-t",
                "x",
                "-m",
                "y",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert refused.returncode != 0
    finally:
        broker.stop()
