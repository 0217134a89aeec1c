"""The clusters the e2e tests run against, behind one small interface, so every assertion is shared.

`local`: the local cluster of `make dev` (devcluster), started for the session. `kind`: a cluster the
caller prepared (image loaded, chart installed, Kafka reachable as kafka-bootstrap.kafka.svc:9092), named
by E2E_KIND_KUBECONFIG; it is only listed when that variable is set, and has not run on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from devcluster.dev import LocalCluster

from testenv.process import free_port, port_open

# Short, so the drift-repair test waits seconds, not minutes.
DRIFT_PERIOD = 5


class Target(Protocol):
    name: str

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


class LocalTarget:
    name = "local"

    def __init__(self) -> None:
        # E2E_KEEP=1 keeps the cluster's folder (logs of the runner, the operator, every container).
        self.cluster = LocalCluster(
            namespaces=None,
            operator_args=(f"--drift-period={DRIFT_PERIOD}",),
            keep=os.environ.get("E2E_KEEP") == "1",
        ).start()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.cluster.kubectl(*args, input=input, check=check)
        return result

    @contextmanager
    def broker(self, namespace: str, instance: str, port: int = 1883) -> Iterator[tuple[str, int]]:
        # The Pod's own address, as the runner gave it: the host reaches every Pod over the bridge.
        pod = json.loads(self.kubectl("get", "pod", "-n", namespace, f"{instance}-0", "-o", "json").stdout)
        yield pod["status"]["podIP"], port

    def kafka_bootstrap(self) -> str:
        assert self.cluster.kafka is not None
        return self.cluster.kafka.bootstrap

    def pid(self, namespace: str, pod: str, container: str) -> int:
        """The host PID of the container's PID 1, which the runner writes next to the Pod's logs."""
        uid = json.loads(self.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout)["metadata"][
            "uid"
        ]
        folder = self.cluster.runner_dir / "pods" / namespace / f"{pod}-{uid[:8]}"
        return int((folder / f"{container}.pid").read_text())

    def kill_container(self, namespace: str, pod: str, container: str) -> None:
        os.kill(self.pid(namespace, pod, container), signal.SIGKILL)

    def stop(self) -> None:
        bridge = self.cluster.network.get("bridge")
        root = str(self.cluster.root)
        self.cluster.stop()
        # Every process of the cluster names its folder: etcd, the API server, Kafka, the runner, the
        # operator's hosts file, each container's spec.
        left = [p for p in Path("/proc").glob("[0-9]*") if root in _cmdline(p)]
        assert not left, f"processes left behind: {[_cmdline(p) for p in left]}"
        leftovers = (
            subprocess.run(["ip", "link", "show", "dev", bridge], capture_output=True) if bridge else None
        )
        assert leftovers is None or leftovers.returncode != 0, f"bridge {bridge} left behind"


class KindTarget:
    """Not run here (no Docker engine): the same interface over kubectl port-forward and kubectl exec."""

    name = "kind"

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.kafka = os.environ.get("E2E_KIND_KAFKA", "127.0.0.1:9092")

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    @contextmanager
    def broker(self, namespace: str, instance: str, port: int = 1883) -> Iterator[tuple[str, int]]:
        local = free_port()
        forward = subprocess.Popen(
            [
                "kubectl",
                "--kubeconfig",
                self.kubeconfig,
                "port-forward",
                "-n",
                namespace,
                f"pod/{instance}-0",
                f"{local}:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_open(local) and time.monotonic() < deadline:
                time.sleep(0.2)
            yield "127.0.0.1", local
        finally:
            forward.terminate()
            forward.wait(10)

    def kafka_bootstrap(self) -> str:
        return self.kafka

    def kill_container(self, namespace: str, pod: str, container: str) -> None:
        # PID 1 ignores SIGKILL sent from inside; SIGTERM ends Mosquitto, and the kubelet restarts it.
        self.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "kill", "1")

    def stop(self) -> None:
        pass


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def names() -> list[str]:
    return ["local", *(["kind"] if os.environ.get("E2E_KIND_KUBECONFIG") else [])]


def start(name: str) -> Any:
    if name == "kind":
        return KindTarget(os.environ["E2E_KIND_KUBECONFIG"])
    return LocalTarget()
