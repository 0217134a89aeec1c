"""Device lifecycle events: the broker's connects and disconnects turned into Kafka records. Pure.

Two sources, read on one MQTT session (so in the order the broker queued them):

- **The broker plugin's events** (docs/broker-plugin.md), JSON on the instance's `spec.clientEvents.topic`
  (default `$SYS/mqtt-operator/client-events`): a connect once the broker let the client in, a
  disconnect for every end of a connection, with millisecond times, the client's IP and username.
  When the instance publishes them (`plugin_topic` set), they make the records.
- **The broker's log**, which the operator's mosquitto.conf also sends to the broker itself
  (`log_dest topic`). With plugin events it only adds what the plugin cannot know (its API has no
  client port and no disconnect reason): the log line of a connect or disconnect comes before the
  plugin's event for it (the broker logs while handling the packet and publishes the plugin's
  messages on its next loop pass), so the mapping notes the line's `IP:PORT` or reason and puts it on
  the record the event makes. Without plugin events (an instance with `clientEvents.enabled: false`,
  or a broker image without the plugin) the log lines make the records, with whole-second times.

The log (`$SYS/broker/log/N`):
each notice-level line is published on `$SYS/broker/log/N`, and `connection_messages true` makes every
connect and disconnect such a line:

    2026-11-23T16:44:19: New client connected from 10.0.0.7:36448 as car-17 (p5, c0, k60, u'car-17').
    2026-11-23T16:44:21: Client car-17 disconnected.
    2026-11-23T16:44:22: Client car-18 closed its connection.

The worker subscribes to that topic with its own persistent session and maps each such line to
`{"clientid", "ts", "event", ...}` on the connect or disconnect topic; other lines are skipped.
Trade-offs (docs/bridge.md): the line format is Mosquitto's and is matched here exactly (tested
against the real 2.0.11); `$share/...` subscriptions do not receive `$SYS` topics in 2.0.11, so only one
worker (ordinal 0) reads them; a client id containing " (p" cannot be told apart from the fields after it
(the last match wins, which is right for every id Mosquitto accepts in practice).
"""

from __future__ import annotations

import dataclasses
import json
import re
from calendar import timegm
from collections import OrderedDict
from dataclasses import dataclass
from time import strptime
from typing import Final

from mqtt_operator.bridge.config import DeviceEvents
from mqtt_operator.bridge.records import KafkaRecord, Message, Reject, Skip

# The notice-level log topic (`log_dest topic`): I, N, W, E, D are information, notice, warning ...
LOG_TOPIC: Final = "$SYS/broker/log/N"

_STAMP = r"(?P<ts>\d{10,}|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}): "
_CONNECTED = re.compile(
    _STAMP + r"New client connected from (?P<address>\S+) as (?P<clientid>.+) "
    r"\(p(?P<protocol>\d+), c(?P<clean>[01]), k(?P<keepalive>\d+)(?:, u'(?P<username>.*)')?\)\.$",
    re.DOTALL,
)
# Every way Mosquitto 2.0 words a client going away, with the reason we report.
_GONE: Final = (
    (re.compile(_STAMP + r"Client (?P<clientid>.+) disconnected\.$", re.DOTALL), "disconnected"),
    (
        re.compile(_STAMP + r"Client (?P<clientid>.+) closed its connection\.$", re.DOTALL),
        "connection_closed",
    ),
    (
        re.compile(_STAMP + r"Client (?P<clientid>.+) has exceeded timeout, disconnecting\.$", re.DOTALL),
        "keepalive_timeout",
    ),
    (
        re.compile(_STAMP + r"Socket error on client (?P<clientid>.+), disconnecting\.$", re.DOTALL),
        "socket_error",
    ),
    (
        re.compile(_STAMP + r"Client (?P<clientid>.+) disconnected due to protocol error\.$", re.DOTALL),
        "protocol_error",
    ),
    (
        re.compile(_STAMP + r"Client (?P<clientid>.+) disconnected, not authorised\.$", re.DOTALL),
        "not_authorised",
    ),
    (
        re.compile(
            _STAMP + r"Client (?P<clientid>.+) already connected, closing old connection\.$", re.DOTALL
        ),
        "taken_over",
    ),
)


@dataclass(frozen=True)
class DeviceEvent:
    event: str  # "connect" or "disconnect"
    clientid: str
    ts_ms: int
    reason: str | None = None
    address: str | None = None
    username: str | None = None
    protocol: int | None = None
    clean_start: bool | None = None
    keepalive: int | None = None

    def to_json(self) -> bytes:
        body: dict[str, object] = {"clientid": self.clientid, "ts": self.ts_ms, "event": self.event}
        for name in ("reason", "address", "username", "protocol", "keepalive"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.clean_start is not None:
            body["cleanStart"] = self.clean_start
        return json.dumps(body, separators=(",", ":")).encode()


# The last millisecond of the year 9999: later times are no time a Kafka record can carry (its timestamp
# is 64 bits; aiokafka raises OverflowError past them and would stop the worker).
MAX_TIMESTAMP_MS: Final = 253402300799999


def _ts_ms(stamp: str, fallback_ms: int) -> int:
    """The log line's time: epoch seconds, or the operator's `%Y-%m-%dT%H:%M:%S` (the broker runs in UTC)."""
    if stamp.isdigit():
        # At most 12 digits: int() refuses over 4300, and later than the year 9999 is no Kafka time.
        ms = int(stamp) * 1000 if len(stamp) <= 12 else MAX_TIMESTAMP_MS + 1
        return ms if ms <= MAX_TIMESTAMP_MS else fallback_ms
    try:
        return timegm(strptime(stamp, "%Y-%m-%dT%H:%M:%S")) * 1000
    except ValueError:
        return fallback_ms


def parse_log_line(line: str, received_ms: int) -> DeviceEvent | None:
    """The event a log line reports, or None when it reports no connect or disconnect."""
    line = line.rstrip("\n")
    match = _CONNECTED.match(line)
    if match is not None:
        return DeviceEvent(
            event="connect",
            clientid=match["clientid"],
            ts_ms=_ts_ms(match["ts"], received_ms),
            address=match["address"],
            username=match["username"],
            protocol=int(match["protocol"]),
            clean_start=match["clean"] == "1",
            keepalive=int(match["keepalive"]),
        )
    for pattern, reason in _GONE:
        match = pattern.match(line)
        if match is not None:
            return DeviceEvent(
                event="disconnect",
                clientid=match["clientid"],
                ts_ms=_ts_ms(match["ts"], received_ms),
                reason=reason,
            )
    return None


# Notes kept per client id between a log line and the plugin's event for it; a bound, so that lines
# whose event never comes (a refused login's "not authorised") cannot grow it.
NOTES_MAX: Final = 10_000


def parse_plugin_event(payload: bytes) -> DeviceEvent | None:
    """The broker plugin's JSON event, or None when the payload is not one."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the json module's limit
        return None
    if not isinstance(body, dict) or body.get("event") not in ("connect", "disconnect"):
        return None
    client_id, ts = body.get("clientId"), body.get("timestampMs")
    # bool is an int to Python: `"timestampMs": false` is no time.
    if not isinstance(client_id, str) or type(ts) is not int or not 0 <= ts <= MAX_TIMESTAMP_MS:
        return None
    if not client_id.isascii():
        try:
            client_id.encode()  # the record's key: a "\\ud800" escape is JSON but no UTF-8
        except UnicodeEncodeError:
            return None

    def text(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) else None

    def number(name: str) -> int | None:
        value = body.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    clean = body.get("cleanStart")
    return DeviceEvent(
        event=body["event"],
        clientid=body["clientId"],
        ts_ms=body["timestampMs"],
        address=text("address"),
        username=text("username"),
        protocol=number("protocolVersion"),
        clean_start=clean if isinstance(clean, bool) else None,
        keepalive=number("keepalive"),
    )


class DeviceEventMapping:
    """Message on LOG_TOPIC or the plugin's topic -> a record on the connect or disconnect topic (keyed
    by client id), or Skip. Keeps the log's notes until the plugin's event for them arrives."""

    def __init__(self, spec: DeviceEvents) -> None:
        self.connect_topic = spec.connect_topic
        self.disconnect_topic = spec.disconnect_topic
        self.plugin_topic = spec.plugin_topic
        # (event, client id) -> the log's address (IP:PORT) of a connect, or reason of a disconnect.
        self._notes: OrderedDict[tuple[str, str], str] = OrderedDict()

    def _note(self, event: DeviceEvent) -> None:
        value = event.address if event.event == "connect" else event.reason
        if value is None:
            return
        self._notes[(event.event, event.clientid)] = value
        self._notes.move_to_end((event.event, event.clientid))
        while len(self._notes) > NOTES_MAX:
            self._notes.popitem(last=False)

    def _with_notes(self, event: DeviceEvent) -> DeviceEvent:
        noted = self._notes.pop((event.event, event.clientid), None)
        if event.event == "disconnect":
            return dataclasses.replace(event, reason=noted)
        # The log's IP:PORT, when it is this connection's IP.
        if noted is not None and event.address is not None and noted.rpartition(":")[0] == event.address:
            return dataclasses.replace(event, address=noted)
        return event

    def __call__(self, msg: Message) -> KafkaRecord | Skip | Reject:
        if msg.malformed is not None:
            return Reject(msg.malformed)
        if self.plugin_topic is not None and msg.topic == self.plugin_topic:
            event = parse_plugin_event(msg.payload)
            if event is None:
                return Skip("not a client event of the broker plugin")
            return self._record(self._with_notes(event))
        received_ms = int(msg.received * 1000)
        try:
            text = msg.payload.decode()
        except UnicodeDecodeError:
            return Skip("not a log line")
        event = parse_log_line(text, received_ms)
        if event is None:
            return Skip("not a connect or disconnect")
        if self.plugin_topic is not None:
            self._note(event)
            return Skip("noted for the broker plugin's event")
        return self._record(event)

    def _record(self, event: DeviceEvent) -> KafkaRecord | Skip:
        topic = self.connect_topic if event.event == "connect" else self.disconnect_topic
        if topic is None:
            return Skip(f"no topic configured for {event.event} events")
        return KafkaRecord(
            topic=topic,
            key=event.clientid.encode(),
            value=event.to_json(),
            headers=[("mqtt.event", event.event.encode())],
            timestamp_ms=event.ts_ms,
        )
