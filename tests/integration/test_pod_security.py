"""Every Pod this project makes is admitted under the `restricted` Pod Security level, by the real
kube-apiserver's PodSecurity admission (built in, on by default): the chart's operator Pod, each broker
Pod the operator builds (init container and exporter sidecar included), each worker kind's Pod, and the
example function the e2e tests run beside them.

No kubelet runs here, so the Pods are created with `--dry-run=server`: admission runs in full, nothing
is stored. The Pods come from the builders the operator calls (pure functions) and from `helm template`,
turned into Pods as the StatefulSet and Deployment controllers would (a claim per volumeClaimTemplate).
Their workloads are sent too: PodSecurity only warns on those, and a warning fails the test as well.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.test_chart import (
    CLUSTER_WIDE,
    MONITORING_API,
    MONITORING_ON,
    helm_environment,
    only,
    rendered,
)

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.api.function import FunctionTriggerSpec
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.api.kinds import FUNCTION_TRIGGER, KAFKA_CONNECTOR, REPLICATION_TASK
from mqtt_operator.api.replication import ReplicationTaskSpec
from mqtt_operator.controllers.instance import with_operator_images
from mqtt_operator.resources.connector_config import connector_pod
from mqtt_operator.resources.identity import InstanceIdentity, OwnerIdentity
from mqtt_operator.resources.instance import build_instance_objects
from mqtt_operator.resources.replication_config import replication_pod
from mqtt_operator.resources.statefulset import BROKER_UID
from mqtt_operator.resources.trigger_config import trigger_pod
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.resources.worker_statefulset import WORKER_UID, WorkerPod, worker_statefulset
from testenv.cluster import restricted_namespace
from testenv.kube import ControlPlane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
FUNCTION_MANIFEST = REPO / "localnode" / "manifests" / "function.yaml"
# What the chart gives the operator: its own image runs the workers and the broker exporter.
OPERATOR_IMAGE = "registry.example/mqtt-operator:0.1.0"
BROKER_IMAGE = "registry.example/mosquitto:2.0.21"

Manifest = dict[str, Any]


def example_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())["spec"]
    return spec


# --- the workloads -------------------------------------------------------------------------------------


def chart_deployment(*values: str) -> Callable[[Path], Manifest]:
    def build(helm_home: Path) -> Manifest:
        return only(rendered(helm_environment(helm_home), *values), "Deployment")

    return build


def broker(spec: dict[str, Any]) -> Callable[[Path], Manifest]:
    """The broker StatefulSet as the operator builds it (controllers/instance.py), images defaulted."""

    def build(_: Path) -> Manifest:
        typed = with_operator_images(MqttInstanceSpec.model_validate(spec), BROKER_IMAGE, OPERATOR_IMAGE)
        objects = build_instance_objects(
            InstanceIdentity("devices", "ns", "uid-1"), typed, admin_password=None
        )
        return next(o for o in objects if o["kind"] == "StatefulSet")

    return build


def workers(
    kind: str, pod: Callable[[WorkerNames], WorkerPod], authorization: bool = True
) -> Callable[[Path], Manifest]:
    """A worker kind's StatefulSet as controllers/integration.py builds it."""

    def build(_: Path) -> Manifest:
        identity = OwnerIdentity("bridge", "ns", "uid-2", "mqtt-operator.io/v1alpha1", kind)
        return worker_statefulset(
            identity,
            pod(WorkerNames(kind, "ns", "bridge")),
            image=OPERATOR_IMAGE,
            config_hash="h",
            authorization=authorization,
        )

    return build


def function_deployment(_: Path) -> Manifest:
    """The example function the e2e tests install into their (restricted) namespaces."""
    (deployment,) = [
        m for m in yaml.safe_load_all(FUNCTION_MANIFEST.read_text()) if m and m["kind"] == "Deployment"
    ]
    result: Manifest = deployment
    return result


TLS = {"mqtts": {"port": 8883, "tls": {"secretName": "devices-tls", "requireClientCertificate": True}}}
KAFKA_SECURED = {
    "bootstrapServers": "kafka:9093",
    "tls": {"caSecretRef": {"name": "kafka-ca"}, "certSecretRef": {"name": "kafka-client"}},
    "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-user"}},
}
RMQ = {"endpoints": "rmq:8081", "credentialsSecretRef": {"name": "rmq-keys"}}

WORKLOADS: dict[str, Callable[[Path], Manifest]] = {
    "chart-default": chart_deployment(),
    "chart-monitoring": chart_deployment(
        *MONITORING_API,
        *MONITORING_ON,
        "--set",
        "monitoring.podMonitor.brokerExporter.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
    ),
    "chart-cluster-wide-images": chart_deployment(
        *CLUSTER_WIDE,
        "--set",
        f"brokerImage={BROKER_IMAGE}",
        "--set",
        f"exporterImage={OPERATOR_IMAGE}",
        "--set",
        "imagePullSecrets[0].name=pull",
        "--set",
        "logLevel=debug",
    ),
    "broker-default-spec": broker({}),
    "broker-example": broker(example_spec("mqttinstance")),
    "broker-no-persistence-no-authorization": broker(
        {"persistence": {"enabled": False}, "authorization": {"enabled": False}}
    ),
    "broker-tls-and-websocket": broker(
        {"listeners": {**TLS, "websocket": {"port": 8080}}, "persistence": {"enabled": True, "size": "2Gi"}}
    ),
    "broker-tls-only-no-persistence": broker({"listeners": TLS, "persistence": {"enabled": False}}),
    "broker-exporter": broker(
        {
            "monitoring": {"exporter": {"enabled": True, "resources": {"limits": {"memory": "64Mi"}}}},
            "resources": {"requests": {"cpu": "50m"}},
            "imagePullSecrets": [{"name": "pull"}],
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"operator": "Exists"}],
            "podAnnotations": {"a": "b"},
            "podLabels": {"team": "iot"},
        }
    ),
    "broker-exporter-no-authorization": broker(
        {"monitoring": {"exporter": {"enabled": True}}, "authorization": {"enabled": False}}
    ),
    "kafkaconnector-example": workers(
        KAFKA_CONNECTOR.kind,
        lambda names: connector_pod(names, KafkaConnectorSpec.model_validate(example_spec("kafkaconnector"))),
    ),
    "kafkaconnector-tls-sasl-downlink": workers(
        KAFKA_CONNECTOR.kind,
        lambda names: connector_pod(
            names,
            KafkaConnectorSpec.model_validate(
                {
                    "instanceRef": {"name": "devices"},
                    "direction": "kafkaToMqtt",
                    "kafka": KAFKA_SECURED,
                    "kafkaToMqtt": {"topic": "cmd"},
                    "resources": {"limits": {"memory": "128Mi"}},
                }
            ),
        ),
    ),
    "kafkaconnector-no-authorization": workers(
        KAFKA_CONNECTOR.kind,
        lambda names: connector_pod(names, KafkaConnectorSpec.model_validate(example_spec("kafkaconnector"))),
        authorization=False,
    ),
    "replicationtask-example": workers(
        REPLICATION_TASK.kind,
        lambda names: replication_pod(
            names, ReplicationTaskSpec.model_validate(example_spec("replicationtask"))
        ),
    ),
    "replicationtask-credentials-downlink": workers(
        REPLICATION_TASK.kind,
        lambda names: replication_pod(
            names,
            ReplicationTaskSpec.model_validate(
                {
                    "source": {"rocketmq": {**RMQ, "topic": "cmd", "consumerGroup": "g", "tls": True}},
                    "target": {"mqtt": {"instanceRef": {"name": "devices"}, "topic": "piles/{key}/cmd"}},
                }
            ),
        ),
    ),
    "functiontrigger-example": workers(
        FUNCTION_TRIGGER.kind,
        lambda names: trigger_pod(names, FunctionTriggerSpec.model_validate(example_spec("functiontrigger"))),
    ),
    "example-function": function_deployment,
}


# --- the admission ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restricted(control_plane: ControlPlane) -> str:
    """A namespace enforcing (and warning and auditing at) the latest `restricted` level."""
    name = f"restricted-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "-f", "-", input=json.dumps(restricted_namespace(name)))
    return name


def pods_of(workload: Manifest) -> list[Manifest]:
    """The Pod a controller makes from `workload`: its template, with a claim per volumeClaimTemplate."""
    template = workload["spec"]["template"]
    name = f"{workload['metadata']['name']}-0"
    spec = copy.deepcopy(template["spec"])
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        volume = claim["metadata"]["name"]
        spec.setdefault("volumes", []).append(
            {"name": volume, "persistentVolumeClaim": {"claimName": f"{volume}-{name}"}}
        )
    metadata = {**copy.deepcopy(template.get("metadata") or {}), "name": name}
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}]


def dry_run_create(control_plane: ControlPlane, namespace: str, manifest: Manifest) -> str:
    """Create `manifest` with --dry-run=server; the API server's refusal or warnings, "" when clean."""
    body = copy.deepcopy(manifest)
    body["metadata"].pop("namespace", None)
    proc = control_plane.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(body), check=False
    )
    if proc.returncode != 0:
        return proc.stderr.strip() or f"exit {proc.returncode}"
    return "\n".join(line for line in proc.stderr.splitlines() if "Warning" in line or "violate" in line)


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_pod_is_admitted_as_restricted(
    control_plane: ControlPlane, restricted: str, tmp_path: Path, name: str
) -> None:
    workload = WORKLOADS[name](tmp_path)
    (pod,) = pods_of(workload)
    containers = [c["name"] for key in ("initContainers", "containers") for c in pod["spec"].get(key, [])]
    refused = {
        f"{manifest['kind']} {manifest['metadata']['name']} ({', '.join(containers)})": answer
        for manifest in (workload, pod)
        if (answer := dry_run_create(control_plane, restricted, manifest))
    }
    assert refused == {}


def test_the_broker_cases_cover_the_init_container_and_the_exporter(tmp_path: Path) -> None:
    """The cases above are only as good as the containers they hold."""
    names = {
        tuple(
            c["name"]
            for key in ("initContainers", "containers")
            for c in pods_of(build(tmp_path))[0]["spec"].get(key, [])
        )
        for case, build in WORKLOADS.items()
        if case.startswith("broker-")
    }
    assert {
        ("dynsec-init", "mosquitto"),
        ("mosquitto",),
        ("dynsec-init", "mosquitto", "exporter"),
        ("mosquitto", "exporter"),
    } <= names


def test_the_namespace_really_enforces_restricted(control_plane: ControlPlane, restricted: str) -> None:
    """The negative control: a Pod with no securityContext is refused, naming what it lacks."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "debian:bookworm-slim"}]},
    }
    answer = dry_run_create(control_plane, restricted, pod)
    assert 'violates PodSecurity "restricted:latest"' in answer
    for lacking in ("allowPrivilegeEscalation", "capabilities", "runAsNonRoot", "seccompProfile"):
        assert lacking in answer


# --- the users the images run as -------------------------------------------------------------------------


def image_user(dockerfile: Path) -> int:
    """The uid of the last `USER uid:gid` of a Dockerfile (the final stage's)."""
    users = re.findall(r"^USER (\d+):(\d+)$", dockerfile.read_text(), flags=re.MULTILINE)
    assert users, f"{dockerfile} sets no numeric USER"
    return int(users[-1][0])


def test_the_pods_run_as_the_user_their_image_was_built_for(tmp_path: Path) -> None:
    """runAsNonRoot holds on a real node only with a non-zero uid; the uid the Pod sets must also be the one
    owning the image's files (the broker's data directory, the operator's venv is world-readable)."""
    operator_uid = image_user(REPO / "Dockerfile")
    assert operator_uid == WORKER_UID != 0
    assert image_user(REPO / "images" / "mosquitto" / "Dockerfile") == BROKER_UID != 0
    chart_pod = WORKLOADS["chart-default"](tmp_path)["spec"]["template"]["spec"]
    assert chart_pod["securityContext"]["runAsUser"] == operator_uid
    assert chart_pod["containers"][0]["securityContext"]["runAsUser"] == operator_uid
    broker_pod = WORKLOADS["broker-default-spec"](tmp_path)["spec"]["template"]["spec"]
    assert broker_pod["securityContext"]["runAsUser"] == BROKER_UID
    function_pod = function_deployment(tmp_path)["spec"]["template"]["spec"]
    assert function_pod["securityContext"]["runAsUser"] == image_user(
        REPO / "images" / "function" / "Dockerfile"
    )
