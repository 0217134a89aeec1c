"""The command line of `kubectl mqtt` (installed as `kubectl-mqtt`, which kubectl finds on PATH)."""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import yaml

from mqtt_operator.api.kinds import FUNCTION_TRIGGER, KAFKA_CONNECTOR, REPLICATION_TASK
from mqtt_operator.kubectl.broker import Received, Session, session
from mqtt_operator.kubectl.cluster import Kubectl, PluginError, admin_login, find_instance, port_forward
from mqtt_operator.kubectl.devices import render_client, render_clients, render_event
from mqtt_operator.kubectl.status import render_status, status_view

OUTPUTS = ("table", "json", "yaml")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl mqtt",
        description="Day-to-day work with an MqttInstance: its status, who is connected, what they subscribe "
        "to and publish; take a client offline, take a subscription away, send a message.",
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
    clients = sub.add_parser("clients", help="the clients the broker knows: connected, and offline sessions")
    clients.add_argument("instance")
    clients.add_argument("match", nargs="?", help="only client ids matching this shell pattern, e.g. 'car-*'")
    clients.add_argument("--online", action="store_true", help="only connected clients")
    clients.add_argument(
        "--watch", action="store_true", help="then print each connect and disconnect as it happens"
    )
    client = sub.add_parser("client", help="one client's connection and subscriptions")
    client.add_argument("instance")
    client.add_argument("client_id")
    kick = sub.add_parser(
        "kick", help="take a client offline (MQTT 5 clients are told: administrative action)"
    )
    kick.add_argument("instance")
    kick.add_argument("client_id")
    kick.add_argument(
        "--send-will", action="store_true", help="publish the client's will message, as if it had dropped"
    )
    unsub = sub.add_parser("unsubscribe", help="stop delivering a client's subscription to it")
    unsub.add_argument("instance")
    unsub.add_argument("client_id")
    unsub.add_argument("filter", help="the subscription's topic filter, exactly as the client made it")
    pub = sub.add_parser("publish", help="send one message, to every subscriber or to one client")
    pub.add_argument("instance")
    pub.add_argument("topic")
    pub.add_argument("message", nargs="?", default="", help="the payload; '-' reads it from standard input")
    pub.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    pub.add_argument("--retain", action="store_true")
    pub.add_argument("--user-property", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    pub.add_argument("--client-id", help="deliver only to this connected client, whatever it subscribed to")
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


STAMP_PREFIX = "mqtt-operator/"


def message_record(msg: Received) -> dict[str, Any]:
    """What `tail` prints of a message: the broker plugin's stamps (who sent it, the message id) apart
    from the publisher's own user properties."""
    try:
        payload: str = msg.payload.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(msg.payload).decode(), "base64"
    stamps = {k.removeprefix(STAMP_PREFIX): v for k, v in msg.user_properties if k.startswith(STAMP_PREFIX)}
    return {
        "time": datetime.fromtimestamp(msg.at, UTC).isoformat(timespec="milliseconds"),
        "topic": msg.topic,
        "qos": msg.qos,
        "retain": msg.retain,
        "publisher": {"clientId": stamps.get("clientId"), "address": stamps.get("clientAddress")},
        "messageId": stamps.get("messageId"),
        "userProperties": [list(p) for p in msg.user_properties if not p[0].startswith(STAMP_PREFIX)],
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
                props = "".join(f"{k}={v}  " for k, v in record["userProperties"])
                flags = f"qos={msg.qos}" + (" retained" if msg.retain else "")
                sender = record["publisher"]
                who = f"from {sender['clientId']}@{sender['address']}  " if sender["clientId"] else ""
                out.write(f"{record['time']}  {msg.topic}  {flags}  {who}{props}{record['payload']}\n")
            out.flush()
            if args.count and seen >= args.count:
                return


PAGE = 1000


def list_clients(s: Session, match: str | None, online_only: bool) -> list[dict[str, Any]]:
    """Every client the plugin knows, a page of PAGE at a time (a broker may hold hundreds of thousands)."""
    found: list[dict[str, Any]] = []
    fields: dict[str, Any] = {"limit": PAGE, "onlineOnly": online_only}
    if match:
        fields["match"] = match
    while True:
        data = s.command("listClients", offset=len(found), **fields)
        page = list(data.get("clients") or [])  # type: ignore[call-overload]
        found += page
        if not page or len(found) >= int(data.get("totalCount", 0)):  # type: ignore[call-overload]
            return found


def events_topic(instance_body: dict[str, Any]) -> str:
    events = (instance_body.get("spec") or {}).get("clientEvents") or {}
    if events.get("enabled") is False:
        raise PluginError("this instance publishes no client events (spec.clientEvents.enabled is false)")
    return str(events.get("topic") or "$SYS/mqtt-operator/client-events")


def clients(args: argparse.Namespace, out: TextIO) -> None:
    with broker_session(kubectl_of(args), args.instance, args.address) as (s, instance):
        if args.watch:
            # Subscribed before listing, so that no connect between the two is missed.
            s.subscribe(events_topic(instance.body), qos=0)
        rows = list_clients(s, args.match, args.online)
        if args.output == "table":
            out.write(render_clients(rows))
        else:
            dump({"clients": rows}, args.output, out)
        out.flush()
        if not args.watch:
            return
        for msg in s.messages():
            event = json.loads(msg.payload)
            if args.match and not fnmatch.fnmatchcase(str(event.get("clientId")), args.match):
                continue
            if args.output == "table":
                out.write(render_event(event))
            elif args.output == "json":
                out.write(json.dumps(event, sort_keys=True) + "\n")
            else:
                out.write("---\n" + yaml.safe_dump(event, sort_keys=True))
            out.flush()


def client(args: argparse.Namespace, out: TextIO) -> None:
    with broker_session(kubectl_of(args), args.instance, args.address) as (s, _):
        detail = s.command("getClient", clientId=args.client_id)["client"]
    if args.output == "table":
        out.write(render_client(detail))  # type: ignore[arg-type]
    else:
        dump(detail, args.output, out)


def kick(args: argparse.Namespace, out: TextIO) -> None:
    with broker_session(kubectl_of(args), args.instance, args.address) as (s, _):
        s.command("kickClient", clientId=args.client_id, sendWill=args.send_will)
    out.write(f"client {args.client_id} disconnected\n")


def unsubscribe(args: argparse.Namespace, out: TextIO) -> None:
    with broker_session(kubectl_of(args), args.instance, args.address) as (s, _):
        s.command("unsubscribeClient", clientId=args.client_id, topicFilter=args.filter)
    out.write(f"client {args.client_id} no longer receives {args.filter}\n")


def _user_properties(pairs: Sequence[str]) -> list[dict[str, str]]:
    props = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise PluginError(f"--user-property takes NAME=VALUE, not {pair!r}")
        props.append({"name": name, "value": value})
    return props


def publish(args: argparse.Namespace, out: TextIO, stdin: BinaryIO | None = None) -> None:
    payload = (stdin or sys.stdin.buffer).read() if args.message == "-" else args.message.encode()
    fields: dict[str, Any] = {"topic": args.topic, "qos": args.qos, "retain": args.retain,
                              "userProperties": _user_properties(args.user_property)}  # fmt: skip
    try:
        fields["payload"] = payload.decode()
    except UnicodeDecodeError:
        fields["payload"], fields["payloadEncoding"] = base64.b64encode(payload).decode(), "base64"
    if args.client_id:
        fields["clientId"] = args.client_id
    with broker_session(kubectl_of(args), args.instance, args.address) as (s, _):
        s.command("publish", **fields)
    target = f" to client {args.client_id}" if args.client_id else ""
    out.write(f"published {len(payload)} bytes on {args.topic}{target}\n")


COMMANDS = {
    "status": status,
    "clients": clients,
    "client": client,
    "kick": kick,
    "unsubscribe": unsubscribe,
    "publish": publish,
    "tail": tail,
}


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
