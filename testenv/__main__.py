"""`python -m testenv dev`: the local control plane, the CRDs, and the operator in the foreground.

The control plane keeps its state in .testenv/run/dev, so objects survive a restart of `make dev`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from testenv.kube import ControlPlane
from testenv.paths import BIN, REPO, run_dir


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
            ],
            env={**os.environ, **env_kubeconfig},
        )
        try:
            return operator.wait()
        except KeyboardInterrupt:
            operator.terminate()
            return operator.wait(30)
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
