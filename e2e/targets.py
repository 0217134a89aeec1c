"""The clusters the e2e tests run against, behind one small interface, so every assertion is shared.

`local`: the local cluster of `make dev` (devcluster), started for the session. `kind`: a cluster the
caller prepared (e2e/kind/run.sh, `make e2e-kind`: the image loaded, the chart installed cluster-wide,
Kafka as kafka-bootstrap.kafka.svc:9092 and on a NodePort), named by E2E_KIND_KUBECONFIG. The kind
target has never run on the machine it was written on (no Docker engine there).

Which targets a session has: E2E_TARGETS (`local`, `kind` or `local,kind`); by default `local`, plus
`kind` when E2E_KIND_KUBECONFIG is set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from devcluster.dev import LocalCluster

from testenv.paths import tool
from testenv.process import free_port, port_open

# Short, so the drift-repair test waits seconds, not minutes.
DRIFT_PERIOD = 5
# On kind the operator runs as the chart installs it, with its default --drift-period.
KIND_DRIFT_PERIOD = 30
# Where this machine reaches Kafka's host listener on kind: the NodePort of e2e/kind/kafka.yaml,
# mapped to the host by e2e/kind/cluster.yaml.
KIND_KAFKA = "127.0.0.1:30092"
TARGETS = ("local", "kind")


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


class LocalTarget:
    name = "local"
    drift_period = DRIFT_PERIOD

    def __init__(self) -> None:
        # E2E_KEEP=1 keeps the cluster's folder (logs of the runner, the operator, every container).
        self.cluster = LocalCluster(
            namespaces=None,
            operator_args=(f"--drift-period={DRIFT_PERIOD}",),
            keep=os.environ.get("E2E_KEEP") == "1",
        ).start()

    @property
    def kubeconfig(self) -> str:
        return str(self.cluster.kubeconfig)

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


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def names() -> list[str]:
    chosen = os.environ.get("E2E_TARGETS")
    if not chosen:
        return ["local", *(["kind"] if os.environ.get("E2E_KIND_KUBECONFIG") else [])]
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
    return LocalTarget()
