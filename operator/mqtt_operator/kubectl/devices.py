"""`kubectl mqtt clients`, `client` and `clients --watch`: who is connected and what they subscribe to, as
the broker plugin's client table answers it (docs/broker-plugin.md). Pure: records in, text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

CLIENT_COLUMNS = (
    "CLIENT ID",
    "ONLINE",
    "ADDRESS",
    "USERNAME",
    "PROTOCOL",
    "KEEPALIVE",
    "CLEAN",
    "SINCE",
    "SUBS",
)
PROTOCOLS = {3: "3.1", 4: "3.1.1", 5: "5"}


def _time(ms: Any) -> str:
    if not isinstance(ms, int | float) or not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(client: Mapping[str, Any]) -> str:
    return _time(client.get("connectedAtMs") if client.get("online") else client.get("disconnectedAtMs"))


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _row(c: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        str(c["clientId"]),
        "yes" if c.get("online") else "no",
        str(c.get("address") or "-"),
        str(c.get("username") or "-"),
        PROTOCOLS.get(c.get("protocolVersion", 0), str(c.get("protocolVersion", "-"))),
        f"{c.get('keepalive', '-')}s",
        "yes" if c.get("cleanStart") else "no",
        _since(c),
        str(c.get("subscriptionCount", 0)),
    )


def render_clients(clients: Sequence[Mapping[str, Any]]) -> str:
    if not clients:
        return "No clients.\n"
    return "\n".join(_table([CLIENT_COLUMNS, *(_row(c) for c in clients)])) + "\n"


def render_client(client: Mapping[str, Any]) -> str:
    online = "online" if client.get("online") else "offline"
    lines = [
        f"Client {client['clientId']}: {online}",
        f"  address       {client.get('address') or '-'}",
        f"  username      {client.get('username') or '-'}",
        f"  protocol      MQTT {PROTOCOLS.get(client.get('protocolVersion', 0), '?')}",
        f"  keep-alive    {client.get('keepalive', '-')}s",
        f"  clean start   {'yes' if client.get('cleanStart') else 'no'}",
        f"  connected     {_time(client.get('connectedAtMs'))}",
    ]
    if not client.get("online"):
        lines.append(f"  disconnected  {_time(client.get('disconnectedAtMs'))}")
    subs = client.get("subscriptions") or []
    lines.append("")
    if not subs:
        lines.append("No subscriptions.")
    else:
        lines.append("Subscriptions")
        lines += [
            "  " + line
            for line in _table([("TOPIC FILTER", "QOS"), *((s["topicFilter"], str(s["qos"])) for s in subs)])
        ]
    return "\n".join(lines) + "\n"


def render_event(event: Mapping[str, Any]) -> str:
    """One line per connect or disconnect, as `clients --watch` prints them."""
    who = f"{event.get('clientId')}  {event.get('address') or '-'}  {event.get('username') or '-'}"
    line = f"{_time(event.get('timestampMs'))}  {event.get('event', '?')!s:<10}  {who}"
    if event.get("event") == "connect":
        protocol = PROTOCOLS.get(event.get("protocolVersion", 0), "?")
        line += f"  MQTT {protocol}  keepalive {event.get('keepalive')}s"
    return line + "\n"
