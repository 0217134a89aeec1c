"""Where one node keeps its state and which addresses it uses: the one place that names them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from testenv.paths import TESTENV_DIR

NODE_NAME = "mqtt-node"
CLUSTER_DOMAIN = "cluster.local"
# The containerd root (its content store and snapshots) is kept between runs, so images are
# imported once; everything else of a node lives in its run folder and goes with it.
IMAGE_STORE = TESTENV_DIR / "node" / "containerd"
PKI_CACHE = TESTENV_DIR / "node" / "pki"


@dataclass(frozen=True)
class Addresses:
    """The node's ranges. The defaults are private ranges this machine does not route anywhere else."""

    # The veth pair: the host's end is .1, the node's end .2.
    link: str = "10.201.0.0/30"
    pods: str = "10.245.0.0/24"
    services: str = "10.97.0.0/16"

    def _host(self, cidr: str, index: int) -> str:
        return str(ipaddress.ip_network(cidr)[index])

    @property
    def host_ip(self) -> str:
        return self._host(self.link, 1)

    @property
    def node_ip(self) -> str:
        return self._host(self.link, 2)

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.link).prefixlen

    @property
    def kubernetes_service_ip(self) -> str:
        return self._host(self.services, 1)

    @property
    def dns_service_ip(self) -> str:
        return self._host(self.services, 10)

    @property
    def api_server(self) -> str:
        return f"https://{self.node_ip}:6443"


@dataclass(frozen=True)
class Layout:
    """One node's folders. `root` is on disk (kept with E2E_KEEP); `run` is a tmpfs inside the node."""

    root: Path
    # Short: unix socket paths must stay under 108 bytes. Mounted as a tmpfs over /run in the node's
    # mount namespace only, so the host's /run is never written.
    run: Path = Path("/run")

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def var_log(self) -> Path:
        """Bound over /var/log inside the node: the kubelet's pod logs and /var/log/containers links."""
        return self.root / "var-log"

    @property
    def cni_state(self) -> Path:
        return self.root / "cni"

    @property
    def volumes(self) -> Path:
        """local-path-provisioner's folder: the PersistentVolumes' data."""
        return self.root / "volumes"

    @property
    def sysctl_shadows(self) -> Path:
        return self.root / "sysctl"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd" / "containerd.sock"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def kubeconfig(self, component: str) -> Path:
        return self.etc / f"{component}.kubeconfig"
