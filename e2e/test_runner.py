"""The local runner itself, without the operator: StatefulSets scale, roll and stop; a Deployment whose
image has no local program fails its Pod with the reason, and recovers when the image is fixed."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from e2e.helpers import connects
from testenv.cluster import Namespace, wait_for

MOSQUITTO = "eclipse-mosquitto:2.0.22"


# A real cluster has its own controllers and kubelet; these tests read the runner's files and PIDs.
pytestmark = pytest.mark.local_only("checks the local runner's own behaviour (its Pods, PIDs, image table)")


def _broker_pod_template(app: str, image: str = MOSQUITTO) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "securityContext": {"runAsUser": 1883, "runAsGroup": 1883, "fsGroup": 1883},
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "mosquitto",
                    "image": image,
                    "command": ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"],
                    "ports": [{"name": "mqtt", "containerPort": 1883}],
                    "readinessProbe": {"tcpSocket": {"port": "mqtt"}, "periodSeconds": 1},
                    "volumeMounts": [{"name": "config", "mountPath": "/mosquitto/config", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "config", "configMap": {"name": "anonymous"}}],
        },
    }


def _config(ns: Namespace) -> None:
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "anonymous"},
            "data": {"mosquitto.conf": "listener 1883\nallow_anonymous true\n"},
        }
    )


def _pods(ns: Namespace, app: str) -> list[dict[str, Any]]:
    out = ns.cp.kubectl("get", "pods", "-n", ns.namespace, "-l", f"app={app}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def _settled(ns: Namespace, kind: str, name: str, **expected: Any) -> dict[str, Any] | None:
    obj = ns.get(kind, name) or {}
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj.get("metadata", {}).get("generation"):
        return None
    return status if all(status.get(k, 0) == v for k, v in expected.items()) else None


def test_a_statefulset_scales_rolls_on_a_new_template_and_stops(cluster: Any, namespace: Namespace) -> None:
    _config(namespace)
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 2,
            "serviceName": "echo",
            "selector": {"matchLabels": {"app": "echo"}},
            "template": _broker_pod_template("echo"),
        },
    }
    namespace.apply(sts)
    wait_for(
        "2 ready replicas", lambda: _settled(namespace, "statefulset", "echo", readyReplicas=2), timeout=60
    )
    first = {p["metadata"]["name"]: p for p in _pods(namespace, "echo")}
    assert sorted(first) == ["echo-0", "echo-1"]
    addresses = {p["status"]["podIP"] for p in first.values()}
    assert len(addresses) == 2
    for address in addresses:
        assert connects(address, 1883, None, None)

    namespace.patch(
        "statefulset", "echo", {"spec": {"template": {"metadata": {"annotations": {"roll": "2"}}}}}
    )
    rolled = wait_for(
        "both Pods replaced by the new template",
        lambda: (
            (s := _settled(namespace, "statefulset", "echo", readyReplicas=2, updatedReplicas=2))
            and s["currentRevision"] == s["updateRevision"]
            and s
        ),
        timeout=90,
    )
    assert rolled["currentReplicas"] == 2
    second = {p["metadata"]["name"]: p for p in _pods(namespace, "echo")}
    assert all(second[n]["metadata"]["uid"] != first[n]["metadata"]["uid"] for n in first)
    pids = [cluster.pid(namespace.namespace, name, "mosquitto") for name in second]

    namespace.patch("statefulset", "echo", {"spec": {"replicas": 0}})
    wait_for(
        "no replica left",
        lambda: _settled(namespace, "statefulset", "echo", replicas=0) is not None,
        timeout=60,
    )
    wait_for("the Pods gone", lambda: not _pods(namespace, "echo"), timeout=60)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_pod_whose_image_has_no_local_program_fails_until_the_image_is_fixed(
    cluster: Any, namespace: Namespace
) -> None:
    _config(namespace)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": _broker_pod_template("web", image="nginx:1.27"),
        },
    }
    namespace.apply(deployment)
    failed = wait_for(
        "the Pod failed",
        lambda: next(
            (p for p in _pods(namespace, "web") if p.get("status", {}).get("phase") == "Failed"), None
        ),
        timeout=60,
    )
    assert failed["status"]["reason"] == "UnknownImage"
    assert "nginx:1.27" in failed["status"]["message"]
    waiting = failed["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"

    deployment["spec"]["template"] = _broker_pod_template("web")
    namespace.apply(deployment)
    status = wait_for(
        "the fixed Deployment available",
        lambda: _settled(namespace, "deployment", "web", availableReplicas=1, updatedReplicas=1, replicas=1),
        timeout=60,
    )
    assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"
    (running,) = _pods(namespace, "web")
    assert running["metadata"]["uid"] != failed["metadata"]["uid"]
    assert connects(running["status"]["podIP"], 1883, None, None)
