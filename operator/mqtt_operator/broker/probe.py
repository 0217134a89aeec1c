"""Short MQTT 5 connections made on a connector's behalf: does its login work, and ending its
workers' persistent sessions.

Each is one CONNECT and one DISCONNECT, done with a plain paho client in a worker thread (the blocking
TCP connect stays off the event loop); nothing is subscribed or published.

Ending a session: a CONNECT with Clean Start = 1 makes the broker discard the session of that client
id (its subscriptions and the messages queued for it); without a Session Expiry Interval the new
session ends with the DISCONNECT. The next worker with that client id starts afresh.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_operator.broker.errors import BrokerAuthFailed, BrokerUnreachable
from mqtt_operator.logs import register_secret

# How long a connect may take until CONNACK.
PROBE_TIMEOUT = 5.0
# CONNACK reason codes that mean "these credentials are not welcome here".
_AUTH_REFUSED = {0x86, 0x87, 0x8C}


@dataclass(frozen=True)
class MqttLogin:
    host: str
    port: int
    username: str | None  # None: anonymous (an instance without authorization)
    password: str | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _connect_once(login: MqttLogin, client_id: str, timeout: float) -> tuple[int, str]:
    """CONNECT with Clean Start and DISCONNECT; returns CONNACK's (reason code, reason text)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
    )
    if login.username is not None:
        client.username_pw_set(login.username, login.password)
    client.connect_timeout = timeout
    answers: list[ReasonCode] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        answers.append(rc)

    client.on_connect = on_connect
    try:
        client.connect(login.host, login.port, keepalive=10, clean_start=True)
        deadline = time.monotonic() + timeout
        while not answers and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        if not answers:
            raise TimeoutError(f"no CONNACK within {timeout:g} s")
        code = answers[0]
        if code.value == 0:
            client.disconnect()
            client.loop(timeout=0.1)  # sends the DISCONNECT
        return code.value, str(code)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


async def _connect(login: MqttLogin, client_id: str) -> None:
    """Returns when accepted; raises BrokerAuthFailed or BrokerUnreachable otherwise."""
    register_secret(login.password)
    try:
        code, reason = await asyncio.to_thread(_connect_once, login, client_id, PROBE_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        what = (
            "connection refused"
            if isinstance(err, ConnectionRefusedError)
            else str(err) or type(err).__name__
        )
        raise BrokerUnreachable(f"cannot connect to the broker at {login.address}: {what}") from err
    if code in _AUTH_REFUSED:
        raise BrokerAuthFailed(f"the broker at {login.address} refused user {login.username!r}: {reason}")
    if code != 0:
        raise BrokerUnreachable(f"the broker at {login.address} refused the connection: {reason}")


async def check_login(login: MqttLogin) -> None:
    """Raises BrokerAuthFailed (refused credentials) or BrokerUnreachable."""
    await _connect(login, f"mqtt-operator-probe-{secrets.token_hex(6)}")


async def end_sessions(login: MqttLogin, client_ids: Sequence[str]) -> None:
    """End the persistent sessions of `client_ids` (a missing one is no error). Raises like check_login.

    Run it only when no worker holds these ids: a connected worker would be taken over, and might
    reconnect and start its session again.
    """
    await asyncio.gather(*(_connect(login, client_id) for client_id in client_ids))
