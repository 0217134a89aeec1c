"""The workers' StatefulSet (`<workload>`, worker_names.py): hardened Pods running the bridge program
(`mqtt-operator bridge`) with stable names, the same for every integration kind.

A StatefulSet, not a Deployment: a worker's MQTT client id is `<prefix>-<Pod name>`, and only a
StatefulSet Pod keeps its name across restarts, so a restarted worker resumes its persistent session
(and the messages the broker queued for it) instead of leaving an orphan session behind. It also never
runs two Pods of one ordinal at once, which `ordered: true` (one worker) relies on during a rollout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mqtt_operator.bridge.config import MQTT_PASSWORD_ENV
from mqtt_operator.resources.broker_config import CONFIG_HASH_ANNOTATION
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_config import CONFIG_DIR, CONFIG_PATH, METRICS_PORT
from mqtt_operator.resources.worker_names import WORKER_COMPONENT, WorkerNames

WORKER_UID = 65532  # the image's mqtt-operator user
POD_NAME_ENV = "POD_NAME"
CONTAINER = "bridge"
CONFIG_VOLUME = "config"
TMP_VOLUME = "tmp"
# The worker drains within BridgeConfig.drain_seconds (20 s) of SIGTERM; this leaves it room.
TERMINATION_GRACE_SECONDS = 30


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


@dataclass(frozen=True)
class SecretMount:
    volume: str
    secret: str
    mount_path: str


@dataclass(frozen=True)
class WorkerPod:
    """What differs between the kinds that run bridge workers; the rest of the Pod is the same for all."""

    names: WorkerNames
    replicas: int
    env: tuple[dict[str, Any], ...] = ()  # beyond POD_NAME and MQTT_PASSWORD: e.g. Kafka SASL from Secrets
    secret_mounts: tuple[SecretMount, ...] = ()
    resources: dict[str, Any] | None = None


def _env(pod: WorkerPod, authorization: bool) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The worker's client id is `<clientIdPrefix>-$POD_NAME`.
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if authorization:
        env.append(secret_env(MQTT_PASSWORD_ENV, pod.names.credentials, "password"))
    return env + [dict(item) for item in pod.env]


def _volumes(pod: WorkerPod) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": pod.names.workload}},
        # The root filesystem is read-only; Python libraries may still want a scratch /tmp.
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    # 0440 with fsGroup: readable by the worker's group, not by every user in the Pod.
    for mount in pod.secret_mounts:
        volumes.append({"name": mount.volume, "secret": {"secretName": mount.secret, "defaultMode": 0o440}})
    return volumes


def _mounts(pod: WorkerPod) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir, not the host's /tmp
    ]
    for mount in pod.secret_mounts:
        mounts.append({"name": mount.volume, "mountPath": mount.mount_path, "readOnly": True})
    return mounts


def _http_probe(path: str, *, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _container(pod: WorkerPod, image: str, authorization: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["mqtt-operator"],
        "args": ["bridge", "--config", CONFIG_PATH],
        "env": _env(pod, authorization),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        # /healthz: the process works (a worker waiting for Kafka is alive, not ready); /readyz: it
        # is connected on both sides and takes messages.
        "startupProbe": _http_probe("/healthz", period=2, failures=30),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "readinessProbe": _http_probe("/readyz", period=5, failures=2),
        "volumeMounts": _mounts(pod),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    if pod.resources:
        container["resources"] = copy.deepcopy(pod.resources)
    return container


def worker_statefulset(
    identity: OwnerIdentity, pod: WorkerPod, *, image: str, config_hash: str, authorization: bool
) -> dict[str, Any]:
    """`config_hash` (broker_config.config_hash of the ConfigMap's data) rolls the workers on a new config;
    `authorization` says whether the instance enforces it, i.e. whether the worker logs in with the
    integration's own account (MQTT_PASSWORD from its generated Secret)."""
    pod.names.check()
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": identity.metadata(pod.names.workload, WORKER_COMPONENT),
        "spec": {
            "replicas": pod.replicas,
            "selector": {"matchLabels": identity.selector_labels(WORKER_COMPONENT)},
            # Workers are independent: start and stop them all at once, not one after the other.
            "podManagementPolicy": "Parallel",
            "template": {
                "metadata": {
                    # No version label: an operator upgrade must not restart every worker.
                    "labels": identity.labels(WORKER_COMPONENT, include_version=False),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
                },
                "spec": {
                    "securityContext": {
                        "runAsUser": WORKER_UID,
                        "runAsGroup": WORKER_UID,
                        "fsGroup": WORKER_UID,
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    # The workers never talk to the Kubernetes API, and need no Service variables.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "containers": [_container(pod, image, authorization)],
                    "volumes": _volumes(pod),
                },
            },
        },
    }
