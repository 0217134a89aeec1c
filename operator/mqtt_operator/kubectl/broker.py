"""The plugin's MQTT 5 session with a broker (paho-mqtt: a command-line tool needs no more speed), logged
in as the instance's admin: the broker's `$SYS` figures, what is published on a topic filter, and the
requests our broker plugin answers on `$CONTROL/mqtt-operator/v1` (docs/broker-plugin.md)."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_operator.kubectl.cluster import Login, PluginError

CONNECT_TIMEOUT = 10.0
# $SYS topics are retained: they arrive at once after subscribing; this much quiet ends the read.
SYS_QUIET_SECONDS = 0.5
SYS_MAX_SECONDS = 5.0
CONTROL_TOPIC = "$CONTROL/mqtt-operator/v1"
CONTROL_RESPONSE_TOPIC = "$CONTROL/mqtt-operator/v1/response"
CONTROL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()
    at: float = 0.0  # when the plugin received it (epoch seconds)


class CommandFailed(PluginError):
    """The broker plugin answered a command with an error (its text says what was wrong)."""


class Session:
    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._answers: queue.Queue[bytes] = queue.Queue()
        client.on_message = self._on_message

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.topic == CONTROL_RESPONSE_TOPIC:
            self._answers.put(bytes(msg.payload))
            return
        props = getattr(msg, "properties", None)
        user = tuple(getattr(props, "UserProperty", ()) or ())
        self._inbox.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), user, time.time()))

    def command(self, name: str, **fields: object) -> dict[str, object]:
        """One command to the broker plugin; its `data`, or CommandFailed with the plugin's error."""
        correlation = uuid.uuid4().hex
        request = {"commands": [{"command": name, "correlationData": correlation, **fields}]}
        # The plugin answers this client by its id: no subscription is needed.
        info = self._client.publish(CONTROL_TOPIC, json.dumps(request), qos=1)
        info.wait_for_publish(CONTROL_TIMEOUT)
        deadline = time.monotonic() + CONTROL_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                answer = json.loads(self._answers.get(timeout=left))
            except queue.Empty:
                break
            for response in answer.get("responses") or ():
                if response.get("correlationData") != correlation:
                    continue
                if "error" in response:
                    raise CommandFailed(f"{name}: {response['error']}")
                data: dict[str, object] = response.get("data") or {}
                return data
        raise PluginError(
            f"the broker did not answer {name} on {CONTROL_TOPIC} within {CONTROL_TIMEOUT:.0f} s: its image "
            "may predate mqtt-operator's broker plugin client table (docs/broker-plugin.md), or the admin "
            "account is not in the plugin's plugin_opt_control_users"
        )

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Subscribes and waits for the broker's SUBACK, so nothing published after this is missed."""
        acks: queue.Queue[list[Any]] = queue.Queue()
        self._client.on_subscribe = lambda _c, _u, _mid, codes, _p: acks.put(codes)
        result, _ = self._client.subscribe(topic_filter, qos=qos)
        if result != paho.MQTT_ERR_SUCCESS:
            raise PluginError(f"cannot subscribe to {topic_filter!r}: {paho.error_string(result)}")
        try:
            (code,) = acks.get(timeout=CONNECT_TIMEOUT)
        except queue.Empty as err:
            raise PluginError(f"the broker did not acknowledge the subscription to {topic_filter!r}") from err
        if getattr(code, "is_failure", False):
            raise PluginError(f"the broker refused the subscription to {topic_filter!r}: {code}")

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
