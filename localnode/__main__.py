"""`python -m localnode dev` (make dev): the node with Kafka, RocketMQ, the example function and the operator
installed by its chart, until Ctrl-C. `up`: the bare node. `sweep`: stop nodes left behind."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from localnode import system
from localnode.node import Node, leftovers, sweep
from testenv.paths import BIN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localnode", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, about in (
        ("dev", "the node with Kafka, RocketMQ, the example function and the operator, until Ctrl-C"),
        ("up", "the bare node (DNS, storage), until Ctrl-C"),
    ):
        command = sub.add_parser(name, help=about)
        command.add_argument(
            "--keep", action="store_true", help="keep the node's folder (logs, etcd) afterwards"
        )
    sub.add_parser("sweep", help="stop every node left running on this machine")
    sub.add_parser("check", help="list what stopped nodes left behind; exit 1 if anything")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        for line in sweep():
            print(f"stopped {line}")
        return 0
    if args.command == "check":
        found = leftovers()
        for line in found:
            print(f"left behind: {line}")
        return 1 if found else 0
    node = Node(keep=args.keep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        node.start()
        print(f"node ready: {node.timings}", flush=True)
        if args.command == "dev":
            system.install_services(node)
            system.install_function(node, "default")
            system.install_operator(node)
            print("operator installed by its chart in namespace mqtt-system", flush=True)
        # kubectl first, then the venv's console scripts (kubectl-mqtt, the kubectl plugin).
        venv_bin = Path(sys.executable).parent
        print(f"export KUBECONFIG={node.kubeconfig} PATH={BIN}:{venv_bin}:$PATH", flush=True)
        print("Ctrl-C stops the node and removes everything it made.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C (or `timeout` passing one on) must not cut the stop short and leave a node.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
