"""The MQTT source: a persistent MQTT 5 session on shared subscriptions, acknowledged in arrival order.

One connection per worker with the client id `<clientIdPrefix>-<replica>`, stable per replica, so a
restarted worker resumes its session: clean start false and a session expiry keep its
subscriptions and the messages queued for it (or sent and never acknowledged) in the broker while
it is away. Each topic filter is subscribed as `$share/<shareGroup>/<filter>` at QoS 1, so the
replicas of a connector split the stream. Receive Maximum bounds what the broker sends before
acknowledgements come back; PUBACKs are written only when the pipeline settles a batch, i.e.
after the sink confirmed every message of it and of the batches before it.

When the connection is lost, messages of the old connection that are still in the pipeline are
delivered but not acknowledged (there is no connection to acknowledge them on): the broker
redelivers them to the resumed session, so they may appear twice (at least once), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import MqttEndpoint
from mqtt_operator.bridge.mqtt5 import reason_text
from mqtt_operator.bridge.mqtt_client import (
    ConnectionLost,
    MqttConnection,
    MqttError,
    endpoint_options,
    open_connection,
)
from mqtt_operator.bridge.pipeline import BROKER_RECONNECT_CAP_S, backoff
from mqtt_operator.bridge.records import Message

log = logging.getLogger(__name__)


class MqttBatch(list[Message]):
    """Messages taken together, all from one connection (the one their PUBACKs must go to)."""

    conn: MqttConnection | None = None


class MqttSource:
    name = "mqtt"

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        share_group: str | None,
        topic_filters: tuple[str, ...],
        max_batch: int = 5000,
        role: str = "mqtt source",
        coalesce: bool = False,
    ) -> None:
        """`share_group` None subscribes the filters as they are (for `$SYS` topics, which Mosquitto 2.0
        does not deliver to shared subscriptions); `role` names it on /readyz. `coalesce`: once the
        receive window has filled, hand over what waits only when half of it is free again, in one piece
        (for a sink with a cost per batch, a Kafka request; not for calls that should keep every slot
        busy)."""
        self.coalesce = coalesce
        self.role = role
        self.endpoint = endpoint
        self.client_id = client_id
        self.subscriptions = [(f"$share/{share_group}/{f}" if share_group else f, 1) for f in topic_filters]
        self.max_batch = max_batch
        self.conn: MqttConnection | None = None
        self.subscribed = False
        self._buffer: list[Message] = []
        self._arrived = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        # Retiring (a scale-down): unsubscribed, so the broker routes this replica's share to the others;
        # retired: the session is ended too, and the source takes nothing more until it is stopped.
        self.retiring = False
        self.retired = False
        self.last_arrival = 0.0

    @property
    def ready(self) -> bool:
        return self.conn is not None and self.conn.is_open and self.subscribed

    # --- the program's Component ---

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="mqtt-source")

    def readiness(self) -> Readiness:
        return Readiness(self.role, self.ready, self.last_error)

    async def probe(self) -> None:
        """Nothing to ask: the connection's keep-alive notices a dead broker."""

    def _on_messages(self, conn: MqttConnection, messages: list[Message]) -> None:
        if conn is not self.conn:
            if self.conn is not None and self.conn.is_open:
                return  # cannot happen: a lost connection receives nothing more
            # A resumed session's queued messages arrive right behind the CONNACK, often in the
            # same read, before open_connection() has even returned: they belong to this connection.
            self.conn = conn
        self._buffer.extend(messages)
        self.last_arrival = asyncio.get_running_loop().time()
        self._arrived.set()

    async def _run(self) -> None:
        options: dict[str, Any] = endpoint_options(self.endpoint)
        attempt = 0
        while not self._stopping and not self.retired:
            try:
                conn, connack = await open_connection(
                    options["host"],
                    options["port"],
                    client_id=self.client_id,
                    keepalive=options["keepalive"],
                    clean_start=False,
                    session_expiry=self.endpoint.session_expiry_seconds,
                    receive_maximum=self.endpoint.receive_maximum,
                    username=options["username"],
                    password=options["password"],
                    tls=options["tls"],
                    on_messages=self._on_messages,
                    max_unacked=self.endpoint.receive_maximum,
                    refill_at=self.endpoint.receive_maximum // 2 if self.coalesce else None,
                )
            except (OSError, MqttError, ConnectionLost, TimeoutError) as err:
                attempt += 1
                self.last_error = f"cannot connect to the MQTT broker: {err}"
                delay = backoff(attempt, base=0.5, cap=BROKER_RECONNECT_CAP_S)
                log.warning(self.last_error, extra={"retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                continue
            self.conn = conn
            try:
                # A retiring replica resumes its session only to drain it: it subscribes to nothing.
                reasons = [] if self.retiring else await conn.subscribe(self.subscriptions, wait_s=10)
                refused = [
                    f"{topic}: {reason_text(code)}"
                    for (topic, _), code in zip(self.subscriptions, reasons, strict=False)
                    if code >= 0x80
                ]
                if refused:
                    raise MqttError("the broker refused the subscription: " + ", ".join(refused))
                self.subscribed = True
                attempt = 0
                self.last_error = None
                log.info(
                    "subscribed",
                    extra={
                        "client_id": self.client_id,
                        "session_present": connack.session_present,
                        "subscriptions": [t for t, _ in self.subscriptions],
                    },
                )
                if self._stopping:
                    conn.hold()
                exc = await conn.closed
                if not self._stopping and not self.retired:
                    self.last_error = f"lost the MQTT connection: {conn.disconnect_reason or exc}"
                    log.warning(self.last_error)
            except (MqttError, ConnectionLost, TimeoutError) as err:
                self.last_error = str(err) or type(err).__name__
                log.error("MQTT subscription failed", extra={"error": self.last_error})
                conn.abort()
                attempt += 1
            finally:
                self.subscribed = False
                self.conn = None
                # Unacknowledged messages of that connection come again on the resumed session.
                self._buffer.clear()
            if not self._stopping:
                await asyncio.sleep(backoff(attempt, base=0.5, cap=BROKER_RECONNECT_CAP_S))

    async def take(self, limit: int | None = None) -> list[Message]:
        """What has arrived (at most `limit`, else `max_batch`), once something has.

        Cancelling it while it waits loses nothing: messages leave the buffer only on return.
        """
        cap = self.max_batch if limit is None else min(limit, self.max_batch)
        while not self._buffer:
            if self._stopping:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        if self._stopping:
            return []
        buffer = self._buffer
        batch = MqttBatch(buffer if len(buffer) <= cap else buffer[:cap])
        del buffer[: len(batch)]
        batch.conn = self.conn
        return batch

    async def settle(self, items: list[Message]) -> None:
        conn = getattr(items, "conn", None)
        if conn is not None and conn is self.conn and self.conn is not None:
            self.conn.ack([m.packet_id for m in items if m.packet_id], settled=len(items))

    def origin(self, item: Message) -> float:
        return item.received

    async def retire(self) -> None:
        """Leave the shared subscriptions: the broker stops routing a share to this replica (what it
        queued for it already still comes and is processed)."""
        self.retiring = True
        conn = self.conn
        if conn is not None and conn.is_open:
            reasons = await conn.unsubscribe([topic for topic, _ in self.subscriptions], wait_s=10)
            log.info("unsubscribed to retire", extra={"client_id": self.client_id, "reasons": reasons})

    def drained(self, quiet_s: float) -> bool:
        """Nothing waits to be taken and nothing arrived for `quiet_s` seconds."""
        return not self._buffer and asyncio.get_running_loop().time() - self.last_arrival >= quiet_s

    async def end_session(self) -> None:
        """DISCONNECT with session expiry 0: the broker forgets this replica's session. Afterwards take()
        waits until stop_taking(), so the worker idles instead of exiting (a new process would join the
        share group again before the scale-down removes it)."""
        self.retired = True
        self.subscribed = False
        if self.conn is not None:
            await self.conn.disconnect(session_expiry=0)

    def stop_taking(self) -> None:
        """Stop reading from the broker; what is not taken yet stays unacknowledged in the session."""
        self._stopping = True
        if self.conn is not None:
            self.conn.hold()
        self._arrived.set()

    async def close(self) -> None:
        """DISCONNECT normally: the session (and its queued messages) waits for this replica."""
        self._stopping = True
        if self.conn is not None:
            await self.conn.disconnect()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
