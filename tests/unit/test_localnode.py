"""The node's pure builders: addresses, configuration files, command lines, add-ons, the DNS query."""

from __future__ import annotations

import json
import socket
import struct
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from localnode import addons, config
from localnode.components import components
from localnode.layout import Addresses, Layout
from localnode.node import _normalized, resolve

ADDRESSES = Addresses()
LAYOUT = Layout(Path("/work/main/.testenv/run/node-abc"))
PKI = Path("/pki")


def test_addresses_come_from_the_ranges() -> None:
    assert (ADDRESSES.host_ip, ADDRESSES.node_ip) == ("10.201.0.1", "10.201.0.2")
    assert ADDRESSES.kubernetes_service_ip == "10.97.0.1"
    assert ADDRESSES.dns_service_ip == "10.97.0.10"
    assert ADDRESSES.api_server == "https://10.201.0.2:6443"
    other = Addresses(link="192.168.77.0/30", services="10.66.0.0/24")
    assert other.node_ip == "192.168.77.2" and other.dns_service_ip == "10.66.0.10"


def test_containerd_keeps_its_oom_score_and_uses_the_built_pause_image() -> None:
    parsed = tomllib.loads(config.containerd_config(LAYOUT))
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == config.PAUSE_IMAGE
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(LAYOUT.etc / "cni")
    assert parsed["grpc"]["address"] == str(LAYOUT.containerd_socket)
    assert len(str(LAYOUT.containerd_socket)) < 108  # a unix socket path's limit


def test_the_kubelet_runs_on_cgroup_v1_without_lowering_its_oom_score() -> None:
    kubelet = yaml.safe_load(config.kubelet_config(LAYOUT, ADDRESSES, PKI))
    assert kubelet["failCgroupV1"] is False
    assert kubelet["oomScoreAdj"] == 0
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["cgroupRoot"] == "/mqtt-node"
    assert kubelet["clusterDNS"] == [ADDRESSES.dns_service_ip]
    # Imported images are never garbage-collected: nothing could pull them back.
    assert (kubelet["imageGCHighThresholdPercent"], kubelet["imageGCLowThresholdPercent"]) == (100, 99)
    assert kubelet["address"] == ADDRESSES.node_ip


def test_kube_proxy_leaves_the_hosts_conntrack_alone() -> None:
    proxy = yaml.safe_load(config.kube_proxy_config(LAYOUT, ADDRESSES))
    assert proxy["mode"] == "iptables"
    assert proxy["clusterCIDR"] == ADDRESSES.pods
    assert proxy["conntrack"]["maxPerCore"] == 0
    assert proxy["conntrack"]["tcpEstablishedTimeout"] == "0s"


def test_the_pod_network_is_the_pod_range() -> None:
    cni = json.loads(config.cni_conflist(LAYOUT, ADDRESSES))
    bridge = cni["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": ADDRESSES.pods}]]
    assert bridge["ipam"]["dataDir"].startswith(str(LAYOUT.root))  # nothing under the host's /var/lib/cni


def test_components_start_in_order_with_flags_as_one_word_each() -> None:
    built = components(LAYOUT, ADDRESSES, PKI, program=lambda name: f"/testenv/bin/{name}")
    names = [c.name for c in built]
    assert names[:3] == ["containerd", "etcd", "kube-apiserver"]
    assert set(names[3:]) == {"kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"}
    for component in built:
        flags = component.argv[1:]
        assert flags and all(f.startswith("--") and "=" in f for f in flags), component
    apiserver = next(c for c in built if c.name == "kube-apiserver")
    assert f"--service-cluster-ip-range={ADDRESSES.services}" in apiserver.argv
    assert "--authorization-mode=Node,RBAC" in apiserver.argv


def test_addons_name_the_dns_address_and_a_default_storage_class() -> None:
    dns = addons.coredns(ADDRESSES, "localhost/coredns:v1")
    service = next(m for m in dns if m["kind"] == "Service")
    assert service["spec"]["clusterIP"] == ADDRESSES.dns_service_ip
    assert "forward" not in addons.COREFILE  # no upstream: nothing leaves the machine
    storage = addons.local_path_provisioner(LAYOUT, "localhost/lpp:v1")
    storage_class = next(m for m in storage if m["kind"] == "StorageClass")
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    settings = next(m for m in storage if m["kind"] == "ConfigMap")
    paths = json.loads(settings["data"]["config.json"])["nodePathMap"][0]["paths"]
    assert paths == [str(LAYOUT.volumes)]


def test_image_references_are_named_as_containerd_names_them() -> None:
    assert _normalized("localhost/pause:3.10") == "localhost/pause:3.10"
    assert _normalized("debian:bookworm-slim") == "docker.io/library/debian:bookworm-slim"
    assert _normalized("rancher/local-path:v1") == "docker.io/rancher/local-path:v1"
    assert _normalized("registry.example:5000/a/b:1") == "registry.example:5000/a/b:1"


@pytest.mark.parametrize("compressed", [True, False])
def test_resolve_reads_the_a_record_of_a_dns_answer(compressed: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def answer() -> None:
            query, peer = server.recvfrom(512)
            header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
            # CoreDNS repeats the name in full; other servers point back at the question's.
            name = b"\xc0\x0c" if compressed else query[12:-4]
            record = name + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton("10.97.3.4")
            server.sendto(header + query[12:] + record, peer)

        thread = threading.Thread(target=answer)
        thread.start()
        assert resolve("127.0.0.1", "devices.ns.svc.cluster.local", port=port) == "10.97.3.4"
        thread.join(5)
