"""The whole local system: control plane, CRDs, the runner, Kafka as an external service, the operator.

Used by `make dev` (dev() below: in the foreground until Ctrl-C) and by the e2e tests (LocalCluster).
The operator runs on the host, as outside a cluster, but in a mount namespace of its own whose
/etc/hosts is the runner's: it reaches `<instance>.<ns>.svc` exactly as it would in a cluster, with no
flag or change of its own.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster.kafka import ALIAS_NAMESPACE, ALIAS_SERVICE, PORT, ExternalKafka, alias_manifests
from testenv.kube import ControlPlane
from testenv.paths import BIN, REPO, run_dir
from testenv.process import Server, free_port

# Started as root, `sh` binds the runner's hosts file over /etc/hosts in the private mount namespace
# `unshare` made, then becomes the operator.
_WITH_CLUSTER_HOSTS = 'mount --bind "$0" /etc/hosts && exec "$@"'


@dataclass
class LocalCluster:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="devcluster-", dir=run_dir())))
    # None: every namespace (operator and runner both)
    namespaces: tuple[str, ...] | None = ("default",)
    keep: bool = False  # keep the control plane's data and the claims (make dev)
    with_kafka: bool = True
    operator_args: tuple[str, ...] = ()
    log_format: str = "json"
    control_plane: ControlPlane | None = None
    runner: Server | None = None
    kafka: ExternalKafka | None = None
    operator: Server | None = None
    network: dict[str, str] = field(default_factory=dict)

    @property
    def runner_dir(self) -> Path:
        return self.root / "devcluster"

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None
        return self.control_plane.kubeconfig

    @property
    def gateway(self) -> str:
        return self.network["gateway"]

    def kubectl(self, *args: str, **kwargs: Any) -> Any:
        assert self.control_plane is not None
        return self.control_plane.kubectl(*args, **kwargs)

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.control_plane = ControlPlane(root=self.root)
        self.control_plane.start()
        crds = str(REPO / "crds")
        self.kubectl("apply", "--server-side", "-f", crds)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
        self._start_runner()
        if self.with_kafka:
            self.kafka = ExternalKafka(host=self.gateway, root=self.root / "kafka")
            shutil.rmtree(self.kafka.root, ignore_errors=True)  # its listener moves with the gateway
            self.kafka.root.mkdir(parents=True)
            self.kafka.start()
            self.apply(alias_manifests(self.gateway))
        self._start_operator()

    def _start_runner(self) -> None:
        scope = (
            ["--all-namespaces"]
            if self.namespaces is None
            else [f"--namespace={ns}" for ns in self.namespaces]
        )
        (self.runner_dir / "network.json").unlink(missing_ok=True)
        self.runner = Server(
            "devcluster-runner",
            [
                sys.executable,
                "-m",
                "devcluster",
                "runner",
                f"--kubeconfig={self.kubeconfig}",
                f"--state-dir={self.runner_dir}",
                *scope,
            ],
            self.root / "runner.log",
            cwd=REPO,
        )
        self.runner.start()
        self.runner.wait_until(lambda: (self.runner_dir / "network.json").exists(), 60, "up")
        self.network = json.loads((self.runner_dir / "network.json").read_text())

    def _start_operator(self) -> None:
        health = free_port()
        scope = (
            ["--all-namespaces"]
            if self.namespaces is None
            else [f"--namespace={ns}" for ns in self.namespaces]
        )
        argv = [
            "unshare",
            "--mount",
            "--",
            "sh",
            "-c",
            _WITH_CLUSTER_HOSTS,
            str(self.runner_dir / "hosts"),
            sys.executable,
            "-m",
            "mqtt_operator",
            "run",
            *scope,
            f"--log-format={self.log_format}",
            f"--health-port={health}",
            *self.operator_args,
        ]
        self.operator = Server(
            "mqtt-operator",
            argv,
            self.root / "operator.log",
            env={"KUBECONFIG": str(self.kubeconfig)},
            cwd=REPO,
        )
        self.operator.start()
        self.operator.wait_until(lambda: _http_ok(f"http://127.0.0.1:{health}/healthz"), 60, "healthy")

    def stop(self) -> None:
        """Everything, in the reverse order; the runner stops every Pod and removes its network."""
        if self.operator is not None:
            self.operator.stop()
        if self.runner is not None:
            self.runner.stop(timeout=60)
        if self.kafka is not None:
            self.kafka.stop()
        if self.control_plane is not None:
            self.control_plane.stop(keep=self.keep)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
        return bool(resp.status == 200)


class _Follower:
    """Prints the lines a log file gains, with a prefix (make dev shows the operator and the runner)."""

    def __init__(self, path: Path, prefix: str) -> None:
        # From the end: the logs of earlier runs are appended to, not replaced.
        self.path, self.prefix = path, prefix
        self.offset = path.stat().st_size if path.exists() else 0

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            print(f"{self.prefix} {line}", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def dev(namespaces: list[str]) -> int:
    # Ctrl-C, and also a terminal closed or a `kill`: every way out goes through the clean stop below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    cluster = LocalCluster(
        root=run_dir() / "dev", namespaces=tuple(namespaces or ["default"]), keep=True, log_format="text"
    )
    ns = cluster.namespaces[0] if cluster.namespaces else "default"
    operator_log = _Follower(cluster.root / "operator.log", "[operator]")
    runner_log = _Follower(cluster.root / "runner.log", "[runner]")
    print("[dev] starting etcd + kube-apiserver, the runner, Kafka and the operator ...", flush=True)
    try:
        cluster.start()
        print(
            f"\n[dev] Local cluster up: Pods in {cluster.network['subnet']}, this host {cluster.gateway},\n"
            f"[dev] Kafka at {cluster.gateway}:{PORT}, in the cluster "
            f"{ALIAS_SERVICE}.{ALIAS_NAMESPACE}.svc:{PORT}.\n"
            f"[dev] In another shell:\n\n"
            f"    export KUBECONFIG={cluster.kubeconfig} PATH={BIN}:$PATH\n"
            f"    kubectl apply -n {ns} -f examples/\n"
            f"    kubectl get mqtt,pods -n {ns}\n\n"
            f"[dev] Logs: {cluster.root}/operator.log, runner.log, devcluster/pods/.\n"
            "[dev] Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(s is not None and s.running for s in (cluster.operator, cluster.runner)):
            operator_log.poll()
            runner_log.poll()
            time.sleep(0.5)
        print("[dev] the operator or the runner exited; stopping", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n[dev] stopping ...", flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        cluster.stop()
        runner_log.poll()  # its last lines: the Pods stopped, the bridge removed
        print("[dev] stopped: the control plane, Kafka, the operator, the runner and its Pods", flush=True)
