"""Cluster DNS as a hosts file: Service names resolve to the addresses of the Pods behind them.

`<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local` name the ready Pods a Service selects (all Pods with an
address when it publishes not-ready addresses), or the addresses of its EndpointSlices when it has no
selector (how an "external" service on the host gets a cluster name). A StatefulSet Pod with a hostname
and subdomain is `<pod>.<svc>.<ns>.svc` too. There is no kube-proxy: a name leads straight to the Pods,
so a Service is reachable on its port only where the port equals the target port.

The same file is /etc/hosts of every Pod and of the operator (bind mounts), and is rewritten in place so
those mounts see each change.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from devcluster.api import meta

HEADER = "# devcluster: Service and Pod names (rewritten by the runner)\n"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _addressable(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (
        bool(status.get("podIP"))
        and status.get("phase") == "Running"
        and not meta(pod).get("deletionTimestamp")
    )


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _names(*parts: str) -> list[str]:
    base = ".".join(parts)
    return [f"{base}.svc", f"{base}.svc.cluster.local"]


def entries(
    services: list[dict[str, Any]], slices: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> dict[str, list[str]]:
    """address -> names."""
    result: dict[str, set[str]] = defaultdict(set)
    pods_by_ns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in pods:
        if _addressable(pod):
            pods_by_ns[meta(pod)["namespace"]].append(pod)
    slices_by_service: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in slices:
        owner = (meta(s).get("labels") or {}).get("kubernetes.io/service-name")
        if owner:
            slices_by_service[(meta(s)["namespace"], owner)].append(s)
    headless: set[tuple[str, str]] = set()
    for svc in services:
        ns, name, spec = meta(svc)["namespace"], meta(svc)["name"], svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        if spec.get("clusterIP") == "None":
            headless.add((ns, name))
        selector = spec.get("selector") or {}
        addresses: list[str] = []
        if selector:
            every = spec.get("publishNotReadyAddresses", False)
            for pod in pods_by_ns[ns]:
                if _selects(selector, meta(pod).get("labels") or {}) and (every or _ready(pod)):
                    addresses.append(pod["status"]["podIP"])
        else:
            for s in slices_by_service[(ns, name)]:
                for endpoint in s.get("endpoints") or []:
                    if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                        addresses += endpoint.get("addresses") or []
        for address in addresses:
            result[address].update(_names(name, ns))
    for ns, ns_pods in pods_by_ns.items():
        for pod in ns_pods:
            spec = pod["spec"]
            if spec.get("hostname") and (ns, spec.get("subdomain")) in headless:
                result[pod["status"]["podIP"]].update(_names(spec["hostname"], spec["subdomain"], ns))
    return {address: sorted(names) for address, names in result.items()}


def render(base: str, table: dict[str, list[str]]) -> str:
    lines = [f"{address} {' '.join(names)}" for address, names in sorted(table.items())]
    return base.rstrip("\n") + "\n\n" + HEADER + "".join(f"{line}\n" for line in lines)


class HostsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = Path("/etc/hosts").read_text()
        self.text = ""
        path.write_text(render(self.base, {}))
        path.chmod(0o644)

    def update(self, table: dict[str, list[str]]) -> bool:
        """Rewrite the file in place (same inode: the bind mounts follow) when its content changes."""
        text = render(self.base, table)
        if text == self.text:
            return False
        with self.path.open("r+") as f:
            f.write(text)
            f.truncate()
        self.text = text
        return True
