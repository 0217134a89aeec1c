"""The broker's Services: the client Service `<name>`, the headless `<name>-headless`, and their endpoints."""

from __future__ import annotations

from typing import Any

from mqtt_operator.api.instance import Listeners, MqttInstanceSpec
from mqtt_operator.resources.identity import BROKER_COMPONENT, InstanceIdentity


def headless_service_name(instance_name: str) -> str:
    return f"{instance_name}-headless"


def _ports(spec: MqttInstanceSpec) -> list[dict[str, Any]]:
    # Named like the container ports, so the Service follows the Pod if a port number changes.
    return [
        {"name": name, "port": listener.port, "targetPort": name, "protocol": "TCP"}
        for name, listener in spec.listeners.enabled().items()
    ]


def client_service(identity: InstanceIdentity, spec: MqttInstanceSpec) -> dict[str, Any]:
    svc = spec.service
    service_spec: dict[str, Any] = {
        "type": svc.type,
        "selector": identity.selector_labels(BROKER_COMPONENT),
        "ports": _ports(spec),
    }
    # The API server refuses source ranges on any other type.
    if svc.type == "LoadBalancer" and svc.load_balancer_source_ranges:
        service_spec["loadBalancerSourceRanges"] = list(svc.load_balancer_source_ranges)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": identity.metadata(
            identity.name, BROKER_COMPONENT, user_labels=svc.labels, annotations=svc.annotations
        ),
        "spec": service_spec,
    }


def headless_service(identity: InstanceIdentity, spec: MqttInstanceSpec) -> dict[str, Any]:
    """The StatefulSet's governing Service: stable Pod DNS names, also before the Pod is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": identity.metadata(headless_service_name(identity.name), BROKER_COMPONENT),
        "spec": {
            "clusterIP": "None",
            # The operator reaches a starting broker (to restore users) before readiness lets clients in.
            "publishNotReadyAddresses": True,
            "selector": identity.selector_labels(BROKER_COMPONENT),
            "ports": _ports(spec),
        },
    }


def endpoints(name: str, namespace: str, listeners: Listeners) -> dict[str, str]:
    """Listener name -> the address clients use (status.endpoints); WebSocket as a ws:// or wss:// URL."""
    host = f"{name}.{namespace}.svc"
    result: dict[str, str] = {}
    for listener_name, listener in listeners.enabled().items():
        address = f"{host}:{listener.port}"
        if listener_name == "websocket":
            address = f"{'wss' if listener.tls else 'ws'}://{address}"
        result[listener_name] = address
    return result
