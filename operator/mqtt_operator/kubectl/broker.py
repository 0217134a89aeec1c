"""The plugin's MQTT 5 session with a broker (paho-mqtt: a command-line tool needs no more speed), logged
in as the instance's admin: the broker's `$SYS` figures, and what is published on a topic filter."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_operator.kubectl.cluster import Login, PluginError

CONNECT_TIMEOUT = 10.0
# $SYS topics are retained: they arrive at once after subscribing; this much quiet ends the read.
SYS_QUIET_SECONDS = 0.5
SYS_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()
    at: float = 0.0  # when the plugin received it (epoch seconds)


class Session:
    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._inbox: queue.Queue[Received] = queue.Queue()
        client.on_message = self._on_message

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        user = tuple(getattr(props, "UserProperty", ()) or ())
        self._inbox.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), user, time.time()))

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        result, _ = self._client.subscribe(topic_filter, qos=qos)
        if result != paho.MQTT_ERR_SUCCESS:
            raise PluginError(f"cannot subscribe to {topic_filter!r}: {paho.error_string(result)}")

    def messages(self, timeout: float | None = None) -> Iterator[Received]:
        """What arrives, until `timeout` seconds pass without a message (None: forever)."""
        while True:
            try:
                yield self._inbox.get(timeout=timeout)
            except queue.Empty:
                return

    def sys_values(self) -> dict[str, str]:
        """The broker's `$SYS/broker/...` figures, topic -> text: the retained values arrive in one burst
        after subscribing; the first quiet moment after it ends the read."""
        self.subscribe("$SYS/broker/#")
        values: dict[str, str] = {}
        deadline = time.monotonic() + SYS_MAX_SECONDS
        wait = SYS_MAX_SECONDS
        while time.monotonic() < deadline:
            try:
                msg = self._inbox.get(timeout=wait)
            except queue.Empty:
                break
            values[msg.topic] = msg.payload.decode(errors="replace")
            wait = SYS_QUIET_SECONDS
        return values


@contextmanager
def session(host: str, port: int, login: Login, client_id: str) -> Iterator[Session]:
    """A clean MQTT 5 session (nothing is left in the broker after it)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set(login.username, login.password)
    connected: queue.Queue[object] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.put(reason)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    try:
        client.connect(host, port, keepalive=30, clean_start=True, properties=props)
    except OSError as err:
        raise PluginError(f"the broker at {host}:{port} does not answer: {err}") from err
    client.loop_start()
    try:
        try:
            reason = connected.get(timeout=CONNECT_TIMEOUT)
        except queue.Empty as err:
            raise PluginError(f"the broker at {host}:{port} did not answer the login in time") from err
        if getattr(reason, "is_failure", False):
            raise PluginError(f"the broker refused the admin login: {reason}")
        yield Session(client)
    finally:
        client.disconnect()
        client.loop_stop()
