"""The broker StatefulSet (`<name>`): one hardened Mosquitto Pod, its data volume and its first-start init."""

from __future__ import annotations

import copy
from typing import Any

from mqtt_operator import __version__
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME, PASSWORD_KEY, admin_secret_name
from mqtt_operator.resources.broker_config import CONFIG_HASH_ANNOTATION, config_map_name
from mqtt_operator.resources.identity import BROKER_COMPONENT, InstanceIdentity
from mqtt_operator.resources.mosquitto_conf import EXPORTER_CLIENT_ID, IN_POD_PATHS, BrokerPaths
from mqtt_operator.resources.services import headless_service_name

DEFAULT_IMAGE = "eclipse-mosquitto:2.0.22"
# The operator's own image runs the exporter (`mqtt-operator broker-exporter`, broker/exporter.py); the
# operator passes its worker image (--worker-image), the chart's exporterImage or --exporter-image
# override it. This default only applies to a spec built without the operator.
DEFAULT_EXPORTER_IMAGE = f"mqtt-operator:{__version__}"
EXPORTER_CONTAINER = "exporter"
METRICS_PORT_NAME = "metrics"
BROKER_UID = 1883  # the mosquitto user of the eclipse-mosquitto image
DATA_VOLUME = "data"
CONFIG_VOLUME = "config"

# Creates the dynamic-security file on the first start only: afterwards the file holds every client and
# role the operator added, and must never be reset. `mosquitto_ctrl dynsec init` itself exits 0 on an
# existing file (2.0.11), so the test is explicit. The password comes from the environment, so it is in
# neither the manifest nor the script.
_DYNSEC_INIT_SCRIPT = """set -eu
if [ -e "$DYNSEC_FILE" ]; then
  echo "dynamic-security file $DYNSEC_FILE exists: kept"
else
  mosquitto_ctrl dynsec init "$DYNSEC_FILE" "$ADMIN_USERNAME" "$ADMIN_PASSWORD"
fi
"""


def broker_image(spec: MqttInstanceSpec) -> str:
    return spec.image or DEFAULT_IMAGE


def exporter_image(spec: MqttInstanceSpec) -> str:
    return spec.monitoring.exporter.image or DEFAULT_EXPORTER_IMAGE


def exporter_listener_port(spec: MqttInstanceSpec) -> int:
    """The plain-TCP listener the exporter reads $SYS from on localhost (it speaks neither TLS to a
    server it cannot verify nor websockets)."""
    exporter = spec.monitoring.exporter
    listeners = spec.listeners.enabled()
    if any(listener.port == exporter.port for listener in listeners.values()):
        raise ValueError(
            f"spec.monitoring.exporter.port {exporter.port} is a listener's port: choose another port"
        )
    mqtt = listeners.get("mqtt")
    if mqtt is None or mqtt.tls is not None:
        raise ValueError(
            "spec.monitoring.exporter needs spec.listeners.mqtt without tls: the exporter reads the "
            "broker's $SYS topics over plain MQTT on localhost"
        )
    return mqtt.port


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _tcp_probe(
    port_name: str, *, initial_delay: int, period: int, timeout: int, failures: int
) -> dict[str, Any]:
    return {
        "tcpSocket": {"port": port_name},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _tls_volume(listener: str) -> str:
    return f"tls-{listener}"


def _volumes(identity: InstanceIdentity, spec: MqttInstanceSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(identity.name)}},
    ]
    for name, listener in spec.listeners.enabled().items():
        if listener.tls is not None:
            # 0440 with fsGroup: readable by the broker's group, not by every user in the Pod.
            volumes.append(
                {
                    "name": _tls_volume(name),
                    "secret": {"secretName": listener.tls.secret_name, "defaultMode": 0o440},
                }
            )
    if not spec.persistence.enabled:
        volumes.append({"name": DATA_VOLUME, "emptyDir": {}})
    return volumes


def _broker_mounts(spec: MqttInstanceSpec, paths: BrokerPaths) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "mountPath": paths.config_dir, "readOnly": True},
        {"name": DATA_VOLUME, "mountPath": paths.data_dir},
    ]
    for name, listener in spec.listeners.enabled().items():
        if listener.tls is not None:
            mounts.append({"name": _tls_volume(name), "mountPath": paths.tls_mount(name), "readOnly": True})
    return mounts


def _init_container(identity: InstanceIdentity, spec: MqttInstanceSpec, paths: BrokerPaths) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "dynsec-init",
        "image": broker_image(spec),
        "command": ["sh", "-c", _DYNSEC_INIT_SCRIPT],
        "env": [
            {"name": "DYNSEC_FILE", "value": paths.dynsec_file},
            {"name": "ADMIN_USERNAME", "value": ADMIN_USERNAME},
            {
                "name": "ADMIN_PASSWORD",
                "valueFrom": {
                    "secretKeyRef": {"name": admin_secret_name(identity.name), "key": PASSWORD_KEY}
                },
            },
        ],
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": paths.data_dir}],
        "securityContext": _container_security_context(),
    }
    # The same resources as the broker: a namespace quota may demand them of every container.
    if spec.resources:
        container["resources"] = copy.deepcopy(spec.resources)
    return container


def _broker_container(spec: MqttInstanceSpec, paths: BrokerPaths) -> dict[str, Any]:
    listeners = spec.listeners.enabled()
    first = next(iter(listeners))
    container: dict[str, Any] = {
        "name": "mosquitto",
        "image": broker_image(spec),
        # Not the image's entrypoint: it chowns /mosquitto as root, which this non-root Pod cannot do.
        "command": ["mosquitto", "-c", paths.config_file],
        "ports": [
            {"name": name, "containerPort": lst.port, "protocol": "TCP"} for name, lst in listeners.items()
        ],
        # The startup probe gives a large persistence file time to load; after it, liveness restarts a
        # broker that stopped accepting for a minute, and readiness takes it out of the Service sooner.
        "startupProbe": _tcp_probe(first, initial_delay=1, period=2, timeout=2, failures=150),
        "livenessProbe": _tcp_probe(first, initial_delay=0, period=10, timeout=5, failures=6),
        "readinessProbe": _tcp_probe(first, initial_delay=0, period=5, timeout=3, failures=3),
        "volumeMounts": _broker_mounts(spec, paths),
        "securityContext": _container_security_context(),
    }
    if spec.resources:
        container["resources"] = copy.deepcopy(spec.resources)
    return container


def _exporter_container(identity: InstanceIdentity, spec: MqttInstanceSpec) -> dict[str, Any]:
    """`mqtt-operator broker-exporter` reading $SYS/broker/# on localhost; it serves /metrics only while
    connected and with figures, so the readiness probe on the metrics port says they are flowing."""
    exporter = spec.monitoring.exporter
    env: list[dict[str, Any]] = [
        {"name": "BROKER_ENDPOINT", "value": f"tcp://127.0.0.1:{exporter_listener_port(spec)}"},
        {"name": "BIND_ADDRESS", "value": f":{exporter.port}"},
        {"name": "MQTT_CLIENT_ID", "value": EXPORTER_CLIENT_ID},
    ]
    if spec.authorization.enabled:
        # The admin account may subscribe to $SYS/#; its password reaches the exporter only through
        # the environment, from the Secret (never in the manifest's args).
        env += [
            {"name": "MQTT_USER", "value": ADMIN_USERNAME},
            {
                "name": "MQTT_PASS",
                "valueFrom": {
                    "secretKeyRef": {"name": admin_secret_name(identity.name), "key": PASSWORD_KEY}
                },
            },
        ]
    container: dict[str, Any] = {
        "name": EXPORTER_CONTAINER,
        "image": exporter_image(spec),
        "args": ["broker-exporter"],
        "env": env,
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": exporter.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/metrics", "port": METRICS_PORT_NAME},
            "initialDelaySeconds": 0,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": _container_security_context(),
    }
    if exporter.resources:
        container["resources"] = copy.deepcopy(exporter.resources)
    return container


def _pod_spec(identity: InstanceIdentity, spec: MqttInstanceSpec, paths: BrokerPaths) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "securityContext": {
            "runAsUser": BROKER_UID,
            "runAsGroup": BROKER_UID,
            "fsGroup": BROKER_UID,
            # Only a fresh or foreign volume is re-owned, not every file on every start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The broker never talks to the Kubernetes API, and does not need a Service per variable.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [_broker_container(spec, paths)],
        "volumes": _volumes(identity, spec),
    }
    if spec.monitoring.exporter.enabled:
        pod["containers"].append(_exporter_container(identity, spec))
    if spec.authorization.enabled:
        pod["initContainers"] = [_init_container(identity, spec, paths)]
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = copy.deepcopy(spec.affinity)
    return pod


def _volume_claim_template(identity: InstanceIdentity, spec: MqttInstanceSpec) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.persistence.size}},
    }
    if spec.persistence.storage_class_name:
        claim["storageClassName"] = spec.persistence.storage_class_name
    # Selector labels only: volumeClaimTemplates cannot be updated, so the version label (which moves
    # with every operator release) would make the StatefulSet unpatchable after an upgrade.
    return {
        "metadata": {"name": DATA_VOLUME, "labels": identity.selector_labels(BROKER_COMPONENT)},
        "spec": claim,
    }


def statefulset(
    identity: InstanceIdentity, spec: MqttInstanceSpec, config_hash: str, paths: BrokerPaths = IN_POD_PATHS
) -> dict[str, Any]:
    """`config_hash` (broker_config.config_hash) goes on the Pod template, so new config rolls the Pod."""
    if not spec.listeners.enabled():
        raise ValueError("spec.listeners needs at least one listener (mqtt, mqtts or websocket)")
    retention = "Retain" if spec.deletion_policy == "retain" else "Delete"
    sts_spec: dict[str, Any] = {
        "replicas": spec.replicas,
        "serviceName": headless_service_name(identity.name),
        "selector": {"matchLabels": identity.selector_labels(BROKER_COMPONENT)},
        # Scaling to 0 stops the broker but keeps its data, whatever the deletion policy.
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": retention, "whenScaled": "Retain"},
        "template": {
            "metadata": {
                # No version label: an operator upgrade must not change the template and restart the broker.
                "labels": identity.labels(BROKER_COMPONENT, spec.pod_labels, include_version=False),
                # Ours last, so a pod annotation of the same name cannot pin the hash.
                "annotations": {**spec.pod_annotations, CONFIG_HASH_ANNOTATION: config_hash},
            },
            "spec": _pod_spec(identity, spec, paths),
        },
    }
    if spec.persistence.enabled:
        sts_spec["volumeClaimTemplates"] = [_volume_claim_template(identity, spec)]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": identity.metadata(identity.name, BROKER_COMPONENT),
        "spec": sts_spec,
    }
