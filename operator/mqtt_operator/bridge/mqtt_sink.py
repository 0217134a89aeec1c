"""The MQTT sink: publishes records to the broker and confirms them by their PUBACK reason codes.

Its own connection, `<clientIdPrefix>-<replica>-pub`, with a clean start and no session: what it
has sent and not seen acknowledged is retried from the source (the Kafka offsets are committed
only after the PUBACKs), so a session would add nothing. QoS 1 publishes are pipelined up to the
broker's Receive Maximum; a PUBACK reason code >= 0x80 is a refusal (dead letter), anything below
is a success, including 0x10 "no matching subscribers". QoS 0 is confirmed once written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import MqttEndpoint
from mqtt_operator.bridge.mqtt_client import (
    ConnectionLost,
    MqttConnection,
    MqttError,
    endpoint_options,
    open_connection,
)
from mqtt_operator.bridge.pipeline import (
    BROKER_RECONNECT_CAP_S,
    TRANSIENT,
    Delivery,
    TransientError,
    backoff,
)
from mqtt_operator.bridge.records import MqttPublish, Properties

log = logging.getLogger(__name__)

PUBACK_TIMEOUT = 30.0


def _props_size(props: Properties | None) -> int:
    """About the bytes `props` take in a PUBLISH (its variable-length fields; the rest is in the margin)."""
    if props is None:
        return 0
    size = sum(len(k.encode()) + len(v.encode()) + 5 for k, v in props.user_properties)
    if props.content_type is not None:
        size += len(props.content_type.encode())
    if props.correlation_data is not None:
        size += len(props.correlation_data)
    return size


class MqttSink:
    name = "mqtt"

    def __init__(self, endpoint: MqttEndpoint, *, client_id: str) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.conn: MqttConnection | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.conn is not None and self.conn.is_open

    # --- the program's Component ---

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="mqtt-sink")

    def readiness(self) -> Readiness:
        return Readiness("mqtt publisher", self.ready, self.last_error)

    async def probe(self) -> None:
        """Nothing to ask: the connection's keep-alive notices a dead broker."""

    async def _run(self) -> None:
        options: dict[str, Any] = endpoint_options(self.endpoint)
        attempt = 0
        while not self._stopping:
            try:
                conn, _ = await open_connection(
                    options["host"],
                    options["port"],
                    client_id=self.client_id,
                    keepalive=options["keepalive"],
                    clean_start=True,
                    session_expiry=0,
                    receive_maximum=self.endpoint.receive_maximum,
                    username=options["username"],
                    password=options["password"],
                    tls=options["tls"],
                )
            except (OSError, MqttError, ConnectionLost, TimeoutError) as err:
                attempt += 1
                self.last_error = f"cannot connect to the MQTT broker: {err}"
                delay = backoff(attempt, base=0.5, cap=BROKER_RECONNECT_CAP_S)
                log.warning(self.last_error, extra={"retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.last_error = None
            self.conn = conn
            self._connected.set()
            log.info("publisher connected", extra={"client_id": self.client_id})
            exc = await conn.closed
            self._connected.clear()
            self.conn = None
            if not self._stopping:
                self.last_error = f"lost the MQTT connection: {conn.disconnect_reason or exc}"
                log.warning(self.last_error)
                await asyncio.sleep(backoff(1, base=0.5, cap=30))

    async def deliver(self, records: Sequence[MqttPublish]) -> list[Delivery]:
        try:
            await asyncio.wait_for(self._connected.wait(), 5)
        except TimeoutError as err:
            raise TransientError(self.last_error or "not connected to the MQTT broker") from err
        conn = self.conn
        assert conn is not None
        outcomes: list[Delivery] = [None] * len(records)
        waits: list[tuple[int, asyncio.Future[int]]] = []
        limit = conn.max_packet_size
        try:
            for pos, (topic, payload, qos, retain, user_properties, props) in enumerate(records):
                if props is None and user_properties:
                    props = Properties(user_properties=user_properties)
                if limit is not None and len(payload) + len(topic) + _props_size(props) + 64 > limit:
                    outcomes[pos] = f"larger than the broker's maximum packet size ({limit} bytes)"
                    continue
                if qos:
                    await conn.wait_send_slot()
                fut = conn.publish_nowait(topic, payload, qos, retain, props)
                if fut is not None:
                    waits.append((pos, fut))
        except ConnectionLost:
            # What was not sent is retried; what was sent is judged by its (now failed) future.
            sent = {pos for pos, _ in waits}
            for pos in range(len(records)):
                if pos not in sent and outcomes[pos] is None:
                    outcomes[pos] = TRANSIENT
        if waits:
            await asyncio.wait([fut for _, fut in waits], timeout=PUBACK_TIMEOUT)
            for pos, fut in waits:
                if not fut.done() or fut.cancelled() or fut.exception() is not None:
                    outcomes[pos] = TRANSIENT
                    continue
                code = fut.result()
                if code >= 0x80:
                    outcomes[pos] = f"the broker refused the publish: {mqtt5.reason_text(code)}"
            if any(o is TRANSIENT for o in outcomes) and conn.is_open:
                # A PUBACK that never came: start over on a fresh connection.
                conn.abort(ConnectionLost("PUBACK timeout"))
        return outcomes

    async def recover(self) -> None:
        """The connection loop reconnects by itself."""

    async def close(self) -> None:
        self._stopping = True
        if self.conn is not None:
            await self.conn.disconnect()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
