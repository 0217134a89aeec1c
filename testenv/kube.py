"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, run the way envtest runs it.

A private CA signs the API server's serving certificate and an admin client certificate
(CN=admin, O=system:masters); RBAC is on; the kubeconfig written here serves the tests, kubectl,
helm and the operator alike. No controllers run: nothing creates Pods or garbage-collects.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testenv.paths import run_dir, tool
from testenv.pki import Certificate, kubeconfig_text, make_pki
from testenv.process import Server, free_port

# The API server's serving certificate (for loopback) and the admin client certificate.
CERTIFICATES = (
    Certificate(
        "serving",
        "/CN=kube-apiserver",
        ("IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default.svc"),
    ),
    Certificate("admin", "/O=system:masters/CN=admin"),
)

# With `ControlPlane(audit=True)`: one line per finished request (who, verb, resource, user agent), so a
# test can count the requests a client made (tests/integration/test_access_writes.py).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
"""


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the test environment's kubectl; with check=True a failure raises with stderr shown."""
    proc = subprocess.run(
        [tool("kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@dataclass
class ControlPlane:
    """etcd and kube-apiserver; `start()` returns once the API server answers /readyz."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kube-", dir=run_dir())))
    etcd: Server | None = None
    apiserver: Server | None = None
    port: int = 0
    audit: bool = False

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ControlPlane:
        make_pki(self.pki, CERTIFICATES, "/CN=testenv-ca")
        client_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        self.etcd = Server(
            "etcd",
            [
                tool("etcd"),
                "--name",
                "testenv",
                "--data-dir",
                str(self.root / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"testenv=http://127.0.0.1:{peer_port}",
                # Tests throw the data away: fsync only slows them down.
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(4 << 30),
                "--log-level",
                "warn",
            ],
            self.root / "etcd.log",
        )
        self.etcd.start()
        self.etcd.wait_until(lambda: _http_ok(f"{etcd_url}/health"), 60, "healthy")

        self.port = free_port()
        pki = self.pki
        self.apiserver = Server(
            "kube-apiserver",
            [
                tool("kube-apiserver"),
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--cert-dir",
                str(self.root / "certs"),
                "--tls-cert-file",
                str(pki / "serving.crt"),
                "--tls-private-key-file",
                str(pki / "serving.key"),
                "--client-ca-file",
                str(pki / "ca.crt"),
                "--service-account-key-file",
                str(pki / "sa.pub"),
                "--service-account-signing-key-file",
                str(pki / "sa.key"),
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                # Addresses are only handed out to Services, never routed: no traffic leaves loopback.
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--authorization-mode",
                "RBAC",
                "--allow-privileged=true",
                # No controller-manager runs to create service-account tokens for Pods.
                "--disable-admission-plugins",
                "ServiceAccount",
                "--v",
                "1",
                *self._audit_args(),
            ],
            self.root / "kube-apiserver.log",
        )
        self.apiserver.start()
        self.kubeconfig.write_text(kubeconfig_text(self.url, pki, "admin", "testenv", namespace="default"))
        self.apiserver.wait_until(self._ready, 120, "ready")
        return self

    def _audit_args(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.root / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        return ["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log)]

    def audit_events(self) -> list[dict[str, Any]]:
        """Every request the API server finished so far (audit.k8s.io/v1 Events); needs `audit=True`."""
        if not self.audit:
            raise RuntimeError("this control plane was started without audit=True")
        text = self.audit_log.read_text() if self.audit_log.exists() else ""
        whole = text[: text.rfind("\n") + 1]  # a line being written is left for the next read
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def _ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; with check=True a failure raises with stderr shown."""
        return kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)

    def stop(self, keep: bool = False) -> None:
        for server in (self.apiserver, self.etcd):
            if server is not None:
                server.stop()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
        return bool(resp.status == 200)
