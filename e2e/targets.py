"""The clusters the e2e tests run against, behind one small interface, so every assertion is shared.

`node`: the real single-node cluster of `make dev` (localnode/), started for the session, with the
operator installed by the chart from the image built here. `kind`: a cluster the caller prepared
(e2e/kind/run.sh, `make e2e-kind`: the image loaded, the chart installed cluster-wide, Kafka as
kafka-bootstrap.kafka.svc:9092 and on a NodePort), named by E2E_KIND_KUBECONFIG. The kind target needs a
Docker engine, which the machine it was written on does not have.

Which targets a session has: E2E_TARGETS (`node`, `kind` or `node,kind`); by default `node`, plus
`kind` when E2E_KIND_KUBECONFIG is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from localnode import system
from localnode.node import Node, leftovers
from localnode.release import Release, import_images
from testenv.paths import tool
from testenv.process import free_port, port_open

# Short, so the drift-repair test waits seconds, not minutes.
DRIFT_PERIOD = 5
# On kind the operator runs with the chart's default driftPeriodSeconds.
KIND_DRIFT_PERIOD = 30
# Where this machine reaches Kafka's host listener on kind: the NodePort of e2e/kind/kafka.yaml,
# mapped to the host by e2e/kind/cluster.yaml.
KIND_KAFKA = "127.0.0.1:30092"
TARGETS = ("node", "kind")


class Target(Protocol):
    name: str
    # How often the operator compares each broker in full with the declared users and policies.
    drift_period: float

    @property
    def kubeconfig(self) -> str: ...

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...

    @contextmanager
    def broker(self, namespace: str, instance: str, port: int = 1883) -> Iterator[tuple[str, int]]:
        """Where a device on this machine reaches the instance's broker."""
        ...

    def kafka_bootstrap(self) -> str:
        """The test Kafka as this machine reaches it (in the cluster: kafka-bootstrap.kafka.svc:9092)."""
        ...

    def kill_container(self, namespace: str, pod: str, container: str) -> None: ...

    def stop(self) -> None: ...


class NodeTarget:
    """The real node of `make dev` (localnode/): the operator installed by the chart from the built image,
    Kafka and RocketMQ as StatefulSets. This machine reaches Pod and Service addresses over the node's
    veth pair, as a host on a cluster's network does."""

    name = "node"
    drift_period = DRIFT_PERIOD

    def __init__(self) -> None:
        # E2E_KEEP=1 keeps the node's folder (logs of every component and container, etcd).
        self.node = Node(keep=os.environ.get("E2E_KEEP") == "1").start()
        try:
            system.install_services(self.node)
            system.install_operator(self.node, drift_period=DRIFT_PERIOD)
        except BaseException:
            self.node.stop()
            raise

    @property
    def kubeconfig(self) -> str:
        return str(self.node.kubeconfig)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.node.kubectl(*args, input=input, check=check)

    @contextmanager
    def broker(self, namespace: str, instance: str, port: int = 1883) -> Iterator[tuple[str, int]]:
        yield system.pod_ip(self.node, namespace, f"{instance}-0"), port

    def kafka_bootstrap(self) -> str:
        # Kafka advertises its Pod address, which both the Pods and this machine reach.
        return f"{system.pod_ip(self.node, 'kafka', 'kafka-0')}:9092"

    def dns_server(self) -> str:
        """The cluster DNS Service's address (CoreDNS), which this machine reaches."""
        return self.node.addresses.dns_service_ip

    def install_function(self, namespace: str) -> None:
        """The example function battery-alerts (images/function) in `namespace`."""
        system.install_function(self.node, namespace)

    def rocketmq_endpoint(self) -> str:
        """The RocketMQ proxy's gRPC endpoint as this machine reaches it."""
        return f"{system.pod_ip(self.node, 'rocketmq', 'rocketmq-0')}:8081"

    def kill_container(self, namespace: str, pod: str, container: str) -> None:
        # SIGKILL through the runtime, as the kernel's OOM killer or a crash would end it.
        found = json.loads(self.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout)
        status = next(s for s in found["status"]["containerStatuses"] if s["name"] == container)
        container_id = status["containerID"].removeprefix("containerd://")
        self.node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)

    def install_operator(self, release: Release | None = None) -> None:
        """`helm upgrade` of the operator to `release` (its chart and images: localnode/release.py), or to
        the working tree's chart and images, the session's own."""
        if release is None:
            system.install_operator(self.node, drift_period=DRIFT_PERIOD, action="upgrade")
            return
        import_images(self.node, release)
        system.install_operator(
            self.node,
            drift_period=DRIFT_PERIOD,
            chart=release.chart,
            operator_ref=release.operator_ref,
            broker_ref=release.broker_ref,
            action="upgrade",
        )

    def restart_node(self) -> None:
        """The kubelet, containerd and every container SIGKILLed, then the runtime started again
        (localnode's restart_runtime): what a node's crash and reboot do to its Pods."""
        self.node.restart_runtime()

    @contextmanager
    def partition(self, namespace: str, pod: str, addresses: list[str]) -> Iterator[None]:
        """Every packet from the Pod to `addresses` dropped, as a network partition does (not a stopped
        process: the far side stays up, connections hang until their timeouts). The rules live in the
        Pod's own network namespace, so they go with the Pod even if the test stops half-way."""
        pid = self.node.task_pid(namespace, pod)
        iptables = ["nsenter", f"--target={pid}", "--net", "--", "iptables", "-w"]
        rules = [["OUTPUT", "-d", address, "-j", "DROP"] for address in addresses]
        for rule in rules:
            subprocess.run([*iptables, "-I", *rule], check=True, capture_output=True, timeout=30)
        try:
            yield
        finally:
            for rule in rules:
                subprocess.run([*iptables, "-D", *rule], check=False, capture_output=True, timeout=30)

    def stop(self) -> None:
        self.node.stop()
        left = leftovers()
        assert not left, f"the node left behind: {left}"


class KindTarget:
    """The same interface over a real cluster: kubectl port-forward to the broker, kubectl exec to kill.

    Not run on the machine it was written on (no Docker engine there); e2e/kind/run.sh prepares the
    cluster it expects.
    """

    name = "kind"
    drift_period = KIND_DRIFT_PERIOD

    def __init__(self, kubeconfig: str) -> None:
        self._kubeconfig = kubeconfig
        self.kafka = os.environ.get("E2E_KIND_KAFKA", KIND_KAFKA)
        # Fail at once, not test by test, when the cluster is not the one run.sh prepares.
        self.kubectl("get", "crd", "mqttinstances.mqtt-operator.io")
        kafka = self.kubectl("get", "service", "-n", "kafka", "kafka-bootstrap", check=False)
        if kafka.returncode != 0:
            raise RuntimeError(
                f"no Service kafka-bootstrap in namespace kafka (e2e/kind/kafka.yaml):\n{kafka.stderr}"
            )

    @property
    def kubeconfig(self) -> str:
        return self._kubeconfig

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # testenv's kubectl, pinned with the other components (hack/testenv/versions.env).
        proc = subprocess.run(
            [tool("kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    @contextmanager
    def broker(self, namespace: str, instance: str, port: int = 1883) -> Iterator[tuple[str, int]]:
        # The host cannot reach Pod addresses inside kind's node; `kubectl port-forward pod/NAME
        # LOCAL:REMOTE` tunnels through the API server and the kubelet to the Pod's port.
        local = free_port()
        with tempfile.TemporaryFile() as errors:
            forward = subprocess.Popen(
                [
                    tool("kubectl"),
                    "--kubeconfig",
                    self.kubeconfig,
                    "port-forward",
                    "--address=127.0.0.1",
                    "-n",
                    namespace,
                    f"pod/{instance}-0",
                    f"{local}:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            try:
                deadline = time.monotonic() + 30
                while not port_open(local):
                    if forward.poll() is not None or time.monotonic() > deadline:
                        errors.seek(0)
                        raise RuntimeError(
                            f"kubectl port-forward to {namespace}/{instance}-0:{port} did not open "
                            f"127.0.0.1:{local}: {errors.read().decode(errors='replace')}"
                        )
                    time.sleep(0.2)
                yield "127.0.0.1", local
            finally:
                forward.terminate()
                forward.wait(10)

    def kafka_bootstrap(self) -> str:
        return self.kafka

    def kill_container(self, namespace: str, pod: str, container: str) -> None:
        # From inside its PID namespace, PID 1 only gets the signals it handles: SIGKILL is ignored,
        # SIGTERM ends Mosquitto (the busybox `kill` of eclipse-mosquitto's image sends it), and the
        # kubelet restarts the container in the same Pod, as restartPolicy Always says.
        self.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "kill", "1")

    def stop(self) -> None:
        pass  # the cluster belongs to whoever made it (run.sh deletes it)


def names() -> list[str]:
    chosen = os.environ.get("E2E_TARGETS")
    if not chosen:
        return ["node", *(["kind"] if os.environ.get("E2E_KIND_KUBECONFIG") else [])]
    result = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = sorted(set(result) - set(TARGETS))
    if unknown:
        raise ValueError(f"E2E_TARGETS: unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    if "kind" in result and not os.environ.get("E2E_KIND_KUBECONFIG"):
        raise ValueError(
            "E2E_TARGETS names kind: set E2E_KIND_KUBECONFIG to its kubeconfig (make e2e-kind does)"
        )
    return result


def start(name: str) -> Any:
    if name == "kind":
        return KindTarget(os.environ["E2E_KIND_KUBECONFIG"])
    return NodeTarget()
