"""Starting and stopping one node: its namespaces, its programs, its images and add-ons, and the sweep
that proves nothing is left behind.

Every program of the node runs in one network and one mount namespace, held open by a `sleep` process
(the holder) and entered with nsenter. The host reaches the node over a veth pair (`mqn<holder pid>`),
with routes to the Pod and Service ranges through it. Stopping kills every process in the node's mount
namespace and in its cgroups; the namespaces, their mounts, iptables rules and the veth pair then go
with the last process, and the cgroups are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from localnode import addons, config, pki
from localnode.components import Component, components
from localnode.layout import IMAGE_STORE, NODE_NAME, Addresses, Layout
from testenv.kube import kubectl
from testenv.paths import TESTENV_DIR, run_dir
from testenv.pki import kubeconfig_text
from testenv.process import Server, StartError

HOLDER_MARK = "mqtt-node-holder:"
# In the run folder: the PID of the process that started the node (and stops it).
OWNER_FILE = "owner.pid"
CGROUP_ROOT = Path("/sys/fs/cgroup")
IMAGES_MANIFEST = TESTENV_DIR / "images" / "images.json"


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _owner_alive(root: Path) -> bool:
    """Whether the process that started the node of this run folder still runs."""
    try:
        owner = int((root / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return owner != os.getpid() and Path(f"/proc/{owner}").exists()


def _namespace(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def images() -> dict[str, dict[str, str]]:
    """The images `make images` built: name -> {ref, archive, inputs}."""
    if not IMAGES_MANIFEST.exists():
        raise StartError(f"no images built ({IMAGES_MANIFEST} is missing): run `make images`")
    manifest: dict[str, dict[str, str]] = json.loads(IMAGES_MANIFEST.read_text())
    return manifest


@dataclass
class Node:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="node-", dir=run_dir())))
    addresses: Addresses = field(default_factory=Addresses)
    # Keep the run folder (logs, etcd, volumes) after stop: E2E_KEEP=1.
    keep: bool = False
    holder: subprocess.Popen[bytes] | None = None
    servers: dict[str, Server] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.admin_kubeconfig

    @property
    def host_link(self) -> str:
        assert self.holder is not None
        return f"mqn{self.holder.pid}"

    # -- running things inside the node

    def enter(self, *argv: str) -> list[str]:
        """The command line that runs argv inside the node's network and mount namespaces."""
        assert self.holder is not None, "the node is not started"
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.enter(*argv), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed in the node ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """containerd's own client, in the Kubernetes namespace of containerd."""
        address = str(self.layout.containerd_socket)
        return self.run(
            "ctr", "--address", address, "--namespace", "k8s.io", *args, check=check, timeout=timeout
        )

    def task_pid(self, namespace: str, pod: str, container: str | None = None) -> int:
        """The PID of a Pod's container (its first when `container` is None) as this machine sees it:
        the node has no PID namespace of its own."""
        found = json.loads(self.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout)
        statuses = found["status"]["containerStatuses"]
        status = next(s for s in statuses if container in (None, s["name"]))
        container_id = status["containerID"].removeprefix("containerd://")
        tasks = self.ctr("tasks", "ls").stdout.splitlines()
        return int(next(line.split()[1] for line in tasks if line.startswith(container_id)))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(manifests)
        )

    # -- start

    def start(self) -> Node:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _step(self, name: str, started: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - started, 1)
        return now

    def _start(self) -> None:
        t0 = t = time.monotonic()
        # One node per machine (one set of addresses and cgroups): a node whose owner still runs is
        # refused, one whose owner was killed before it could stop it is swept away.
        running = [(pid, root) for pid, root in holders() if _owner_alive(root)]
        if running:
            pid, root = running[0]
            raise StartError(
                f"another node runs on this machine (holder {pid}, folder {root}): stop it first "
                "(Ctrl-C in its make dev), or `python -m localnode sweep` to kill it"
            )
        sweep()
        built = images()
        certs = pki.ensure(self.addresses)
        self._write_files(certs)
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        self._namespaces()
        by_name = {c.name: c for c in components(self.layout, self.addresses, certs)}
        self._start_containerd(by_name["containerd"])
        self._clear_containers()
        self._import(built)
        t = self._step("containerd and images", t)
        self._server(by_name["etcd"])
        self._server(by_name["kube-apiserver"])
        self.kubeconfig.write_text(kubeconfig_text(self.addresses.api_server, certs, "admin", NODE_NAME))
        self._wait("kube-apiserver", lambda: self._readyz(certs), 120, "ready")
        t = self._step("api server ready", t)
        for name in ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
            self._server(by_name[name])
        self._wait("kubelet", self._node_ready, 120, "Ready")
        t = self._step("node ready", t)
        self.apply(addons.coredns(self.addresses, built["coredns"]["ref"]))
        self.apply(addons.local_path_provisioner(self.layout, built["local-path-provisioner"]["ref"]))
        self._until("cluster DNS (CoreDNS) answering", self._dns_answers, 120)
        self._step("dns answering", t)
        self._step("total", t0)

    def _write_files(self, certs: Path) -> None:
        layout = self.layout
        for d in (
            layout.etc / "cni",
            layout.logs,
            layout.var_log,
            layout.cni_state,
            layout.volumes,
            layout.sysctl_shadows,
            layout.kubelet_root,
            IMAGE_STORE,
        ):
            d.mkdir(parents=True, exist_ok=True)
        # Pods of users other than root read their volumes' parents (a clone in a 0700 temp folder).
        layout.volumes.chmod(0o755)
        files = {
            layout.etc / "containerd.toml": config.containerd_config(layout),
            layout.etc / "cni" / "10-mqtt-node.conflist": config.cni_conflist(layout, self.addresses),
            layout.etc / "kubelet.yaml": config.kubelet_config(layout, self.addresses, certs),
            layout.etc / "kube-proxy.yaml": config.kube_proxy_config(layout, self.addresses),
            layout.etc / "resolv.conf": config.resolv_conf(),
        }
        for component in ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
            files[layout.kubeconfig(component)] = kubeconfig_text(
                self.addresses.api_server, certs, component, NODE_NAME
            )
        for key, value in config.SYSCTL_SHADOWS.items():
            files[layout.sysctl_shadows / key.replace("/", ".")] = f"{value}\n"
        for path, text in files.items():
            path.write_text(text)

    def _namespaces(self) -> None:
        """The holder, its namespaces, the veth pair, the node's mounts and routes."""
        # exec -a names the holder after its run folder, so a sweep finds a node left behind.
        self.holder = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--mount",
                "--propagation",
                "private",
                "--",
                "bash",
                "-c",
                'exec -a "$0" sleep infinity',
                f"{HOLDER_MARK}{self.root}",
            ],
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while _namespace(self.holder.pid, "net") == _namespace("self", "net"):
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise StartError("the node's namespaces were not made (unshare --net --mount)")
            time.sleep(0.02)
        a, layout, link = self.addresses, self.layout, self.host_link
        _run(
            ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", str(self.holder.pid)]
        )
        _run(["ip", "addr", "add", f"{a.host_ip}/{a.prefix}", "dev", link])
        _run(["ip", "link", "set", link, "up"])
        shadows = [
            f"mount --bind {layout.sysctl_shadows / key.replace('/', '.')} /proc/sys/{key}"
            for key in config.SYSCTL_SHADOWS
        ]
        script = [
            # The node's own /run (sockets, containerd's state) and /var/log (the kubelet's links).
            "mount -t tmpfs -o mode=0755 mqtt-node-run /run",
            f"mount --bind {layout.var_log} /var/log",
            *shadows,
            "ip link set lo up",
            f"ip addr add {a.node_ip}/{a.prefix} dev eth0",
            "ip link set eth0 up",
            # Service addresses need a route before kube-proxy's DNAT applies; it leads back to the
            # host, which routes them here and forwards nothing (so nothing leaves the machine).
            f"ip route add default via {a.host_ip}",
            "sysctl -qw net.ipv4.ip_forward=1",
            "sysctl -qw net.bridge.bridge-nf-call-iptables=1",
        ]
        self.run("sh", "-ec", "\n".join(script))
        for cidr in (a.pods, a.services):
            _run(["ip", "route", "replace", cidr, "via", a.node_ip, "dev", link])
        for hierarchy in _cgroup_hierarchies():
            top = hierarchy / NODE_NAME
            top.mkdir(exist_ok=True)
            # A new v1 cpuset has no CPUs or memory nodes until given its parent's.
            for key in ("cpuset.cpus", "cpuset.mems"):
                parent_has = (hierarchy / key).exists()
                if parent_has and (top / key).exists() and not (top / key).read_text().strip():
                    (top / key).write_text((hierarchy / key).read_text())

    def _start_containerd(self, component: Component) -> None:
        self._server(component)
        self._wait(
            "containerd",
            lambda: self.ctr("version", check=False, timeout=10).returncode == 0,
            60,
            "answering",
        )

    def _server(self, component: Component) -> None:
        server = Server(
            component.name, self.enter(*component.argv), self.layout.logs / f"{component.name}.log"
        )
        self.servers[component.name] = server
        server.start()

    def _wait(self, name: str, ready: Any, timeout: float, what: str) -> None:
        self.servers[name].wait_until(ready, timeout, what)

    def _until(self, what: str, ready: Any, timeout: float) -> None:
        """Wait for something the cluster does (not one process): fail with what its Pods say."""
        deadline = time.monotonic() + timeout
        while not ready():
            for server in self.servers.values():
                if not server.running:
                    raise StartError(f"{server.name} exited while waiting for {what}; log {server.log}")
            if time.monotonic() > deadline:
                pods = self.kubectl("get", "pods", "--all-namespaces", "-o", "wide", check=False)
                raise StartError(f"no {what} within {timeout:.0f}s; the Pods:\n{pods.stdout}{pods.stderr}")
            time.sleep(0.5)

    def _clear_containers(self) -> None:
        """Containers a killed node left in the kept image store: the new kubelet must not meet them."""
        for cid in self.ctr("containers", "list", "--quiet").stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
            self.ctr("tasks", "delete", "--force", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)

    def _import(self, built: dict[str, dict[str, str]]) -> None:
        """Each image archive into containerd, unless the same inputs were imported before."""
        stamps = IMAGE_STORE / "imported.json"
        imported: dict[str, str] = json.loads(stamps.read_text()) if stamps.exists() else {}
        present = set(self.ctr("images", "list", "--quiet").stdout.split())
        for name, image in built.items():
            if imported.get(name) == image["inputs"] and _normalized(image["ref"]) in present:
                continue
            self.ctr("images", "import", image["archive"], timeout=600)
            imported[name] = image["inputs"]
            stamps.write_text(json.dumps(imported, indent=2))

    def _readyz(self, certs: Path) -> bool:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        ctx.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))
        url = f"{self.addresses.api_server}/readyz"
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # noqa: S310 - the node's address
            return bool(resp.status == 200)

    def _node_ready(self) -> bool:
        proc = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conditions = json.loads(proc.stdout)["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _dns_answers(self) -> bool:
        return resolve(self.addresses.dns_service_ip, "kubernetes.default.svc.cluster.local") == (
            self.addresses.kubernetes_service_ip
        )

    # -- restart of the runtime

    def restart_runtime(self) -> None:
        """The node's runtime as a crash and reboot leave it: the kubelet, containerd, every shim and every
        container SIGKILLed at once (nothing saves, nothing stops cleanly), then containerd and the kubelet
        started again, which find every Pod's sandbox dead and start the Pods anew. The control plane
        (etcd, the API server, the controllers) and kube-proxy keep running, as they would on the other
        machines of a cluster."""
        assert self.holder is not None, "the node is not started"
        runtime = ("kubelet", "containerd")
        for name in runtime:
            self.servers[name].kill()
        keep = {self.holder.pid} | {
            server.proc.pid
            for name, server in self.servers.items()
            if name not in runtime and server.proc is not None
        }
        deadline = time.monotonic() + 30
        node_pids = _mount_namespace_pids(self.holder.pid)
        while pids := {p for p in node_pids | _cgroup_pids() if not _kept(p, keep)}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node's runtime still has processes after SIGKILL: {sorted(pids)}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            node_pids = _mount_namespace_pids(self.holder.pid)
        for name in runtime:
            self.servers[name].stop(timeout=5)
        by_name = {c.name: c for c in components(self.layout, self.addresses, pki.ensure(self.addresses))}
        self._start_containerd(by_name["containerd"])
        restarted = datetime.now(UTC)
        self._server(by_name["kubelet"])
        # The Node stays Ready in the API while its kubelet is briefly gone (the grace period is 40 s):
        # only a lease renewed after this start says the new kubelet is up.
        self._wait("kubelet", lambda: self._lease_renewed_since(restarted), 120, "renewing its lease")

    def _lease_renewed_since(self, when: datetime) -> bool:
        proc = self.kubectl("get", "lease", "-n", "kube-node-lease", NODE_NAME, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        renewed = json.loads(proc.stdout)["spec"].get("renewTime")
        return bool(renewed) and datetime.fromisoformat(renewed.replace("Z", "+00:00")) > when

    # -- stop

    def stop(self) -> None:
        """SIGKILL for everything at once, as a power cut would: nothing of a test node is worth a
        graceful stop, and the next start clears the containers containerd still remembers."""
        if self.holder is not None:
            _kill_node(self.holder.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(10)
            for server in self.servers.values():
                server.stop(timeout=5)
            self.holder = None
        _remove_cgroups()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _normalized(ref: str) -> str:
    """containerd's name for an image reference (docker.io/library/ added to short names)."""
    name = ref.split("@")[0]
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def _cgroup_hierarchies() -> list[Path]:
    """Where the kubelet makes its cgroups: the one cgroup v2 hierarchy, or each v1 hierarchy (and
    the v2 one a hybrid host mounts beside them)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and (p / "cgroup.procs").exists()]


def _cgroup_dirs(top: Path) -> list[Path]:
    """`top` and every cgroup below it. os.walk, not Path.rglob: the kubelet and runc remove cgroups
    while the node stops, and a folder gone mid-walk must be skipped, not raised."""
    return [Path(d) for d, _, _ in os.walk(top)]


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for hierarchy in _cgroup_hierarchies():
        for group in _cgroup_dirs(hierarchy / NODE_NAME):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
    return pids


def _mount_namespace_pids(holder: int) -> set[int]:
    ns = _namespace(holder, "mnt")
    if ns is None:
        return set()
    return {int(p.name) for p in Path("/proc").glob("[0-9]*") if _namespace(p.name, "mnt") == ns}


def _kept(pid: int, servers: set[int]) -> bool:
    """`pid` is one of `servers` or runs in a server's process group (kube-proxy's iptables-restore)."""
    try:
        return pid in servers or os.getpgid(pid) in servers
    except ProcessLookupError:
        return True  # gone already


def _kill_node(holder: int) -> None:
    """SIGKILL every process of the node until none is left: its daemons and shims share the holder's
    mount namespace, its containers are in its cgroups."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = (_mount_namespace_pids(holder) | _cgroup_pids()) - {holder}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder, signal.SIGKILL)


def _remove_cgroups() -> None:
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / NODE_NAME
        if not top.is_dir():
            continue
        # Deepest first: a cgroup folder can be removed only once it has no children.
        for d in sorted(_cgroup_dirs(top), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def holders() -> list[tuple[int, Path]]:
    """Every node holder on this machine, with its run folder."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        cmdline = _cmdline(proc.name)
        if cmdline.startswith(HOLDER_MARK):
            found.append((int(proc.name), Path(cmdline[len(HOLDER_MARK) :].split(" ")[0])))
    return found


def sweep() -> list[str]:
    """Stop every node left running on this machine (by a killed test run); say what was stopped."""
    stopped = []
    for pid, root in holders():
        _kill_node(pid)
        stopped.append(f"node {root} (holder {pid})")
    _remove_cgroups()
    return stopped


def leftovers() -> list[str]:
    """What a stopped node must not leave: processes, cgroups, host links, mounts under .testenv."""
    found = [f"holder {pid} ({root})" for pid, root in holders()]
    found += [f"cgroup {h / NODE_NAME}" for h in _cgroup_hierarchies() if (h / NODE_NAME).exists()]
    links = _run(["ip", "-o", "link", "show"]).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if ": mqn" in line]
    # The node's mounts live in its own mount namespace; one seen here escaped it.
    mine = (str(run_dir()), str(IMAGE_STORE))
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    found += [f"mount {m}" for m in mounts if m.startswith(mine)]
    return found


def resolve(server: str, name: str, timeout: float = 2, port: int = 53) -> str | None:
    """The first A record for `name` from the DNS server at `server` (one UDP query), or None."""
    query = struct.pack(">HHHHHH", 0x4D51, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (server, port))
            reply = sock.recv(512)
        except OSError:
            return None
    answers = struct.unpack(">H", reply[6:8])[0]
    offset = len(query)
    for _ in range(answers):
        offset = _past_name(reply, offset)
        rtype, _class, _ttl, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        data = reply[offset + 10 : offset + 10 + length]
        if rtype == 1 and length == 4:
            return socket.inet_ntoa(data)
        offset += 10 + length
    return None


def _past_name(message: bytes, offset: int) -> int:
    """The offset just past the (possibly compressed) domain name starting at `offset`."""
    while message[offset] != 0:
        if message[offset] & 0xC0 == 0xC0:  # a pointer ends the name
            return offset + 2
        offset += message[offset] + 1
    return offset + 1
