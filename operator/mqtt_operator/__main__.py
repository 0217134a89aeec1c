"""The one command of the image: `mqtt-operator run` (the operator); later `bridge` (the workers)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mqtt_operator import __version__, logs
from mqtt_operator.settings import OperatorSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqtt-operator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable); default: $WATCH_NAMESPACES or $POD_NAMESPACE",
    )
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="json", choices=["json", "text"])
    run.add_argument("--health-port", type=int, default=8080, help="port of /healthz; 0 turns it off")

    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    namespaces = tuple(args.namespace) or (
        () if args.all_namespaces else OperatorSettings.default_namespaces()
    )
    try:
        settings = OperatorSettings(
            namespaces=namespaces,
            all_namespaces=args.all_namespaces,
            log_level=args.log_level,
            log_format=args.log_format,
            health_port=args.health_port,
        )
    except ValueError as err:
        print(f"mqtt-operator: {err}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    from mqtt_operator.runner import run  # kopf is imported only when the operator really runs

    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
