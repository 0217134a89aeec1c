"""The one command of the image: `mqtt-operator run` (the operator), `mqtt-operator bridge` (a worker)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mqtt_operator import __version__, logs
from mqtt_operator.settings import (
    OBJECT_WORKERS,
    OperatorSettings,
    parse_broker_addresses,
    parse_worker_metrics_addresses,
)


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
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="port of the operator's Prometheus /metrics; 0 turns it off",
    )
    run.add_argument(
        "--broker-address",
        action="append",
        default=[],
        metavar="NS/NAME=HOST:PORT",
        help="reach this MqttInstance's broker at HOST:PORT instead of its Service DNS name "
        "(for an operator running outside the cluster); repeatable; also "
        "$MQTT_OPERATOR_BROKER_ADDRESSES, comma-separated",
    )
    run.add_argument(
        "--broker-addresses-file",
        metavar="PATH",
        help="a file of NS/NAME=HOST:PORT lines, re-read when it changes",
    )
    run.add_argument(
        "--drift-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often each broker is compared in full with the declared users and policies, "
        "and each connector's objects and connections are checked again",
    )
    run.add_argument(
        "--object-workers",
        type=int,
        default=OBJECT_WORKERS,
        metavar="N",
        help="how many objects are handled at once; the operator's memory grows with it "
        f"(default {OBJECT_WORKERS})",
    )
    run.add_argument(
        "--worker-image",
        default=os.environ.get("MQTT_OPERATOR_WORKER_IMAGE") or f"mqtt-operator:{__version__}",
        metavar="IMAGE",
        help="image of the bridge workers (the operator's own image; the chart sets it); "
        "also $MQTT_OPERATOR_WORKER_IMAGE",
    )
    run.add_argument(
        "--broker-image",
        default=os.environ.get("MQTT_OPERATOR_BROKER_IMAGE") or None,
        metavar="IMAGE",
        help="broker image of every MqttInstance whose spec.image is empty (default: "
        "eclipse-mosquitto); also $MQTT_OPERATOR_BROKER_IMAGE",
    )
    run.add_argument(
        "--exporter-image",
        default=os.environ.get("MQTT_OPERATOR_EXPORTER_IMAGE") or None,
        metavar="IMAGE",
        help="image of the broker's metrics exporter sidecar (spec.monitoring.exporter) of every "
        "MqttInstance that names none (default: the worker image, which runs `mqtt-operator "
        "broker-exporter`); also $MQTT_OPERATOR_EXPORTER_IMAGE",
    )
    run.add_argument(
        "--worker-metrics-address",
        action="append",
        default=[],
        metavar="NS/NAME=HOST:PORT[,HOST:PORT]",
        help="read the worker figures of this KafkaConnector, FunctionTrigger or ReplicationTask from "
        "these /metrics addresses instead of its Pods' IPs (for an operator running outside the "
        "cluster); repeatable",
    )

    bridge = sub.add_parser("bridge", help="run a bridge worker (the operator's connectors run it)")
    bridge.add_argument("--config", required=True, metavar="FILE", help="the worker's JSON config file")
    bridge.add_argument(
        "--replica-id",
        default=None,
        metavar="ID",
        help="this replica's stable name (its MQTT client id suffix); default: $POD_NAME, else the host name",
    )
    bridge.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    bridge.add_argument("--log-format", default="json", choices=["json", "text"])

    exporter = sub.add_parser(
        "broker-exporter",
        help="serve a broker's $SYS figures for Prometheus (the MqttInstance's exporter sidecar; "
        "configured by BROKER_ENDPOINT, BIND_ADDRESS, MQTT_USER, MQTT_PASS, MQTT_CLIENT_ID)",
    )
    exporter.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    exporter.add_argument("--log-format", default="json", choices=["json", "text"])

    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "bridge":
        logs.configure(args.log_level, args.log_format)
        from mqtt_operator.bridge.program import main as bridge_main  # it never imports kopf

        return bridge_main(args.config, args.replica_id)
    if args.command == "broker-exporter":
        logs.configure(args.log_level, args.log_format)
        from mqtt_operator.broker.exporter import main as exporter_main  # it never imports kopf

        return exporter_main()
    namespaces = tuple(args.namespace) or (
        () if args.all_namespaces else OperatorSettings.default_namespaces()
    )
    env_addresses = [a for a in os.environ.get("MQTT_OPERATOR_BROKER_ADDRESSES", "").split(",") if a.strip()]
    try:
        settings = OperatorSettings(
            namespaces=namespaces,
            all_namespaces=args.all_namespaces,
            log_level=args.log_level,
            log_format=args.log_format,
            health_port=args.health_port,
            metrics_port=args.metrics_port,
            broker_addresses=parse_broker_addresses([*env_addresses, *args.broker_address]),
            broker_addresses_file=args.broker_addresses_file,
            drift_period_seconds=args.drift_period,
            object_workers=args.object_workers,
            worker_image=args.worker_image,
            broker_image=args.broker_image,
            exporter_image=args.exporter_image,
            worker_metrics_addresses=parse_worker_metrics_addresses(args.worker_metrics_address),
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
