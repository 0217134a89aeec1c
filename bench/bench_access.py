"""Benchmark: N AuthUsers and N AclPolicies applied at once until all are Ready (N = 1,000, and 5,000
with `--count 5000`).

Real components: kube-apiserver + etcd, the operator as a process (log level info), and Mosquitto
run with the operator's rendered mosquitto.conf. Objects are created concurrently through the API
(as a GitOps tool applying a folder would), the clock stops when the last one reports Ready=True, as
seen by a watch on each kind (a watch, not repeated lists: listing thousands of objects several times
a second would cost the API server, on the same two cores, more than the operator's own work).
"""

from __future__ import annotations

import argparse
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
from mqtt_operator.settings import OBJECT_WORKERS
from testenv.kube import ControlPlane
from testenv.mosquitto import from_rendered
from testenv.operator import OperatorProcess
from testenv.process import free_port

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


def _ready(obj: Any) -> bool:
    conditions = ((obj.get("status") or {}).get("conditions")) or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def _watch_ready(client: AsyncClient, kind: Any, count: int) -> float:
    """time.monotonic() when the last of `count` objects of `kind` reports Ready=True."""
    ready: set[str] = set()
    async for _, obj in client.watch(kind, namespace=NS):
        raw = obj.to_dict() if hasattr(obj, "to_dict") else obj
        name = raw["metadata"]["name"]
        if _ready(raw):
            ready.add(name)
        else:
            ready.discard(name)
        if len(ready) == count:
            return time.monotonic()
    raise RuntimeError("the watch ended")


async def create_all_until_ready(kubeconfig: Path, count: int) -> tuple[float, float, float]:
    """(start, creation done, all Ready) on time.monotonic()."""
    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), namespace=NS)
    gate = asyncio.Semaphore(32)

    async def create(obj: Any) -> None:
        async with gate:
            await client.create(obj)

    users = [
        AuthUser(metadata={"name": f"dev-{i:04d}"}, spec={"instanceRef": {"name": "devices"}})
        for i in range(count)
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
        for i in range(count)
    ]
    # The watches open before the first create (the namespace is empty: a watch from "now" misses nothing
    # once its request is in; a second is plenty on loopback).
    watches = [asyncio.create_task(_watch_ready(client, kind, count)) for kind in (AuthUser, AclPolicy)]
    await asyncio.sleep(1)
    start = time.monotonic()
    await asyncio.gather(*(create(o) for o in [*users, *policies]))
    created = time.monotonic()
    done = await asyncio.wait_for(asyncio.gather(*watches), timeout=1800)
    await client.close()
    return start, created, max(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="AuthUsers, and as many AclPolicies")
    parser.add_argument(
        "--object-workers",
        type=int,
        help="the operator's --object-workers (default: its own); when given, figures are printed only",
    )
    args = parser.parse_args()
    count = args.count
    workers = ("--object-workers", str(args.object_workers)) if args.object_workers else ()
    cp = ControlPlane().start()
    port = free_port()
    operator = None
    broker = None
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        cp.kubectl("create", "namespace", NS)
        operator = OperatorProcess(
            cp,
            (NS,),
            log_level="info",
            extra_args=("--broker-address", f"{NS}/devices=127.0.0.1:{port}", *workers),
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
        start, created_at, ready_at = asyncio.run(create_all_until_ready(cp.kubeconfig, count))
        created, elapsed = created_at - start, ready_at - start
        rss = peak_rss_mib(pid)
        procs = {
            "operator": pid,
            "kube-apiserver": cp.apiserver.proc.pid,
            "etcd": cp.etcd.proc.pid,  # type: ignore[union-attr]
            "mosquitto": broker.server.proc.pid,
        }  # type: ignore[union-attr]
        print("cpu seconds:", {name: round(cpu_seconds(p), 1) for name, p in procs.items()})
        how = (
            f"{count} AuthUsers (generated passwords) +"
            f" {count} AclPolicies created by 32 concurrent API calls "
            f"(creation alone took {created:.1f} s), until every one is Ready=True (seen by a watch); "
            "real kube-apiserver, Mosquitto 2.0 dynamic security; the operator's default "
            f"--object-workers ({OBJECT_WORKERS})"
        )
        suffix = "" if count == 1000 else f"_{count}"
        figures = {
            f"users_acls_{count}_ready_s": {"value": round(elapsed, 1), "unit": "s", "how": how},
            f"operator_peak_rss_mib{suffix}": {
                "value": round(rss, 1),
                "unit": "MiB",
                "how": f"VmHWM of the operator process at the end of the {count} + {count} run",
            },
        }
        if not workers:
            record(figures)
        print(
            f"users_acls_{count}_ready_s={elapsed:.1f} (create {created:.1f}) "
            f"operator_peak_rss_mib{suffix}={rss:.1f}"
        )
    finally:
        if operator:
            operator.stop()
        if broker:
            broker.stop()
        cp.stop()


if __name__ == "__main__":
    main()
