"""Who owns an object the operator builds (an MqttInstance, an integration), and the metadata every
builder stamps on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from mqtt_operator.api.kinds import MQTT_INSTANCE
from mqtt_operator.resources import meta

# The component label of the broker's Pods and of the objects that exist for them (Services, config ...).
BROKER_COMPONENT = "broker"


@dataclass(frozen=True)
class OwnerIdentity:
    """The few fields of the custom resource the builders need; every builder takes this one shape."""

    name: str
    namespace: str
    uid: str
    api_version: str
    kind: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        md = body["metadata"]
        return cls(
            name=md["name"],
            namespace=md["namespace"],
            uid=md["uid"],
            api_version=body["apiVersion"],
            kind=body["kind"],
        )

    def owner_reference(self) -> dict[str, Any]:
        return meta.owner_reference(
            {
                "apiVersion": self.api_version,
                "kind": self.kind,
                "metadata": {"name": self.name, "uid": self.uid},
            }
        )

    def labels(
        self, component: str, user_labels: Mapping[str, str] | None = None, *, include_version: bool = True
    ) -> dict[str, str]:
        return meta.labels(self.kind, self.name, component, user_labels, include_version=include_version)

    def selector_labels(self, component: str) -> dict[str, str]:
        return meta.selector_labels(self.kind, self.name, component)

    def metadata(
        self,
        name: str,
        component: str,
        *,
        owned: bool = True,
        user_labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """`owned=False` leaves out the ownerReference, so garbage collection keeps the object."""
        result: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component, user_labels),
        }
        if annotations:
            result["annotations"] = dict(annotations)
        if owned:
            result["ownerReferences"] = [self.owner_reference()]
        return result


@dataclass(frozen=True)
class InstanceIdentity(OwnerIdentity):
    api_version: str = MQTT_INSTANCE.api_version
    kind: str = MQTT_INSTANCE.kind
