"""The CRD files in crds/, read as plain YAML (no API server): shape, descriptions, names, columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXPECTED = {
    "MqttInstance": ("mqttinstances", "mqi"),
    "AuthUser": ("authusers", "mqu"),
    "AclPolicy": ("aclpolicies", "mqacl"),
    "KafkaConnector": ("kafkaconnectors", "mqkc"),
    "ReplicationTask": ("replicationtasks", "mqrt"),
    "FunctionTrigger": ("functiontriggers", "mqft"),
}
CRD_FILES = sorted(CRDS.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: one CustomResourceDefinition per file"
    crd: dict[str, Any] = docs[0]
    return crd


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under node, with its path (items as [], map values as {})."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_one_file_per_kind() -> None:
    assert sorted(p.name for p in CRD_FILES) == sorted(
        f"{plural}.mqtt-operator.io.yaml" for plural, _ in EXPECTED.values()
    )


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_names_scope_category_and_version(path: Path) -> None:
    crd = load(path)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    kind = spec["names"]["kind"]
    plural, short = EXPECTED[kind]
    assert (
        crd["metadata"]["name"] == f"{plural}.mqtt-operator.io"
        and path.name == f"{plural}.mqtt-operator.io.yaml"
    )
    assert spec["group"] == "mqtt-operator.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == plural
    assert spec["names"]["shortNames"] == [short]
    assert "mqtt" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    if kind in ("KafkaConnector", "FunctionTrigger", "ReplicationTask"):
        # The worker kinds scale like a Deployment: kubectl scale, an HPA, KEDA.
        assert version["subresources"] == {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        }
    else:
        assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_printer_columns(path: Path) -> None:
    (version,) = load(path)["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    assert names[:2] == ["Ready", "Reason"]
    assert names[-1] == "Age"
    assert columns[0]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns[1]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert len(names) >= 4, "a kind-specific column besides Ready, Reason and Age"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_field_has_a_description(path: Path) -> None:
    schema = schema_of(load(path))
    # The API server forbids anything but `type: object` on the root's metadata.
    missing = [p for p, node in walk(schema, "") if p != ".metadata" and not node.get("description")]
    assert missing == [], f"fields without a description: {missing}"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_strings_arrays_and_maps_are_bounded(path: Path) -> None:
    """Bounds let the API server estimate the CEL rules' cost (and keep objects small)."""
    offenders = []
    for p, node in walk(schema_of(load(path)), ""):
        if p in (".apiVersion", ".kind"):
            continue
        if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
            offenders.append(f"{p}: string without maxLength")
        if node.get("type") == "array" and "maxItems" not in node:
            offenders.append(f"{p}: array without maxItems")
        if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            offenders.append(f"{p}: map without maxProperties")
    assert offenders == []


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_free_form_fields_say_why(path: Path) -> None:
    for p, node in walk(schema_of(load(path)), ""):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert "free-form" in node["description"], f"{p} keeps unknown fields without saying why"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_status_is_fully_declared(path: Path) -> None:
    status = schema_of(load(path))["properties"]["status"]
    props = status["properties"]
    assert props["observedGeneration"]["type"] == "integer"
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]["properties"]
    assert set(item) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert item["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["lastTransitionTime"]["format"] == "date-time"
    assert not any(n.get("x-kubernetes-preserve-unknown-fields") for _, n in walk(status, "status"))


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_cel_rule_has_a_message(path: Path) -> None:
    for p, node in walk(schema_of(load(path)), ""):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message") or rule.get("messageExpression"), f"{p}: {rule['rule']}"


def test_every_instance_ref_is_required_and_immutable() -> None:
    found = 0
    for path in CRD_FILES:
        for p, node in walk(schema_of(load(path)), ""):
            if p.endswith(".instanceRef"):
                found += 1
                assert node["required"] == ["name"], p
                assert any(r["rule"] == "self == oldSelf" for r in node["x-kubernetes-validations"]), p
    assert found == 6  # five kinds, and ReplicationTask's MQTT source and target
