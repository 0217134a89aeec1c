"""`kubectl mqtt status`: one screen answering "is it healthy, and what is it doing" for an instance: the
broker's own figures from `$SYS`, its conditions, and the integrations bound to it. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# $SYS/broker/<key> -> the status field it becomes.
SYS_FIELDS = {
    "version": "version",
    "uptime": "uptime",
    "clients/connected": "clientsConnected",
    "clients/total": "clientsKnown",
    "load/messages/received/1min": "messagesInPerSecond",
    "load/messages/sent/1min": "messagesOutPerSecond",
    "store/messages/count": "messagesQueued",
    "publish/messages/dropped": "messagesDropped",
    "subscriptions/count": "subscriptions",
}
_PER_MINUTE = {"messagesInPerSecond", "messagesOutPerSecond"}
INTEGRATION_KINDS = ("KafkaConnector", "FunctionTrigger", "ReplicationTask")


def _number(text: str) -> float | int | str:
    word = text.split()[0] if text.split() else text
    try:
        value = float(word)
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


def broker_figures(sys_values: Mapping[str, str]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key, field in SYS_FIELDS.items():
        text = sys_values.get(f"$SYS/broker/{key}")
        if text is None:
            continue
        if field == "version":
            figures[field] = text.removeprefix("mosquitto version ")
        elif field in _PER_MINUTE:
            value = _number(text)
            figures[field] = round(value / 60, 1) if isinstance(value, int | float) else value
        elif field == "uptime":
            figures["uptimeSeconds"] = _number(text)
        else:
            figures[field] = _number(text)
    return figures


def _ready(body: Mapping[str, Any]) -> str:
    for cond in (body.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return f"{cond.get('status')} ({cond.get('reason')})"
    return "Unknown"


def instance_of(body: Mapping[str, Any]) -> str:
    spec = body.get("spec") or {}
    if "instanceRef" in spec:
        return str(spec["instanceRef"].get("name", ""))
    side = (spec.get("source") or {}).get("mqtt") or (spec.get("target") or {}).get("mqtt") or {}
    return str((side.get("instanceRef") or {}).get("name", ""))


def integration_row(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    figures = status.get("counters") or {
        k: status[k] for k in ("consumed", "delivered", "failed") if k in status
    }
    return {
        "kind": body.get("kind", ""),
        "name": body["metadata"]["name"],
        "ready": _ready(body),
        "workers": f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}",
        "figures": {k: v for k, v in figures.items() if k != "lastUpdateTime"},
    }


def status_view(
    instance: Mapping[str, Any], sys_values: Mapping[str, str], integrations: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    name = instance["metadata"]["name"]
    status = instance.get("status") or {}
    return {
        "instance": {
            "name": name,
            "namespace": instance["metadata"]["namespace"],
            "ready": _ready(instance),
            "replicas": f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}",
            "endpoints": status.get("endpoints") or {},
            "image": status.get("image", ""),
        },
        "broker": broker_figures(sys_values),
        "integrations": [integration_row(b) for b in integrations if instance_of(b) == name],
    }


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return str(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    return "".join([*parts, f"{minutes}m{secs}s"])


def render_status(view: Mapping[str, Any]) -> str:
    inst, broker = view["instance"], view["broker"]
    lines = [
        f"MqttInstance {inst['namespace']}/{inst['name']}: Ready {inst['ready']}, "
        f"broker Pods {inst['replicas']}",
        f"  image      {inst['image'] or '-'}",
    ]
    lines += [f"  {kind:<10} {address}" for kind, address in sorted(inst["endpoints"].items())]
    lines += [
        "",
        "Broker",
        f"  version    {broker.get('version', '-')}",
        f"  uptime     {_duration(broker.get('uptimeSeconds', '-'))}",
        f"  clients    {broker.get('clientsConnected', '-')} connected "
        f"({broker.get('clientsKnown', '-')} known)",
        f"  messages   {broker.get('messagesInPerSecond', '-')}/s in, "
        f"{broker.get('messagesOutPerSecond', '-')}/s out (1 min average)",
        f"  queued     {broker.get('messagesQueued', '-')} stored, "
        f"{broker.get('messagesDropped', '-')} dropped",
        "",
    ]
    rows = view["integrations"]
    if not rows:
        lines.append("No integration uses this instance.")
        return "\n".join(lines) + "\n"
    lines.append("Integrations")
    header = ("KIND", "NAME", "READY", "WORKERS", "FIGURES")
    table = [header] + [
        (
            r["kind"],
            r["name"],
            r["ready"],
            r["workers"],
            ", ".join(f"{k} {v}" for k, v in r["figures"].items()) or "-",
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        lines.append(
            "  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + str(row[-1])
        )
    return "\n".join(lines) + "\n"
