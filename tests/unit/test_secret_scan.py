"""The secret scanner (testenv/secret_scan.py) finds what is planted: a scan that found nothing proves
only as much as these negative controls show it would have found."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mqtt_operator.resources.admin_secret import generate_password
from testenv.secret_scan import MIN_LENGTH, Hit, LeakScan, collect, forms

PASSWORD = generate_password()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, data: dict[str, str], ours: bool = True, namespace: str = "iot") -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "mqtt-operator"} if ours else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {key: b64(value) for key, value in data.items()},
    }


def scan_with(password: str = PASSWORD) -> LeakScan:
    scan = LeakScan()
    scan.add_secrets([secret("car-credentials", {"username": "car", "password": password})], {})
    return scan


def places(scan: LeakScan) -> list[str]:
    return [hit.where for hit in scan.hits()]


def test_a_clean_scan_finds_nothing() -> None:
    scan = scan_with()
    scan.add_text("log operator", '{"message": "AuthUser car: Ready", "password": "***"}\n')
    scan.add_object({"kind": "AuthUser", "metadata": {"name": "car", "namespace": "iot"}, "status": {}})
    assert scan.hits() == []


def test_a_password_planted_in_a_log_is_found_as_text_and_as_base64() -> None:
    scan = scan_with()
    scan.add_text("log iot/devices-0/mosquitto", f"1700000000: New client connected, pw {PASSWORD}\n")
    config = json.dumps({"password": PASSWORD})
    scan.add_text("log iot/w-0/bridge", f"config: {b64(config)}\n")
    assert {(hit.where, hit.form) for hit in scan.hits()} == {
        ("log iot/devices-0/mosquitto", "text"),
        # Inside a longer base64 blob the password starts at the blob's 14th byte: alignment 2.
        ("log iot/w-0/bridge", "base64+2"),
    }


@pytest.mark.parametrize("offset", range(3))
def test_base64_is_found_at_every_alignment(offset: int) -> None:
    scan = scan_with()
    scan.add_text("log", b64("x" * offset + PASSWORD + "tail"))
    assert [hit.form for hit in scan.hits()] == [f"base64+{offset}"]


def test_the_plain_base64_of_the_password_alone_is_found() -> None:
    """As `kubectl get secret -o yaml` would print it into a log."""
    scan = scan_with()
    scan.add_text("log", f"password: {b64(PASSWORD)}")
    assert [hit.form for hit in scan.hits()] == ["base64+0"]


def test_a_password_planted_in_an_event_or_an_annotation_is_found_with_its_path() -> None:
    scan = scan_with()
    scan.add_object(
        {
            "kind": "Event",
            "metadata": {"name": "car.1", "namespace": "iot"},
            "reason": "Failed",
            "message": f"login as car with {PASSWORD} refused",
        }
    )
    scan.add_object(
        {
            "kind": "KafkaConnector",
            "metadata": {"name": "k", "namespace": "iot", "annotations": {"debug": PASSWORD}},
            "status": {"conditions": [{"type": "Ready", "message": "ok"}, {"message": f"pw={PASSWORD}"}]},
        }
    )
    assert sorted(places(scan)) == [
        "Event iot/car.1 .message",
        "KafkaConnector iot/k .metadata.annotations.debug",
        "KafkaConnector iot/k .status.conditions[1].message",
    ]
    # A hit names where the password came from, never the password.
    assert all(PASSWORD not in str(hit) and "iot/car-credentials" in str(hit) for hit in scan.hits())


def test_a_json_escaped_password_is_found() -> None:
    password = 'quote"and\\backslash-long'
    scan = scan_with(password)
    scan.add_text("log operator", json.dumps({"message": f"pw {password}"}))
    assert [hit.form for hit in scan.hits()] == ["json"]
    assert "json" not in forms(PASSWORD)  # a generated password needs no escaping


def test_only_generated_and_referenced_passwords_are_collected() -> None:
    scan = LeakScan()
    scan.add_secrets(
        [
            secret("devices-admin", {"username": "mqtt-operator-admin", "password": PASSWORD}),
            # Not ours, not named by an AuthUser: a TLS key, an unrelated app's Secret.
            secret("other", {"password": "a-password-nobody-manages-here"}, ours=False),
            # Named by an AuthUser's passwordSecretRef, key `pw`.
            secret(
                "car-password", {"pw": "the-users-own-password", "password": "ignored-key-value"}, ours=False
            ),
            # Too short to search without finding ordinary words.
            secret("short", {"password": "x" * (MIN_LENGTH - 1)}),
        ],
        {("iot", "car-password"): "pw"},
    )
    assert sorted(pw.origin for pw in scan.passwords.values()) == [
        "Secret iot/car-password key pw",
        "Secret iot/devices-admin key password",
    ]
    assert scan.too_short == ["Secret iot/short key password"]
    # The username is no password.
    scan.add_text("log", "mqtt-operator-admin connected")
    assert scan.hits() == []


def test_log_files_and_rotated_gzip_logs_are_read(tmp_path: Path) -> None:
    pod = tmp_path / "pods" / "iot_devices-0_uid" / "mosquitto"
    pod.mkdir(parents=True)
    (pod / "0.log").write_text("2024-01-01T00:00:00Z stdout F started\n")
    (pod / "1.log.20240101-000000.gz").write_bytes(gzip.compress(f"stdout F pw {PASSWORD}\n".encode()))
    scan = scan_with()
    scan.add_log_files(tmp_path / "pods")
    (hit,) = scan.hits()
    assert hit.where.endswith("1.log.20240101-000000.gz") and hit.form == "text"


class FakeKubectl:
    """Answers `get` from `objects` and `logs` from `logs`, as kubectl would."""

    def __init__(self, objects: list[dict[str, Any]], logs: dict[tuple[str, str, bool], str]) -> None:
        self.objects = objects
        self.logs = logs
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if args[0] == "logs":
            _, _, _, pod, _, container, *previous = args
            text = self.logs.get((pod, container, bool(previous)))
            if text is None:
                return subprocess.CompletedProcess(args, 1, "", f"container {container} is waiting to start")
            return subprocess.CompletedProcess(args, 0, text, "")
        resources = args[1]
        if resources == "secret":
            found = [o for o in self.objects if o["kind"] == "Secret" and o["metadata"]["name"] == args[4]]
            return subprocess.CompletedProcess(
                args, 0 if found else 1, json.dumps(found[0]) if found else "", ""
            )
        kinds = {
            "secrets": {"Secret"},
            "events": {"Event"},
            "authusers.mqtt-operator.io": {"AuthUser"},
        }.get(resources, {"KafkaConnector", "Pod", "StatefulSet"})
        items = [o for o in self.objects if o["kind"] in kinds]
        if "-l" in args:
            items = [o for o in items if o["metadata"].get("labels")]
        return subprocess.CompletedProcess(args, 0, json.dumps({"items": items}), "")


def pod(
    name: str, containers: list[str], init: list[str], restarts: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "iot"},
        "spec": {
            "containers": [{"name": c} for c in containers],
            "initContainers": [{"name": c} for c in init],
        },
        "status": {
            "containerStatuses": [{"name": c, "restartCount": (restarts or {}).get(c, 0)} for c in containers]
        },
    }


def test_collect_reads_every_containers_log_and_the_previous_run() -> None:
    """What the e2e session runs over the node, against a kubectl that plays the API server."""
    user_password = "the-users-own-password"
    kubectl = FakeKubectl(
        [
            secret("car-credentials", {"password": PASSWORD}),
            secret("truck-password", {"password": user_password}, ours=False),
            {
                "kind": "AuthUser",
                "metadata": {"name": "truck", "namespace": "iot"},
                "spec": {"passwordSecretRef": {"name": "truck-password"}},
            },
            {"kind": "Event", "metadata": {"name": "e", "namespace": "iot"}, "message": "Ready"},
            pod("devices-0", ["mosquitto", "exporter"], ["dynsec-init"], restarts={"mosquitto": 1}),
            pod("w-0", ["bridge"], []),
        ],
        {
            ("devices-0", "dynsec-init", False): "dynamic-security file created\n",
            ("devices-0", "mosquitto", False): "started\n",
            ("devices-0", "mosquitto", True): f"crashed with {user_password}\n",
            ("devices-0", "exporter", False): "serving\n",
        },
    )
    scan = LeakScan()
    collect(scan, kubectl, "iot")
    assert scan.hits() == [
        Hit("Secret iot/truck-password key password", "log iot/devices-0/mosquitto (previous)", "text")
    ]
    # The exporter did not restart: no --previous asked; the worker's log could not be read, and says so.
    assert ("logs", "-n", "iot", "devices-0", "-c", "exporter", "--previous") not in kubectl.calls
    assert scan.unread == ["kubectl logs iot/w-0 -c bridge: container bridge is waiting to start"]
    assert len(scan.passwords) == 2
