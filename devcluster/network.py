"""The Pods' network: a bridge on the host that owns one /24 of 10.244.0.0/16, and for each Pod a network
namespace with a veth pair into the bridge and one address of that /24.

The host is the bridge's first address (the gateway): from there it reaches every Pod, and Pods reach
services the host runs on that address ("external" ones such as Kafka). Pods get no default route and
the host does not forward, so nothing from a Pod leaves the machine.

A Pod's namespaces are held by a pause process (as a kubelet's pause container does), which dies with
the runner; its veth pair goes with its namespace. Bridges carry their runner's PID in their alias, so a
runner that was killed has its bridge removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from devcluster.procs import alive, arun, die_with_parent, run, send

POOL = ipaddress.IPv4Network("10.244.0.0/16")
ALIAS = "devcluster runner pid="

# The pause process: owns the Pod's network and UTS namespaces, carries its host name, waits.
_PAUSE = (
    "import signal,socket,sys; socket.sethostname(sys.argv[1]); print('ready', flush=True); signal.pause()"
)


def sweep() -> list[str]:
    """Remove the bridges of runners that are gone; returns their names."""
    removed = []
    for link in json.loads(run("ip", "-j", "-d", "link", "show", "type", "bridge") or "[]"):
        alias = link.get("ifalias", "")
        if alias.startswith(ALIAS) and not alive(int(alias[len(ALIAS) :])):
            run("ip", "link", "del", link["ifname"])
            removed.append(link["ifname"])
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for link in json.loads(run("ip", "-j", "addr") or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    for candidate in POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError(f"no free /24 left in {POOL} on this host")


@dataclass
class Network:
    subnet: ipaddress.IPv4Network
    bridge: str
    _used: set[ipaddress.IPv4Address] = field(default_factory=set)
    _next: int = 0

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @classmethod
    def create(cls, subnet: str | None = None) -> Network:
        sweep()
        net = ipaddress.IPv4Network(subnet) if subnet else _free_subnet()
        if net.prefixlen != 24:
            raise ValueError(f"--subnet {net}: a /24 is expected")
        bridge = f"dcbr{net.network_address.packed[2]}"
        run("ip", "link", "add", bridge, "type", "bridge")
        try:
            run("ip", "link", "set", bridge, "alias", f"{ALIAS}{os.getpid()}")
            run("ip", "addr", "add", f"{net.network_address + 1}/24", "dev", bridge)
            run("ip", "link", "set", bridge, "up")
        except RuntimeError:
            run("ip", "link", "del", bridge)
            raise
        return cls(net, bridge)

    def allocate(self) -> ipaddress.IPv4Address:
        """The next free address after the last one handed out: an address is not reused at once, so
        no neighbour still holds the old Pod's MAC for it (a new Pod would be unreachable for up to a
        minute, until that ARP entry expired)."""
        hosts = list(self.subnet.hosts())[1:]
        for i in range(len(hosts)):
            host = hosts[(self._next + i) % len(hosts)]
            if host not in self._used:
                self._used.add(host)
                self._next = (self._next + i + 1) % len(hosts)
                return host
        raise RuntimeError(f"no free address left in {self.subnet}")

    def release(self, address: ipaddress.IPv4Address) -> None:
        self._used.discard(address)

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


@dataclass
class PodNetwork:
    """One Pod's namespaces (held by its pause process) and address."""

    network: Network
    address: ipaddress.IPv4Address
    pause: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.pause.pid

    @property
    def host_interface(self) -> str:
        return f"dc{self.address.packed[2]}p{self.address.packed[3]}"

    @classmethod
    async def create(cls, network: Network, hostname: str) -> PodNetwork:
        address = network.allocate()
        pause = await asyncio.create_subprocess_exec(
            "unshare",
            "--net",
            "--uts",
            "--",
            sys.executable,
            "-c",
            _PAUSE,
            hostname[:63],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # Not in the runner's process group: a signal meant for the runner must not reach its Pods.
            start_new_session=True,
        )
        pod = cls(network, address, pause)
        try:
            assert pause.stdout is not None
            line = await asyncio.wait_for(pause.stdout.readline(), 10)
            if line.strip() != b"ready":
                raise RuntimeError(f"the pause process of {hostname} did not start")
            veth = pod.host_interface
            # One left by a Pod of a runner that was killed goes with its namespace, which the kernel may
            # not have freed yet.
            with contextlib.suppress(RuntimeError):
                await arun("ip", "link", "del", veth)
            await arun(
                "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pod.pid)
            )
            await arun("ip", "link", "set", veth, "master", network.bridge, "up")
            # Like containerd: any user may listen on any port inside the Pod.
            await arun(
                "nsenter",
                f"--target={pod.pid}",
                "--net",
                "sh",
                "-ec",
                f"ip addr add {address}/24 dev eth0; ip link set eth0 up; ip link set lo up; "
                "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
            )
            # When the address comes round again, the host must not use an older Pod's MAC for it.
            await arun("ip", "neigh", "flush", "to", str(address))
        except BaseException:
            await pod.delete()
            raise
        return pod

    async def delete(self) -> None:
        send(self.pause.pid, signal.SIGKILL)
        await self.pause.wait()
        # Normally gone with the namespace already.
        gone = await asyncio.create_subprocess_exec(
            "ip", "link", "del", self.host_interface, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await gone.wait()
        self.network.release(self.address)
