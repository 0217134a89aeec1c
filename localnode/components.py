"""The node's programs and their command lines, in the order they start (pure: no process is run here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localnode.layout import CLUSTER_DOMAIN, NODE_NAME, Addresses, Layout
from testenv.paths import tool

ETCD_URL = "http://127.0.0.1:2379"
ETCD_PEER_URL = "http://127.0.0.1:2380"
# Every address of the node's own namespace: the veth end the host reaches, and the node's loopback.
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104


@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]


def _command(program: str, flags: dict[str, str]) -> tuple[str, ...]:
    return (program, *(f"{flag}={value}" for flag, value in flags.items()))


def _controller_flags(layout: Layout, name: str) -> dict[str, str]:
    """The controller-manager's and the scheduler's shared flags: their identity, one of each."""
    kubeconfig = str(layout.kubeconfig(name))
    return {
        "--kubeconfig": kubeconfig,
        "--authentication-kubeconfig": kubeconfig,
        "--authorization-kubeconfig": kubeconfig,
        "--bind-address": "127.0.0.1",
        "--leader-elect": "false",
    }


def components(
    layout: Layout, addresses: Addresses, pki: Path, program: Callable[[str], str] = tool
) -> tuple[Component, ...]:
    """containerd first (the kubelet needs it), then etcd and the API server, then the rest at once.
    `program` finds a test-environment binary (testenv.paths.tool)."""
    return (
        Component("containerd", _command("containerd", {"--config": str(layout.etc / "containerd.toml")})),
        Component(
            "etcd",
            _command(
                program("etcd"),
                {
                    "--name": NODE_NAME,
                    "--data-dir": str(layout.etcd_data),
                    # The node's own loopback: only the API server, in the same namespace, reaches it.
                    "--listen-client-urls": ETCD_URL,
                    "--advertise-client-urls": ETCD_URL,
                    "--listen-peer-urls": ETCD_PEER_URL,
                    "--initial-advertise-peer-urls": ETCD_PEER_URL,
                    "--initial-cluster": f"{NODE_NAME}={ETCD_PEER_URL}",
                    # A test cluster's data is thrown away: fsync only slows it down.
                    "--unsafe-no-fsync": "true",
                    "--quota-backend-bytes": str(4 << 30),
                    "--log-level": "warn",
                },
            ),
        ),
        Component(
            "kube-apiserver",
            _command(
                program("kube-apiserver"),
                {
                    "--etcd-servers": ETCD_URL,
                    "--bind-address": ALL_ADDRESSES,
                    "--advertise-address": addresses.node_ip,
                    "--secure-port": "6443",
                    "--cert-dir": str(layout.root / "apiserver-certs"),
                    "--tls-cert-file": str(pki / "apiserver.crt"),
                    "--tls-private-key-file": str(pki / "apiserver.key"),
                    "--client-ca-file": str(pki / "ca.crt"),
                    "--kubelet-client-certificate": str(pki / "apiserver-kubelet-client.crt"),
                    "--kubelet-client-key": str(pki / "apiserver-kubelet-client.key"),
                    "--kubelet-preferred-address-types": "InternalIP",
                    "--service-account-key-file": str(pki / "sa.pub"),
                    "--service-account-signing-key-file": str(pki / "sa.key"),
                    "--service-account-issuer": f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                    "--service-cluster-ip-range": addresses.services,
                    "--authorization-mode": "Node,RBAC",
                    "--enable-admission-plugins": "NodeRestriction",
                    "--allow-privileged": "true",
                    "--v": "1",
                },
            ),
        ),
        Component(
            "kube-controller-manager",
            _command(
                program("kube-controller-manager"),
                {
                    **_controller_flags(layout, "kube-controller-manager"),
                    "--use-service-account-credentials": "true",
                    "--service-account-private-key-file": str(pki / "sa.key"),
                    "--root-ca-file": str(pki / "ca.crt"),
                    "--cluster-signing-cert-file": str(pki / "ca.crt"),
                    "--cluster-signing-key-file": str(pki / "ca.key"),
                    "--service-cluster-ip-range": addresses.services,
                    "--v": "1",
                },
            ),
        ),
        Component(
            "kube-scheduler",
            _command(
                program("kube-scheduler"),
                {**_controller_flags(layout, "kube-scheduler"), "--v": "1"},
            ),
        ),
        Component(
            "kubelet",
            _command(
                program("kubelet"),
                {
                    "--config": str(layout.etc / "kubelet.yaml"),
                    "--kubeconfig": str(layout.kubeconfig("kubelet")),
                    "--root-dir": str(layout.kubelet_root),
                    "--cert-dir": str(layout.kubelet_root / "pki"),
                    "--hostname-override": NODE_NAME,
                    "--node-ip": addresses.node_ip,
                    "--v": "1",
                },
            ),
        ),
        Component(
            "kube-proxy",
            _command(program("kube-proxy"), {"--config": str(layout.etc / "kube-proxy.yaml"), "--v": "1"}),
        ),
    )
