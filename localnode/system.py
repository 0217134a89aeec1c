"""What runs on the node for `make dev` and the e2e tests, installed the way a user installs it: the
operator by `helm install` of charts/mqtt-operator with the built image, and the services the examples
name (Kafka, RocketMQ, the battery-alerts function) from manifests in localnode/manifests/."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localnode.node import Node, images
from testenv.paths import REPO, tool

CHART = REPO / "charts" / "mqtt-operator"
MANIFESTS = Path(__file__).resolve().parent / "manifests"
RELEASE = "mqtt-operator"
OPERATOR_NAMESPACE = "mqtt-system"


def _split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def helm(node: Node, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [tool("helm"), "--kubeconfig", str(node.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HELM_CACHE_HOME": str(node.root / "helm")},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def install_operator(
    node: Node,
    drift_period: float = 30,
    *,
    chart: Path = CHART,
    operator_ref: str | None = None,
    broker_ref: str | None = None,
    action: str = "install",
) -> None:
    """`helm install` (or `upgrade`) of the chart, cluster-wide (every test namespace), with the images
    built here unless other refs are given (an earlier release's: localnode/release.py)."""
    built = images()
    repository, tag = _split(operator_ref or built["mqtt-operator"]["ref"])
    helm(
        node,
        action,
        RELEASE,
        str(chart),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        # Imported into the node's containerd; there is no registry to pull from.
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "rbac.clusterWide=true",
        "--set",
        f"brokerImage={broker_ref or built['mosquitto']['ref']}",
        "--set",
        f"driftPeriodSeconds={drift_period}",
        "--wait",
        "--timeout",
        "5m",
    )


def manifests(name: str) -> list[dict[str, Any]]:
    """localnode/manifests/<name>.yaml with each `image: <name>` placeholder set to the built image."""
    built = images()
    text = (MANIFESTS / f"{name}.yaml").read_text()
    for image, entry in built.items():
        text = text.replace(f"image: built/{image}\n", f"image: {entry['ref']}\n")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def install_services(node: Node, namespace_for_function: str | None = None) -> None:
    """Kafka and RocketMQ in their own namespaces, waiting until both answer."""
    node.apply(manifests("kafka"))
    node.apply(manifests("rocketmq"))
    if namespace_for_function:
        install_function(node, namespace_for_function)
    for ns, name in (("kafka", "kafka"), ("rocketmq", "rocketmq")):
        node.kubectl("rollout", "status", "-n", ns, f"statefulset/{name}", "--timeout=300s", timeout=320)
    node.kubectl(
        "wait",
        "-n",
        "rocketmq",
        "--for=condition=complete",
        "job/rocketmq-topics",
        "--timeout=300s",
        timeout=320,
    )


def install_function(node: Node, namespace: str) -> None:
    """The example function `battery-alerts` (Deployment + Service) in `namespace`."""
    node.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(manifests("function")))


def pod_ip(node: Node, namespace: str, pod: str) -> str:
    found = json.loads(node.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout)
    ip: str = found["status"]["podIP"]
    return ip
