"""The typed models mirror the CRDs: every spec field of a CRD has a model field, every example parses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from mqtt_operator.api.access import AclPolicySpec, AuthUserSpec
from mqtt_operator.api.base import duration_seconds, quantity_bytes
from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.api.replication import ReplicationTaskSpec
from mqtt_operator.api.status import (
    AclPolicyStatus,
    AuthUserStatus,
    FunctionTriggerStatus,
    KafkaConnectorStatus,
    MqttInstanceStatus,
    ReplicationTaskStatus,
)

REPO = Path(__file__).resolve().parents[2]
MODELS: dict[str, type[BaseModel]] = {
    "mqttinstances": MqttInstanceSpec,
    "authusers": AuthUserSpec,
    "aclpolicies": AclPolicySpec,
    "kafkaconnectors": KafkaConnectorSpec,
    "functiontriggers": FunctionTriggerSpec,
    "replicationtasks": ReplicationTaskSpec,
}
STATUS_MODELS: dict[str, type[BaseModel]] = {
    "mqttinstances": MqttInstanceStatus,
    "authusers": AuthUserStatus,
    "aclpolicies": AclPolicyStatus,
    "kafkaconnectors": KafkaConnectorStatus,
    "functiontriggers": FunctionTriggerStatus,
    "replicationtasks": ReplicationTaskStatus,
}
FREE_FORM = {"resources", "affinity"}  # passed through to Kubernetes as they are


def crd_schema(plural: str, part: str = "spec") -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / f"{plural}.mqtt-operator.io.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][part]
    return schema


def extra_fields(schema: dict[str, Any], model: type[BaseModel], path: str) -> list[str]:
    """Model fields the CRD does not have (the API server would prune them from what we write)."""
    props = schema.get("properties") or {}
    extra = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if alias not in props:
            extra.append(f"{path}.{alias}")
            continue
        nested = _model_of(field.annotation)
        sub = props[alias]
        target = sub.get("items", sub) if sub.get("type") == "array" else sub
        if nested is not None and target.get("properties"):
            extra += extra_fields(target, nested, f"{path}.{alias}")
    return extra


def missing_fields(schema: dict[str, Any], model: type[BaseModel], path: str) -> list[str]:
    aliases = {(f.alias or name): f for name, f in model.model_fields.items()}
    missing = []
    for prop, sub in (schema.get("properties") or {}).items():
        if prop not in aliases:
            missing.append(f"{path}.{prop}")
            continue
        if prop in FREE_FORM:
            continue
        nested = _model_of(aliases[prop].annotation)
        target = sub.get("items", sub) if sub.get("type") == "array" else sub
        if nested is not None and target.get("properties"):
            missing += missing_fields(target, nested, f"{path}.{prop}")
    return missing


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("plural", sorted(MODELS))
def test_every_crd_field_has_a_model_field(plural: str) -> None:
    assert missing_fields(crd_schema(plural), MODELS[plural], "spec") == []


@pytest.mark.parametrize("plural", sorted(STATUS_MODELS))
def test_status_models_match_the_crd_both_ways(plural: str) -> None:
    schema = crd_schema(plural, "status")
    # Condition mirrors metav1.Condition, whose fields the CRD lists itself.
    assert missing_fields(schema, STATUS_MODELS[plural], "status") == []
    assert extra_fields(schema, STATUS_MODELS[plural], "status") == []


def test_a_status_field_the_crd_lacks_is_caught() -> None:
    class Wrong(KafkaConnectorStatus):
        share_groups: str | None = None

    assert extra_fields(crd_schema("kafkaconnectors", "status"), Wrong, "status") == ["status.shareGroups"]


@pytest.mark.parametrize("plural", sorted(MODELS))
def test_example_parses(plural: str) -> None:
    kind = {
        "mqttinstances": "mqttinstance",
        "authusers": "authuser",
        "aclpolicies": "aclpolicy",
        "kafkaconnectors": "kafkaconnector",
        "functiontriggers": "functiontrigger",
        "replicationtasks": "replicationtask",
    }[plural]
    body = yaml.safe_load((REPO / "examples" / f"{kind}.yaml").read_text())
    MODELS[plural].model_validate(body["spec"])


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        AuthUserSpec.model_validate({"instanceRef": {"name": "d"}, "pasword": "x"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("2h", 7200), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(("value", "size"), [(1048576, 1048576), ("2Mi", 2097152), ("1k", 1000), ("20", 20)])
def test_quantities(value: int | str, size: int) -> None:
    assert quantity_bytes(value) == size


def test_bad_duration_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="30s"):
        duration_seconds("thirty")
