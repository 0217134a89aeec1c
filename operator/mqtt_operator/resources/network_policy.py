"""The broker NetworkPolicy `<name>-broker`: only the operator, bridge workers and labelled clients get in."""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.instance import MqttInstanceSpec, NetworkPeer
from mqtt_operator.resources.identity import BROKER_COMPONENT, InstanceIdentity
from mqtt_operator.resources.meta import MANAGED_BY

# The label an application Pod carries to be let in: `mqtt-operator.io/client: <instance name>`.
CLIENT_LABEL = "mqtt-operator.io/client"
# Set by the API server on every namespace; a user cannot forge it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def network_policy_name(instance_name: str) -> str:
    return f"{instance_name}-broker"


def _peer(index: int, peer: NetworkPeer, field: str = "spec.networkPolicy.allowFrom") -> dict[str, Any]:
    # Both selectors in one peer mean "these Pods in these namespaces", as in the CR.
    result: dict[str, Any] = {}
    if peer.pod_selector is not None:
        result["podSelector"] = {"matchLabels": dict(peer.pod_selector.match_labels)}
    if peer.namespace_selector is not None:
        result["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector.match_labels)}
    if not result:
        # The API server refuses an empty peer, and would then refuse the whole policy.
        raise ValueError(f"{field}[{index}] needs a podSelector, a namespaceSelector or both")
    return result


def network_policy(
    identity: InstanceIdentity, spec: MqttInstanceSpec, operator_namespace: str | None
) -> dict[str, Any] | None:
    """The policy, or None when spec.networkPolicy is off (the caller then deletes a policy left from before).

    The operator's Pod carries the chart's labels, not ours, so it is let in by its namespace.
    """
    if not spec.network_policy.enabled:
        return None
    # A peer with only a podSelector is matched in the policy's own namespace.
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}}},
        {"podSelector": {"matchLabels": {CLIENT_LABEL: identity.name}}},
    ]
    peers += [_peer(i, peer) for i, peer in enumerate(spec.network_policy.allow_from)]
    if operator_namespace is not None:
        peers.append({"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: operator_namespace}}})
    ports = [{"protocol": "TCP", "port": listener.port} for listener in spec.listeners.enabled().values()]
    ingress: list[dict[str, Any]] = [{"from": peers, "ports": ports}]
    exporter = spec.monitoring.exporter
    if exporter.enabled:
        # The metrics port: the same peers (the operator's namespace among them), and the scrapers
        # named in scrapeFrom (Prometheus' namespace), which reach only this port.
        scrapers = peers + [
            _peer(i, peer, "spec.monitoring.exporter.scrapeFrom")
            for i, peer in enumerate(exporter.scrape_from)
        ]
        ingress.append({"from": scrapers, "ports": [{"protocol": "TCP", "port": exporter.port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": identity.metadata(network_policy_name(identity.name), BROKER_COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": identity.selector_labels(BROKER_COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
