"""Pure builders of the node's configuration files: kubeconfigs, containerd, CNI, kubelet, kube-proxy.

Each returns the text of one file from the layout and addresses; node.py writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from localnode.layout import CLUSTER_DOMAIN, IMAGE_STORE, NODE_NAME, Addresses, Layout

# The pause image of every Pod sandbox, built here (images/pause) and imported with the others.
PAUSE_IMAGE = "localhost/pause:3.10"
# Debian's containernetworking-plugins.
CNI_BIN_DIR = "/usr/lib/cni"


def containerd_config(layout: Layout) -> str:
    # CRI plugin settings: see FACTS in docs/dev-cluster.md. This VM withholds CAP_SYS_RESOURCE, so
    # no process may lower its oom_score_adj: restrict_oom_score_adj keeps runc from trying.
    return f"""version = 2
root = "{IMAGE_STORE}"
state = "{layout.run / "containerd" / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{layout.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.root / "containerd-opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.etc / "cni"}"
"""


def cni_conflist(layout: Layout, addresses: Addresses) -> str:
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "mqtt-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": addresses.pods}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(layout.cni_state / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(layout: Layout, addresses: Addresses, pki: Path) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": addresses.node_ip,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        # Every Pod's cgroups under one root of the node's own, removed when the node stops.
        "cgroupRoot": f"/{NODE_NAME}",
        # This machine has cgroup v1 only; v1.34 still runs on it when told to.
        "failCgroupV1": False,
        # The kubelet may not lower its own oom_score_adj here (no CAP_SYS_RESOURCE).
        "oomScoreAdj": 0,
        "clusterDNS": [addresses.dns_service_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(layout.etc / "resolv.conf"),
        "podLogsDir": str(layout.var_log / "pods"),
        "volumePluginDir": str(layout.root / "volume-plugins"),
        # Images are imported, never pulled: garbage collection must never remove one.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "876000h",
        # A shared disk with little free space must not evict the tests' Pods.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "failSwapOn": False,
        "serializeImagePulls": False,
        "hairpinMode": "hairpin-veth",
        "maxPods": 110,
        "nodeStatusReportFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_config(layout: Layout, addresses: Addresses) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(layout.kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "clusterCIDR": addresses.pods,
        "hostnameOverride": NODE_NAME,
        "bindAddress": addresses.node_ip,
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        # Zero leaves the host's conntrack table settings alone (they are not per namespace).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def resolv_conf() -> str:
    # Pods with dnsPolicy Default (CoreDNS itself) get this: the node has no upstream resolver,
    # and no traffic may leave the machine.
    return "options ndots:1\n"


# Host-wide files the kubelet writes at start (container_manager_linux.go setupKernelTunables);
# inside the node's mount namespace each is shadowed by a file already holding the value it wants.
SYSCTL_SHADOWS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
