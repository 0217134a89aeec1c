"""One MQTT 5 connection on asyncio: connect, subscribe, receive, acknowledge, publish, keep alive.

Why our own client rather than paho-mqtt or gmqtt: the uplink's goal is >= 25,000 QoS 1 messages
a second per worker within 40 us of CPU each, acknowledged only after Kafka confirmed them, in
arrival order. Measured on this machine (docs/bridge.md), paho-mqtt 2.2 drains 11-13k msg/s (its
per-packet socket reads, locks and callbacks), gmqtt 24-31k msg/s but only with its PUBACK
deferred by hand (its default acknowledges before the handler runs, which loses messages). This
connection is an `asyncio.Protocol`: one `data_received` splits a whole socket read into packets
(`mqtt5.decode_stream`), hands every PUBLISH of that read to the consumer in one call, and writes
go out in one `transport.write` per event-loop turn (a batch's PUBACKs, many downlink PUBLISHes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.config import MQTT_PASSWORD_ENV, MqttEndpoint
from mqtt_operator.bridge.mqtt5 import reason_text
from mqtt_operator.bridge.records import Message, Properties
from mqtt_operator.logs import register_secret

log = logging.getLogger(__name__)

# The most one socket read takes. asyncio's selector transport reads 256 KiB at a time (its `max_size`);
# while the connection's reading is paused for the receive window, the broker fills the socket with far
# more, and 256 KiB held about 600 messages of 256 B stamped by the broker plugin: the uplink's batches
# came at 380 messages instead of the window's 1,000 (docs/bridge.md, "Reads of a mebibyte").
READ_SIZE: Final = 1 << 20


class MqttError(Exception):
    """The broker refused something (CONNACK/SUBACK with a failure reason)."""

    def __init__(self, message: str, reason: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionLost(Exception):
    """The connection closed while an answer was awaited."""


class MqttConnection(asyncio.Protocol):
    """A single connection; after it is lost, make a new one (the session lives in the broker)."""

    def __init__(
        self,
        on_messages: Callable[[MqttConnection, list[Message]], None] | None = None,
        max_unacked: int = 0,
        refill_at: int | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_messages = on_messages
        # Incoming flow control of our own: Mosquitto 2.0.11 sends far more than the Receive Maximum
        # we announce once PUBACKs flow (docs/bridge.md). The consumer is never handed more than
        # `max_unacked` unsettled messages; the rest of a socket read waits in `_backlog`, and reading
        # stops (TCP backpressure, the broker keeps the messages) until acknowledgements make room.
        self.max_unacked = max_unacked
        # Once the window has filled, what waits goes over when no more than `refill_at` messages are
        # unsettled: by default as soon as there is room. A consumer that pays per batch asks for half
        # the window: handing over a sliver per settled batch kept an uplink's batches at 233 messages
        # instead of 600 once they had split (docs/bridge.md, "Mosquitto 2.0.11 does not honour ...").
        self.refill_at = max_unacked - 1 if refill_at is None else refill_at
        self.unacked = 0
        self._backlog: list[Message] = []
        self._throttled = False
        self._held = False
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self._connack: asyncio.Future[mqtt5.Connack] = self.loop.create_future()
        self._waiting: dict[int, asyncio.Future[Any]] = {}  # packet id -> SUBACK / PUBACK future
        # Packet ids of outgoing QoS 2 PUBLISHes between PUBLISH and PUBREC (then PUBREL is sent and
        # their future waits for PUBCOMP).
        self._exactly_once: set[int] = set()
        self._next_id = 0
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.closed: asyncio.Future[BaseException | None] = self.loop.create_future()
        self.disconnect_reason: str | None = None
        self.last_received = time.monotonic()
        # Outgoing QoS 1 flow control: the broker's Receive Maximum from CONNACK.
        self.send_quota = 65535
        self._quota_free = asyncio.Event()
        self._quota_free.set()
        self.inflight_out = 0
        self.max_packet_size: int | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Only the plain socket transport has it (TLS reads go through the SSL protocol's own buffer);
        # tests/unit/test_bridge_mqtt_window.py fails if a Python version renames it.
        if isinstance(getattr(transport, "max_size", None), int):
            setattr(transport, "max_size", READ_SIZE)  # noqa: B010  # not in Transport's typed interface

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        self.last_received = time.monotonic()
        try:
            messages, controls, used = mqtt5.decode_stream(data, time.time())
        except mqtt5.ProtocolError as err:
            log.error("protocol error from the broker, closing", extra={"error": str(err)})
            self.abort(err)
            return
        self._rest = data[used:] if used < len(data) else b""
        for control in controls:
            self._control(control)
        if messages:
            if self.max_unacked:
                self._backlog.extend(messages)
                self._hand_over()
            elif self.on_messages is not None:
                self.on_messages(self, messages)

    def _hand_over(self) -> None:
        if self._throttled and self.unacked > self.refill_at:
            return  # nothing goes over yet (and reading, which resumes at half the window, waits too)
        room = self.max_unacked - self.unacked
        backlog = self._backlog
        if room > 0 and backlog:
            if len(backlog) <= room:
                given, self._backlog = backlog, []
            else:
                given = backlog[:room]
                del backlog[:room]
            self.unacked += len(given)
            if self.on_messages is not None:
                self.on_messages(self, given)
        if self._backlog and not self._throttled and self.transport is not None:
            self._throttled = True
            self.transport.pause_reading()
        elif self._throttled and not self._backlog and self.unacked <= self.max_unacked // 2:
            self._throttled = False
            if not self._held and self.transport is not None and self.is_open:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        err = ConnectionLost(self.disconnect_reason or (str(exc) if exc else "connection closed"))
        if not self._connack.done():
            self._connack.set_exception(err)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        self._exactly_once.clear()
        self._quota_free.set()
        self._can_write.set()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if not self.closed.done():
            self.closed.set_result(exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # --- incoming control packets ---

    def _control(self, control: mqtt5.Control) -> None:
        if isinstance(control, mqtt5.Ack):
            if control.kind == mqtt5.PUBREC and control.packet_id in self._exactly_once:
                self._exactly_once.discard(control.packet_id)
                if control.reason < 0x80:
                    # Received by the broker: release it; the PUBCOMP completes it (and frees its slot).
                    self.write(mqtt5.pubrel(control.packet_id))
                    return
            fut = self._waiting.pop(control.packet_id, None)
            if fut is not None:
                self.inflight_out -= 1
                if self.inflight_out < self.send_quota:
                    self._quota_free.set()
                if not fut.done():
                    fut.set_result(control.reason)
        elif isinstance(control, mqtt5.Suback):
            sub = self._waiting.pop(control.packet_id, None)
            if sub is not None and not sub.done():
                sub.set_result(control)
        elif isinstance(control, mqtt5.Connack):
            if not self._connack.done():
                self._connack.set_result(control)
        elif isinstance(control, mqtt5.Disconnect):
            reason = reason_text(control.reason)
            if control.props.reason_string:
                reason += f": {control.props.reason_string}"
            self.disconnect_reason = f"the broker disconnected: {reason}"
            log.warning("the broker sent DISCONNECT", extra={"reason": reason})

    # --- writing ---

    def write(self, data: bytes) -> None:
        """Queue bytes; everything queued in one event-loop turn goes out in one write."""
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    async def drain(self) -> None:
        await self._can_write.wait()

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                return self._next_id
        raise MqttError("no free packet identifier")

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()

    def abort(self, why: BaseException | None = None) -> None:
        if why is not None and self.disconnect_reason is None:
            self.disconnect_reason = str(why)
        if self.transport is not None:
            self.transport.abort()

    # --- the session ---

    async def handshake(
        self,
        client_id: str,
        *,
        keepalive: int,
        clean_start: bool,
        session_expiry: int,
        receive_maximum: int,
        username: str | None,
        password: str | None,
        wait_s: float,
    ) -> mqtt5.Connack:
        self.write(
            mqtt5.connect(
                client_id,
                keepalive=keepalive,
                clean_start=clean_start,
                session_expiry=session_expiry,
                receive_maximum=receive_maximum,
                username=username,
                password=password,
            )
        )
        connack = await asyncio.wait_for(asyncio.shield(self._connack), wait_s)
        if connack.reason >= 0x80:
            text = reason_text(connack.reason)
            if connack.props.reason_string:
                text += f": {connack.props.reason_string}"
            raise MqttError(f"the broker refused the connection: {text}", connack.reason)
        if connack.props.receive_maximum:
            self.send_quota = connack.props.receive_maximum
        self.max_packet_size = connack.props.maximum_packet_size
        interval = connack.props.server_keep_alive or keepalive
        if interval:
            self._keepalive_task = self.loop.create_task(self._keepalive(interval))
        return connack

    async def _keepalive(self, interval: int) -> None:
        # A PINGREQ every half interval keeps the broker from dropping an idle connection; silence
        # for 1.5 intervals (not even a PINGRESP) means the broker or the path is gone.
        while not self.closed.done():
            await asyncio.sleep(interval / 2)
            if time.monotonic() - self.last_received > interval * 1.5:
                log.warning("no packet from the broker within 1.5 keepalive intervals, reconnecting")
                self.abort(ConnectionLost("keepalive timeout"))
                return
            self.write(mqtt5.PINGREQ_PACKET)

    async def subscribe(self, filters: list[tuple[str, int]], wait_s: float) -> list[int]:
        packet_id = self._packet_id()
        fut: asyncio.Future[mqtt5.Suback] = self.loop.create_future()
        self._waiting[packet_id] = fut
        self.write(mqtt5.subscribe(packet_id, filters))
        suback = await asyncio.wait_for(fut, wait_s)
        return suback.reasons

    async def unsubscribe(self, filters: list[str], wait_s: float) -> list[int]:
        packet_id = self._packet_id()
        fut: asyncio.Future[mqtt5.Suback] = self.loop.create_future()
        self._waiting[packet_id] = fut
        self.write(mqtt5.unsubscribe(packet_id, filters))
        unsuback = await asyncio.wait_for(fut, wait_s)
        return unsuback.reasons

    def ack(self, packet_ids: list[int], settled: int | None = None) -> None:
        """PUBACK (success) each packet id, in the order given, in one write.

        `settled`: how many received messages this settles (QoS 0 ones have no packet id).
        """
        if packet_ids and self.is_open:
            self.write(mqtt5.pubacks(packet_ids))
        if self.max_unacked:
            self.unacked -= len(packet_ids) if settled is None else settled
            if self._throttled and self.is_open:
                self._hand_over()

    def hold(self) -> None:
        """Stop reading for good (shutdown): nothing more is taken from the broker."""
        self._held = True
        if self.transport is not None and not self._throttled:
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    async def wait_send_slot(self) -> None:
        """Until a QoS 1 or 2 PUBLISH may be sent (the broker's Receive Maximum) and the socket takes more."""
        while self.inflight_out >= self.send_quota:
            if self.closed.done():
                raise ConnectionLost(self.disconnect_reason or "connection closed")
            self._quota_free.clear()
            await self._quota_free.wait()
        if not self._can_write.is_set():
            await self._can_write.wait()
        if self.closed.done():
            raise ConnectionLost(self.disconnect_reason or "connection closed")

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None = None
    ) -> asyncio.Future[int] | None:
        """Send a PUBLISH now; for QoS 1 a future of the PUBACK's reason code, for QoS 2 of the PUBCOMP's
        (or of a failed PUBREC's). Call `wait_send_slot` first."""
        if qos == 0:
            self.write(mqtt5.publish(topic, payload, qos=0, retain=retain, props=props))
            return None
        packet_id = self._packet_id()
        fut: asyncio.Future[int] = self.loop.create_future()
        self._waiting[packet_id] = fut
        if qos == 2:
            self._exactly_once.add(packet_id)
        self.inflight_out += 1  # a QoS 2 PUBLISH holds its slot until PUBCOMP (MQTT 5 Receive Maximum)
        self.write(mqtt5.publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id, props=props))
        return fut

    async def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None = None
    ) -> asyncio.Future[int] | None:
        """`wait_send_slot` + `publish_nowait`."""
        if qos:
            await self.wait_send_slot()
        return self.publish_nowait(topic, payload, qos, retain, props)

    async def disconnect(self, wait_s: float = 2.0, session_expiry: int | None = None) -> None:
        """DISCONNECT and close. Normally the session and its queued messages stay; `session_expiry=0`
        ends the session with the connection."""
        if self.is_open:
            self.write(mqtt5.disconnect(0, session_expiry))
            self._flush()
            assert self.transport is not None
            self.transport.close()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.closed), wait_s)
        if self.transport is not None and not self.closed.done():
            self.transport.abort()


async def open_connection(
    host: str,
    port: int,
    *,
    client_id: str,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    on_messages: Callable[[MqttConnection, list[Message]], None] | None = None,
    max_unacked: int = 0,
    refill_at: int | None = None,
    wait_s: float = 10.0,
) -> tuple[MqttConnection, mqtt5.Connack]:
    """Connect and complete the MQTT handshake; raises OSError, MqttError, ConnectionLost or TimeoutError."""
    loop = asyncio.get_running_loop()
    transport, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: MqttConnection(on_messages, max_unacked, refill_at), host, port, ssl=tls
        ),
        wait_s,
    )
    try:
        connack = await conn.handshake(
            client_id,
            keepalive=keepalive,
            clean_start=clean_start,
            session_expiry=session_expiry,
            receive_maximum=receive_maximum,
            username=username,
            password=password,
            wait_s=wait_s,
        )
    except BaseException:
        transport.abort()
        raise
    return conn, connack


def endpoint_options(endpoint: MqttEndpoint) -> dict[str, Any]:
    """Host, port, credentials ($MQTT_PASSWORD, registered as a secret) and TLS of an endpoint."""
    password = os.environ.get(MQTT_PASSWORD_ENV) if endpoint.username is not None else None
    register_secret(password)
    tls: ssl.SSLContext | None = None
    if endpoint.tls_ca_file:
        tls = ssl.create_default_context(cafile=endpoint.tls_ca_file)
    return {
        "host": endpoint.host,
        "port": endpoint.port,
        "username": endpoint.username,
        "password": password,
        "tls": tls,
        "keepalive": endpoint.keepalive_seconds,
    }
