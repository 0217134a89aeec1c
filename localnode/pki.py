"""The node's certificates: one CA, the API server's and kubelet's serving certificates, a client
certificate per component, and the service-account key pair. Made once per set of addresses and kept
under .testenv/node/pki (about 2 s of openssl); a new address set makes a new folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from localnode.layout import CLUSTER_DOMAIN, NODE_NAME, PKI_CACHE, Addresses
from testenv.pki import Certificate, make_pki


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


def ensure(addresses: Addresses) -> Path:
    """The folder holding every certificate for these addresses, made now if it is not there."""
    key = hashlib.sha256(repr(certificates(addresses)).encode()).hexdigest()[:12]
    d = PKI_CACHE / key
    make_pki(d, certificates(addresses), "/CN=mqtt-node-ca")
    return d
