"""The broker NetworkPolicy `<name>-broker`: only the operator, bridge workers and labelled clients get in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.identity import BROKER_COMPONENT, InstanceIdentity
from mqtt_operator.resources.meta import MANAGED_BY

# The label an application Pod carries to be let in: `mqtt-operator.io/client-of: <instance name>`.
CLIENT_OF_LABEL = "mqtt-operator.io/client-of"


@dataclass(frozen=True)
class NetworkPolicyOptions:
    """Whether to fence the broker, and whole namespaces to let in (e.g. the operator's own)."""

    enabled: bool = False
    allowed_namespaces: tuple[str, ...] = ()


NO_NETWORK_POLICY = NetworkPolicyOptions()


def network_policy_name(instance_name: str) -> str:
    return f"{instance_name}-broker"


def network_policy(
    identity: InstanceIdentity, spec: MqttInstanceSpec, options: NetworkPolicyOptions
) -> dict[str, Any] | None:
    """The policy, or None when disabled (the caller then deletes any policy left from before)."""
    if not options.enabled:
        return None
    # A peer with only a podSelector is matched in the policy's own namespace.
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}}},
        {"podSelector": {"matchLabels": {CLIENT_OF_LABEL: identity.name}}},
    ]
    # kubernetes.io/metadata.name is set by the API server on every namespace and cannot be forged.
    peers += [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        for ns in sorted(set(options.allowed_namespaces))
    ]
    ports = [{"protocol": "TCP", "port": listener.port} for listener in spec.listeners.enabled().values()]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": identity.metadata(network_policy_name(identity.name), BROKER_COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": identity.selector_labels(BROKER_COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": ports}],
        },
    }
