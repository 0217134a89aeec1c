"""Certificates of the test clusters (the loopback control plane, the node of make dev): one private CA,
the certificates it signs, the service-account key pair, and kubeconfigs that use them (openssl)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    name: str
    subject: str
    # subjectAltName entries: a serving certificate; none: a client certificate.
    alt_names: tuple[str, ...] = ()

    @property
    def extensions(self) -> str:
        if not self.alt_names:
            return "extendedKeyUsage=clientAuth\n"
        return f"subjectAltName={','.join(self.alt_names)}\nextendedKeyUsage=serverAuth\n"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, certificates: Iterable[Certificate], ca_subject: str) -> None:
    """ca.crt/key, <name>.crt/key for each certificate, sa.key/pub; nothing is made again once complete."""
    if (d / "complete").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", ca_subject,
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for cert in certificates:
        (d / f"{cert.name}.ext").write_text(cert.extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", cert.subject,
                 "-keyout", f"{cert.name}.key", "-out", f"{cert.name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{cert.name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "3650", "-extfile", f"{cert.name}.ext",
                 "-out", f"{cert.name}.crt", cwd=d)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    (d / "complete").touch()


def kubeconfig_text(server: str, pki: Path, user: str, cluster: str, namespace: str | None = None) -> str:
    """A kubeconfig for `server` as `user` (the client certificate <user>.crt of `pki`)."""
    context: dict[str, str] = {"cluster": cluster, "user": user}
    if namespace:
        context["namespace"] = namespace
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": cluster, "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(pki / f"{user}.crt"),
                        "client-key": str(pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": cluster, "context": context}],
            "current-context": cluster,
        },
        indent=2,
    )
