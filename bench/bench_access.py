"""Benchmark: 1,000 AuthUsers and 1,000 AclPolicies applied at once until all are Ready.

Real components: kube-apiserver + etcd, the operator as a process (log level info), and Mosquitto
run with the operator's rendered mosquitto.conf. Objects are created concurrently through the API
(as a GitOps tool applying a folder would), the clock stops when the last one reports Ready=True.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds, peak_rss_mib, record
from testenv.kube import ControlPlane
from testenv.mosquitto import from_rendered
from testenv.operator import OperatorProcess
from testenv.process import free_port

COUNT = 1000
NS = "bench"
REPO = Path(__file__).resolve().parents[1]
AuthUser = create_namespaced_resource("mqtt-operator.io", "v1alpha1", "AuthUser", "authusers")
AclPolicy = create_namespaced_resource("mqtt-operator.io", "v1alpha1", "AclPolicy", "aclpolicies")


def wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def get_json(cp: ControlPlane, *args: str) -> dict[str, Any] | None:
    proc = cp.kubectl("get", "-n", NS, *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


async def create_all(kubeconfig: Path) -> None:
    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), namespace=NS)
    gate = asyncio.Semaphore(32)

    async def create(obj: Any) -> None:
        async with gate:
            await client.create(obj)

    users = [
        AuthUser(metadata={"name": f"dev-{i:04d}"}, spec={"instanceRef": {"name": "devices"}})
        for i in range(COUNT)
    ]
    policies = [
        AclPolicy(
            metadata={"name": f"dev-{i:04d}"},
            spec={
                "instanceRef": {"name": "devices"},
                "users": [f"dev-{i:04d}"],
                "rules": [
                    {"effect": "allow", "actions": ["publish"], "topics": [f"devices/dev-{i:04d}/#"]},
                    {
                        "effect": "allow",
                        "actions": ["subscribe", "receive"],
                        "topics": [f"devices/dev-{i:04d}/cmd"],
                    },
                ],
            },
        )
        for i in range(COUNT)
    ]
    await asyncio.gather(*(create(o) for o in [*users, *policies]))
    await client.close()


def not_ready(cp: ControlPlane) -> int:
    missing = 0
    for resource in ("authusers.mqtt-operator.io", "aclpolicies.mqtt-operator.io"):
        items = (get_json(cp, resource) or {}).get("items", [])
        ready = sum(
            1
            for o in items
            for c in (o.get("status") or {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        )
        missing += COUNT - ready
    return missing


def main() -> None:
    cp = ControlPlane().start()
    port = free_port()
    operator = None
    broker = None
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        cp.kubectl("create", "namespace", NS)
        operator = OperatorProcess(
            cp, (NS,), log_level="info", extra_args=("--broker-address", f"{NS}/devices=127.0.0.1:{port}")
        ).start()
        cp.kubectl(
            "apply",
            "-n",
            NS,
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "mqtt-operator.io/v1alpha1",
                    "kind": "MqttInstance",
                    "metadata": {"name": "devices"},
                    "spec": {"listeners": {"mqtt": {"port": 1883}}, "persistence": {"enabled": False}},
                }
            ),
        )
        conf = wait("config", lambda: get_json(cp, "configmap", "devices-config"))["data"]["mosquitto.conf"]
        admin = wait("admin", lambda: get_json(cp, "secret", "devices-admin"))
        password = base64.b64decode(admin["data"]["password"]).decode()
        broker = from_rendered(conf, 1883, port, ("mqtt-operator-admin", password)).start()
        wait(
            "instance ready",
            lambda: (
                "BrokerReady"
                in cp.kubectl(
                    "get",
                    "-n",
                    NS,
                    "mqttinstances.mqtt-operator.io",
                    "devices",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].reason}",
                ).stdout
            ),
        )
        assert operator.server is not None and operator.server.proc is not None
        pid = operator.server.proc.pid
        start = time.monotonic()
        asyncio.run(create_all(cp.kubeconfig))
        created = time.monotonic() - start
        wait("all ready", lambda: not_ready(cp) == 0, timeout=600)
        elapsed = time.monotonic() - start
        rss = peak_rss_mib(pid)
        procs = {
            "operator": pid,
            "kube-apiserver": cp.apiserver.proc.pid,
            "etcd": cp.etcd.proc.pid,  # type: ignore[union-attr]
            "mosquitto": broker.server.proc.pid,
        }  # type: ignore[union-attr]
        print("cpu seconds:", {name: round(cpu_seconds(p), 1) for name, p in procs.items()})
        how = (
            f"{COUNT} AuthUsers (generated passwords) +"
            f" {COUNT} AclPolicies created by 32 concurrent API calls "
            f"(creation alone took {created:.1f} s), until every one is Ready=True; real kube-apiserver, "
            "Mosquitto 2.0 dynamic security"
        )
        record(
            {
                "users_acls_1000_ready_s": {"value": round(elapsed, 1), "unit": "s", "how": how},
                "operator_peak_rss_mib": {
                    "value": round(rss, 1),
                    "unit": "MiB",
                    "how": "VmHWM of the operator process at the end of that run",
                },
            }
        )
        print(f"users_acls_1000_ready_s={elapsed:.1f} (create {created:.1f}) operator_peak_rss_mib={rss:.1f}")
    finally:
        if operator:
            operator.stop()
        if broker:
            broker.stop()
        cp.stop()


if __name__ == "__main__":
    main()
