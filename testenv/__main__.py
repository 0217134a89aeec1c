"""`python -m testenv dev`: the local control plane, the CRDs, and the operator in the foreground.

No kubelet runs here, so for each MqttInstance that appears a real Mosquitto is started on a free
loopback port from the mosquitto.conf the operator rendered (paths and port changed, nothing else),
and its address is handed to the operator through --broker-addresses-file. The control plane keeps
its state in .testenv/run/dev, so objects survive a restart of `make dev`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from testenv.kube import ControlPlane
from testenv.mosquitto import Mosquitto, from_rendered
from testenv.paths import BIN, REPO, run_dir
from testenv.process import free_port

ADMIN = "mqtt-operator-admin"


class DevBrokers(threading.Thread):
    """Starts a local broker for every MqttInstance whose config and admin Secret exist."""

    def __init__(self, cp: ControlPlane, addresses: Path) -> None:
        super().__init__(daemon=True)
        self.cp = cp
        self.addresses = addresses
        self.brokers: dict[str, Mosquitto] = {}
        self.stopping = threading.Event()

    def _get(self, *args: str) -> dict[str, Any] | None:
        proc = self.cp.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def _start(self, instance: dict[str, Any]) -> None:
        ns, name = instance["metadata"]["namespace"], instance["metadata"]["name"]
        spec = instance["spec"]
        mqtt = (spec.get("listeners") or {}).get("mqtt")
        config = self._get("-n", ns, "configmap", f"{name}-config")
        secret = self._get("-n", ns, "secret", f"{name}-admin")
        if mqtt is None or config is None or secret is None:
            return
        admin = (ADMIN, base64.b64decode(secret["data"]["password"]).decode())
        port = free_port()
        broker = from_rendered(
            config["data"]["mosquitto.conf"],
            mqtt["port"],
            port,
            admin if spec.get("authorization", {}).get("enabled", True) else None,
        ).start()
        self.brokers[f"{ns}/{name}"] = broker
        with self.addresses.open("a") as f:
            f.write(f"{ns}/{name}=127.0.0.1:{port}\n")
        print(
            f"[dev] broker for MqttInstance {ns}/{name} listening on 127.0.0.1:{port} "
            f"(admin password in Secret {name}-admin)",
            flush=True,
        )

    def run(self) -> None:
        while not self.stopping.wait(2):
            listed = self._get("mqttinstances.mqtt-operator.io", "-A") or {"items": []}
            for instance in listed["items"]:
                key = f"{instance['metadata']['namespace']}/{instance['metadata']['name']}"
                if key not in self.brokers:
                    try:
                        self._start(instance)
                    except Exception as err:  # keep the loop alive; the next round tries again
                        print(f"[dev] could not start a broker for {key}: {err}", flush=True)

    def stop(self) -> None:
        self.stopping.set()
        for broker in self.brokers.values():
            broker.stop()


def dev(namespace: str) -> int:
    cp = ControlPlane(root=run_dir() / "dev")
    cp.root.mkdir(parents=True, exist_ok=True)
    cp.start()
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        print(
            f"\nLocal control plane at {cp.url}; CRDs installed. In another shell:\n\n"
            f"    export KUBECONFIG={cp.kubeconfig} PATH={BIN}:$PATH\n"
            f"    kubectl apply -n {namespace} -f examples/\n"
            f"    kubectl get mqtt -n {namespace}\n\n"
            f"The operator runs below (Ctrl-C stops it and the control plane).\n",
            flush=True,
        )
        addresses = cp.root / "broker-addresses"
        addresses.write_text("")
        brokers = DevBrokers(cp, addresses)
        brokers.start()
        env_kubeconfig = {"KUBECONFIG": str(cp.kubeconfig)}
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mqtt_operator",
                "run",
                "--namespace",
                namespace,
                "--log-format",
                "text",
                "--health-port",
                "0",
                "--broker-addresses-file",
                str(addresses),
            ],
            env={**os.environ, **env_kubeconfig},
        )
        try:
            return operator.wait()
        except KeyboardInterrupt:
            operator.terminate()
            return operator.wait(30)
        finally:
            brokers.stop()
    finally:
        cp.stop(keep=True)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m testenv")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dev", help="control plane + CRDs + operator in the foreground")
    d.add_argument("--namespace", default="default")
    args = p.parse_args()
    return dev(args.namespace)


if __name__ == "__main__":
    sys.exit(main())
