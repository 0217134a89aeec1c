"""What the user gets is what runs: the operator under test is the chart's Pod, running the image built
from our Dockerfile as the chart's ServiceAccount with only the chart's permissions; every Pod it makes
is admitted under the restricted Pod Security level; a broker's data is on a PersistentVolume the
node's default StorageClass provisioned; Pods find each other by cluster DNS names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.helpers import MQKC, apply_examples, wait_ready_instance
from localnode.node import images, resolve
from localnode.system import OPERATOR_NAMESPACE, RELEASE
from testenv.cluster import Namespace, wait_for

pytestmark = pytest.mark.node_only("checks the node of make dev: its images, its chart release, its DNS")

SERVICE_ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"


def _operator_pods(cluster: Any) -> list[dict[str, Any]]:
    found = cluster.kubectl(
        "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
    )
    pods: list[dict[str, Any]] = json.loads(found.stdout)["items"]
    return pods


def _can(cluster: Any, verb: str, resource: str, *where: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", verb, resource, f"--as={SERVICE_ACCOUNT}", *where, check=False)
    return proc.stdout.strip() == "yes"


def test_the_operator_is_the_charts_pod_running_the_built_image(cluster: Any) -> None:
    pods = _operator_pods(cluster)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    operator = pods[0]
    assert operator["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert operator["spec"]["serviceAccountName"] == RELEASE
    container = operator["spec"]["containers"][0]
    assert container["image"] == images()["mqtt-operator"]["ref"]
    status = operator["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["state"].get("running"), status
    # The kubelet ran it from the node's containerd, where `make images` imported it.
    assert status["imageID"].startswith(("sha256:", "localhost/mqtt-operator@sha256:")), status["imageID"]


@pytest.mark.parametrize(
    ("verb", "resource", "where"),
    [
        ("create", "statefulsets.apps", ("-n", "default")),
        ("patch", "mqttinstances.mqtt-operator.io/status", ("-n", "default")),
        ("create", "events", ("-n", "default")),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", ()),
    ],
)
def test_the_operator_has_what_the_chart_grants(
    cluster: Any, verb: str, resource: str, where: tuple[str]
) -> None:
    assert _can(cluster, verb, resource, *where)


@pytest.mark.parametrize(
    ("verb", "resource", "where"),
    [
        ("create", "pods", ("-n", "default")),
        ("create", "pods/exec", ("-n", "default")),
        ("delete", "nodes", ()),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", ()),
        ("impersonate", "serviceaccounts", ("-n", "default")),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", ()),
        ("create", "mqttinstances.mqtt-operator.io", ("-n", "default")),
    ],
)
def test_the_operator_has_nothing_the_chart_does_not_grant(
    cluster: Any, verb: str, resource: str, where: tuple[str]
) -> None:
    assert not _can(cluster, verb, resource, *where)


def test_every_pod_the_operator_makes_is_admitted_as_restricted(cluster: Any, namespace: Namespace) -> None:
    ns = namespace.namespace
    # Pod Security admission refuses any Pod of this namespace below the restricted level (conftest.py
    # labels every test namespace so).
    labels = (namespace.get("namespace", ns) or {})["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    apply_examples(namespace, "mqttinstance", "kafkaconnector")
    wait_ready_instance(namespace, timeout=120)
    namespace.wait_condition(MQKC, "vehicle-state-to-kafka", timeout=180)
    workers = wait_for(
        "the connector's worker Pod Ready",
        lambda: (
            (namespace.get("statefulset", "vehicle-state-to-kafka-bridge") or {}).get("status") or {}
        ).get("readyReplicas"),
        timeout=120,
    )
    assert workers >= 1
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    refused = [e["message"] for e in events if e.get("reason") == "FailedCreate"]
    assert refused == []


def test_a_brokers_data_is_on_a_provisioned_volume_and_dns_names_it(
    cluster: Any, namespace: Namespace
) -> None:
    ns = namespace.namespace
    apply_examples(namespace, "mqttinstance")
    broker = wait_ready_instance(namespace, timeout=120)
    # The example names no image: the chart's brokerImage, the image built from images/mosquitto.
    assert {c["image"] for c in broker["spec"]["containers"]} == {images()["mosquitto"]["ref"]}
    claim = wait_for("the claim Bound", lambda: _bound(namespace.get("pvc", "data-devices-0")), timeout=60)
    assert claim["spec"]["storageClassName"] == "local-path"
    volume = namespace.get("pv", claim["spec"]["volumeName"]) or {}
    assert volume["spec"]["storageClassName"] == "local-path"
    # Cluster DNS (CoreDNS in kube-system) names the broker's Service by its ClusterIP.
    service = namespace.get("service", "devices") or {}
    dns = cluster.dns_server()
    assert resolve(dns, f"devices.{ns}.svc.cluster.local") == service["spec"]["clusterIP"]


def _bound(claim: dict[str, Any] | None) -> dict[str, Any] | None:
    return claim if ((claim or {}).get("status") or {}).get("phase") == "Bound" else None
