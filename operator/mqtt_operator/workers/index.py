"""What the operator knows of the worker objects in the cluster (the workers' StatefulSets and running
Pods), read from kopf's indexes instead of a GET on every reconcile and every counters tick. Pure.

handlers/integrations.py registers the two index functions below; a reconcile reads them through
`WorkerIndex`. An index follows the cluster by its watch, so it may be a moment behind the operator's
own last write: the replicas the operator itself applied last are remembered beside it
(`Integration.previous_replicas`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from mqtt_operator.resources.meta import MANAGED_BY
from mqtt_operator.resources.worker_names import WORKER_COMPONENT

# Only the operator's worker objects are watched and indexed.
WORKER_LABELS = {"app.kubernetes.io/component": WORKER_COMPONENT, "app.kubernetes.io/managed-by": MANAGED_BY}
KIND_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"


@dataclass(frozen=True)
class RunningPod:
    name: str
    ip: str


def statefulset_entry(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    """Index function: (namespace, name) -> the StatefulSet's spec.replicas, status and generation."""
    return {
        (namespace, name): {
            "metadata": {"name": name, "generation": body.get("metadata", {}).get("generation")},
            "spec": {"replicas": (body.get("spec") or {}).get("replicas")},
            "status": dict(body.get("status") or {}),
        }
    }


def pod_entry(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    """Index function: (namespace, owner kind label, owner name label) -> the Pod, while it runs with an
    IP and is not being deleted (the workers whose /metrics and /retire can be reached)."""
    labels = body.get("metadata", {}).get("labels") or {}
    status = body.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return {}
    if body.get("metadata", {}).get("deletionTimestamp"):
        return {}
    return {
        (namespace, labels.get(KIND_LABEL), labels.get(INSTANCE_LABEL)): RunningPod(name, status["podIP"])
    }


class WorkerIndex:
    """The two indexes as a reconcile reads them (kopf hands them to every handler by name)."""

    def __init__(
        self, statefulsets: Mapping[Any, Collection[Any]], pods: Mapping[Any, Collection[RunningPod]]
    ) -> None:
        self._statefulsets = statefulsets
        self._pods = pods

    @classmethod
    def of(cls, indexes: Mapping[str, Any]) -> WorkerIndex:
        return cls(indexes["worker_statefulsets"], indexes["worker_pods"])

    def statefulset(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = list(self._statefulsets.get((namespace, name), ()))
        return found[0] if found else None

    def running_pods(self, namespace: str, selector: Mapping[str, str]) -> dict[str, str]:
        """Pod name -> IP of the running Pods of the owner `selector` names."""
        key = (namespace, selector.get(KIND_LABEL), selector.get(INSTANCE_LABEL))
        return {pod.name: pod.ip for pod in self._pods.get(key, ())}
