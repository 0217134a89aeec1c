"""`python -m devcluster dev` (what `make dev` runs), `... runner` (the runner alone), `... sweep`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from devcluster.procs import die_with_parent


def _runner(args: argparse.Namespace) -> int:
    from devcluster.runner import Runner

    if os.geteuid() != 0:
        print("devcluster runner: needs root (network namespaces, bridges, mounts)", file=sys.stderr)
        return 2
    # Started by `make dev` or a test fixture: if that parent dies, stop cleanly rather than linger.
    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s devcluster %(levelname)s %(message)s", stream=sys.stdout
    )
    for noisy in ("httpx", "httpx2", "httpcore"):  # a line per request
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if os.getppid() != parent:
            stop.set()
        namespaces = None if args.all_namespaces else (args.namespace or ["default"])
        await Runner(Path(args.kubeconfig), namespaces, Path(args.state_dir), args.subnet).run(stop)

    asyncio.run(main())
    return 0


def _sweep(_: argparse.Namespace) -> int:
    from devcluster.network import sweep

    removed = sweep()
    print(f"removed {len(removed)} bridge(s) of runners that are gone: {' '.join(removed) or '-'}")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from devcluster.dev import dev

    return dev(args.namespace)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dev", help="control plane, Kafka, CRDs, runner and operator in the foreground")
    d.add_argument(
        "--namespace", action="append", default=[], help="namespace to run (repeatable); default: default"
    )
    d.set_defaults(func=_dev)
    r = sub.add_parser(
        "runner", help="run the StatefulSets and Deployments of these namespaces as local processes"
    )
    r.add_argument("--kubeconfig", required=True)
    r.add_argument("--state-dir", required=True, help="volumes, logs, claims, the hosts file, network.json")
    r.add_argument("--namespace", "-n", action="append", default=[], help="repeatable; default: default")
    r.add_argument("--all-namespaces", "-A", action="store_true")
    r.add_argument("--subnet", help="the Pods' /24 (default: the first free one in 10.244.0.0/16)")
    r.set_defaults(func=_runner)
    s = sub.add_parser("sweep", help="remove the bridges left by runners that were killed")
    s.set_defaults(func=_sweep)
    args = p.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
