"""The node's certificates: one CA, the API server's and kubelet's serving certificates, a client
certificate per component, and the service-account key pair. Made once per set of addresses and kept
under .testenv/node/pki (about 2 s of openssl); a new address set makes a new folder."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localnode.layout import CLUSTER_DOMAIN, NODE_NAME, PKI_CACHE, Addresses


@dataclass(frozen=True)
class Certificate:
    name: str
    subject: str
    # subjectAltName entries; empty for client certificates.
    alt_names: tuple[str, ...] = ()

    @property
    def extensions(self) -> str:
        if not self.alt_names:
            return "extendedKeyUsage=clientAuth\n"
        return f"subjectAltName={','.join(self.alt_names)}\nextendedKeyUsage=serverAuth\n"


def certificates(addresses: Addresses) -> tuple[Certificate, ...]:
    service_names = [
        f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default",
        "DNS:kubernetes",
    ]
    return (
        Certificate(
            "apiserver",
            "/CN=kube-apiserver",
            (
                f"IP:{addresses.node_ip}",
                f"IP:{addresses.kubernetes_service_ip}",
                "IP:127.0.0.1",
                "DNS:localhost",
                *service_names,
            ),
        ),
        Certificate("kubelet-serving", f"/CN={NODE_NAME}", (f"IP:{addresses.node_ip}", f"DNS:{NODE_NAME}")),
        Certificate("admin", "/O=system:masters/CN=admin"),
        # The API server's identity towards the kubelet (logs, exec, port-forward).
        Certificate("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"),
        Certificate("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
        Certificate("kube-controller-manager", "/CN=system:kube-controller-manager"),
        Certificate("kube-scheduler", "/CN=system:kube-scheduler"),
        Certificate("kube-proxy", "/CN=system:kube-proxy"),
    )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(cert: Certificate, d: Path) -> None:
    (d / f"{cert.name}.ext").write_text(cert.extensions)
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        cert.subject,
        "-keyout",
        f"{cert.name}.key",
        "-out",
        f"{cert.name}.csr",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{cert.name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        f"{cert.name}.ext",
        "-out",
        f"{cert.name}.crt",
        cwd=d,
    )


def ensure(addresses: Addresses) -> Path:
    """The folder holding every certificate for these addresses, made now if it is not there."""
    key = hashlib.sha256(repr(certificates(addresses)).encode()).hexdigest()[:12]
    d = PKI_CACHE / key
    if (d / "complete").exists():
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=mqtt-node-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    for cert in certificates(addresses):
        _issue(cert, d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    (d / "complete").write_text(key)
    return d
