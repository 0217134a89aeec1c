"""The command line of `kubectl mqtt` (installed as `kubectl-mqtt`, which kubectl finds on PATH)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

from mqtt_operator.api.kinds import FUNCTION_TRIGGER, KAFKA_CONNECTOR, REPLICATION_TASK
from mqtt_operator.kubectl.broker import Received, Session, session
from mqtt_operator.kubectl.cluster import Kubectl, PluginError, admin_login, find_instance, port_forward
from mqtt_operator.kubectl.status import render_status, status_view

OUTPUTS = ("table", "json", "yaml")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl mqtt",
        description="Day-to-day work with an MqttInstance: its status, and what devices publish.",
    )
    p.add_argument("-n", "--namespace", help="the instance's namespace (default: the context's)")
    p.add_argument("--context", help="the kubeconfig context to use")
    p.add_argument("--kubeconfig", help="the kubeconfig file to use")
    p.add_argument("--as", dest="as_user", metavar="USER", help="act as this user (kubectl's impersonation)")
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="reach the broker here instead of port-forwarding through the API server (your own tunnel, a "
        "LoadBalancer); the admin login still comes from the instance's Secret",
    )
    p.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    sub = p.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="the broker's figures, conditions and the integrations it serves")
    status.add_argument("instance")
    tail = sub.add_parser("tail", help="print what is published on a topic filter, as it arrives")
    tail.add_argument("instance")
    tail.add_argument("filter", help="an MQTT topic filter, e.g. 'vehicles/#'")
    tail.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    tail.add_argument(
        "--timeout", type=float, default=0, help="stop after this many quiet seconds (0: never)"
    )
    return p


def kubectl_of(args: argparse.Namespace) -> Kubectl:
    flags: list[str] = []
    if args.context:
        flags += ["--context", args.context]
    if args.kubeconfig:
        flags += ["--kubeconfig", args.kubeconfig]
    if args.as_user:
        flags += ["--as", args.as_user]
    return Kubectl(binary=os.environ.get("KUBECTL", "kubectl"), flags=tuple(flags), namespace=args.namespace)


@contextmanager
def broker_session(kubectl: Kubectl, name: str, address: str | None) -> Iterator[tuple[Session, Any]]:
    instance = find_instance(kubectl, name)
    login = admin_login(kubectl, instance)
    client_id = f"kubectl-mqtt-{uuid.uuid4().hex[:12]}"
    if address:
        host, _, port_text = address.rpartition(":")
        with session(host or "127.0.0.1", int(port_text), login, client_id) as s:
            yield s, instance
        return
    with port_forward(kubectl, instance) as (host, port), session(host, port, login, client_id) as s:
        yield s, instance


def _integrations(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for kind in (KAFKA_CONNECTOR, FUNCTION_TRIGGER, REPLICATION_TASK):
        found += kubectl.get(f"{kind.plural}.mqtt-operator.io", namespace=namespace).get("items") or []
    return found


def dump(value: Any, output: str, out: TextIO) -> None:
    if output == "json":
        out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    else:
        out.write(yaml.safe_dump(value, sort_keys=True))


def status(args: argparse.Namespace, out: TextIO) -> None:
    kubectl = kubectl_of(args)
    with broker_session(kubectl, args.instance, args.address) as (s, instance):
        values = s.sys_values()
    view = status_view(instance.body, values, _integrations(kubectl, instance.namespace))
    if args.output == "table":
        out.write(render_status(view))
    else:
        dump(view, args.output, out)


def message_record(msg: Received) -> dict[str, Any]:
    try:
        payload: str = msg.payload.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(msg.payload).decode(), "base64"
    return {
        "time": datetime.fromtimestamp(msg.at, UTC).isoformat(timespec="milliseconds"),
        "topic": msg.topic,
        "qos": msg.qos,
        "retain": msg.retain,
        "userProperties": [list(p) for p in msg.user_properties],
        "payload": payload,
        "payloadEncoding": encoding,
    }


def tail(args: argparse.Namespace, out: TextIO) -> None:
    with broker_session(kubectl_of(args), args.instance, args.address) as (s, _):
        s.subscribe(args.filter, qos=1)
        for seen, msg in enumerate(s.messages(timeout=args.timeout or None), start=1):
            record = message_record(msg)
            if args.output == "json":
                out.write(json.dumps(record, sort_keys=True) + "\n")
            elif args.output == "yaml":
                out.write("---\n" + yaml.safe_dump(record, sort_keys=True))
            else:
                props = "".join(f"{k}={v}  " for k, v in msg.user_properties)
                flags = f"qos={msg.qos}" + (" retained" if msg.retain else "")
                out.write(f"{record['time']}  {msg.topic}  {flags}  {props}{record['payload']}\n")
            out.flush()
            if args.count and seen >= args.count:
                return


COMMANDS = {"status": status, "tail": tail}


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args, out)
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
