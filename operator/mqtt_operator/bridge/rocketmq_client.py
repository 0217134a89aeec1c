"""The worker's RocketMQ 5 connection: rocketmq-python-client's gRPC channel, driven from asyncio in batches.

rocketmq-python-client (`import rocketmq`) keeps the client's side of the protocol: the gRPC channel
to the proxy (on an event loop of its own, in a thread of its own), the signed request metadata
(credentials), heartbeats, and the telemetry stream that gives the proxy the client's settings.
Its per-message calls are too slow for a bridge (about 400 synchronous sends, 1,500 receive+ack a
second), so this module builds the protocol's requests itself and sends them over the client's own
channel, awaiting the client's futures through `asyncio.wrap_future`:

- `RocketMQProducer.send()`: one SendMessageRequest carries many messages (the proxy stores them as
  one batch in one queue, all with the first one's born timestamp). FIFO messages go one per
  request: the proxy picks the queue by message group only for a single message.
- `RocketMQConsumer.receive()`: a long-polling ReceiveMessage of up to 32 messages (the proxy's cap);
  `ack()`: one AckMessage with many entries; `change_invisible()`: more time for a held message;
  `forward_to_dead_letter()`: one message to the group's dead-letter queue (`%DLQ%<group>`).

Answers are judged by `classify()`: `ok`, `transient` (retry: timeouts, the proxy unreachable,
throttling), `route` (the route itself is wrong: missing topic or group, refused credentials, a
message type the topic does not take; retried too, but readiness fails and the error says what to
change) or `message` (this message can never be sent: too large, an invalid property).

What RocketMQ 5.5.0 was seen to do (docs/bridge.md, RocketMQ):
- After the proxy restarts it has forgotten the clients' settings: receives fail with
  INTERNAL_SERVER_ERROR "settings is null" (heartbeats with "cannot find client settings") until
  the client sends them again, which it does every 5 minutes; `RocketMQConsumer.resync()` sends
  them at once, and the producer once sends work again. Sends need no settings.
- A consumer group that does not exist is refused on the telemetry stream, which the client only
  logs ("group not found: NAME"): the log filter keeps that refusal for the consumer to report.
- ForwardMessageToDeadLetterQueue creates `%DLQ%<group>` on the first forward (topic auto-creation
  off), readable with a consumer group of its own; the message keeps body, tag, keys and properties.
  The proxy settles the forwarded message (it does not come again unacknowledged) and answers a
  later AckMessage of it OK. Forwarding the same receipt handle twice writes the message twice.
- A gRPC channel reconnects by itself, with gRPC's backoff: the first send works 4-8 s after the
  proxy is back.
- Importing the client configures logging (replacing every handler of the process) and creates
  $HOME/logs/rocketmq_python for log files of up to 1 GB: `load_client()` imports it without that
  and sends its logger to ours, at WARNING, rate-limited.

Whatever this takes from the client beyond its public API (private methods and attributes, its
RpcClient, the log module stub, the settings hook) goes through `rocketmq_private`, which lists each
use and the client version it was checked against.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import socket
import threading
import time
import types
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple

from mqtt_operator.bridge import rocketmq_private as private
from mqtt_operator.bridge.config import ROCKETMQ_ACCESS_KEY_ENV, ROCKETMQ_SECRET_KEY_ENV, RocketMQEndpoint
from mqtt_operator.bridge.rocketmq_mapping import RocketMQMessage, RocketMQRecord
from mqtt_operator.logs import register_secret

log = logging.getLogger(__name__)

CLIENT_LOGGER: Final = "rocketmq-python-client"
REQUEST_TIMEOUT_S: Final = 10
# The proxy returns at most 32 messages per receive, whatever the request asks.
RECEIVE_BATCH: Final = 32
# The proxy refuses an invisible duration under 10 s (ILLEGAL_INVISIBLE_TIME) and clamps the long
# polling wait to 5..20 s.
MIN_INVISIBLE_S: Final = 10
LONG_POLL_S: Final = 5
# Entries per AckMessage request.
ACK_CHUNK: Final = 128
# How long a consumer waits for the proxy to take its settings, at start and after a failed receive.
SETTINGS_WAIT_S: Final = 10.0
RESYNC_WAIT_S: Final = 5.0

Kind = Literal["ok", "transient", "route", "message"]

# Codes by name (the generated enum's values are looked up once the client is loaded).
_MESSAGE_CODES = (
    "ILLEGAL_MESSAGE_KEY",
    "ILLEGAL_MESSAGE_GROUP",
    "ILLEGAL_MESSAGE_PROPERTY_KEY",
    "ILLEGAL_MESSAGE_ID",
    "ILLEGAL_DELIVERY_TIME",
    "MESSAGE_CORRUPTED",
    "PAYLOAD_TOO_LARGE",
    "MESSAGE_BODY_TOO_LARGE",
    "MESSAGE_BODY_EMPTY",
    "REQUEST_HEADER_FIELDS_TOO_LARGE",
    "MESSAGE_PROPERTIES_TOO_LARGE",
)
_ROUTE_CODES = (
    "BAD_REQUEST",
    "ILLEGAL_ACCESS_POINT",
    "ILLEGAL_TOPIC",
    "ILLEGAL_CONSUMER_GROUP",
    "ILLEGAL_MESSAGE_TAG",
    "ILLEGAL_FILTER_EXPRESSION",
    "ILLEGAL_INVISIBLE_TIME",
    "ILLEGAL_POLLING_TIME",
    "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE",
    "UNRECOGNIZED_CLIENT_TYPE",
    "CLIENT_ID_REQUIRED",
    "UNAUTHORIZED",
    "PAYMENT_REQUIRED",
    "FORBIDDEN",
    "NOT_FOUND",
    "TOPIC_NOT_FOUND",
    "CONSUMER_GROUP_NOT_FOUND",
    "NOT_IMPLEMENTED",
    "UNSUPPORTED",
    "VERSION_UNSUPPORTED",
    "VERIFY_FIFO_MESSAGE_UNSUPPORTED",
)


class Status(NamedTuple):
    kind: Kind
    text: str  # "" when ok, else a sentence for logs, readiness and the failure reason
    code: str = ""  # the answer's Code name (e.g. INVALID_RECEIPT_HANDLE), "" for failed calls


OK: Final = Status("ok", "")

_client: types.ModuleType | None = None
_load_lock = threading.Lock()
# Consumer groups the proxy refused on the telemetry stream ("group not found: NAME"), with its words.
# The client only logs that refusal; the consumer reads it from here when its settings never arrive.
_telemetry_refusals: dict[str, str] = {}
_GROUP_NOT_FOUND = "group not found: "
_codes: dict[int, str] = {}
_kinds: dict[int, Kind] = {}


class _Quieter(logging.Filter):
    """The client's log lines as one-liners, at most `burst` per `period` seconds.

    During an outage it logs every failed heartbeat, telemetry write and send, and its heartbeat
    callback re-raises, which concurrent.futures logs with a whole traceback.
    """

    def __init__(self, burst: int = 10, period: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._window = 0.0
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == CLIENT_LOGGER and _GROUP_NOT_FOUND in str(record.msg):
            text = str(record.msg)
            named = text.split(_GROUP_NOT_FOUND, 1)[1].split()
            if named:
                _telemetry_refusals[named[0]] = text
        if record.name == "asyncio" and "/rocketmq/" not in record.getMessage():
            return True  # our own loop's
        if record.name == "concurrent.futures":
            exc = record.exc_info[1] if record.exc_info else None
            if exc is None or not type(exc).__module__.startswith(("grpc", "rocketmq")):
                return True
            record.msg, record.args, record.exc_info = "RocketMQ client callback failed: %s", (exc,), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        with self._lock:
            now = time.monotonic()
            if now - self._window > self.period:
                self._window, self._count = now, 0
            self._count += 1
            if self._count > self.burst:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
        text = " ".join(record.getMessage().split())
        if suppressed:
            text += f" ({suppressed} earlier client log lines suppressed)"
        record.msg, record.args = "rocketmq client: %s", (text[:2000],)
        return True


def load_client() -> types.ModuleType:
    """`import rocketmq`, without its logging set-up (see the module's doc); the client logs through ours."""
    global _client
    with _load_lock:
        if _client is not None:
            return _client
        # The client's log package reads `logger` from a module which would otherwise call
        # logging.config.dictConfig (closing our handlers) and create files under $HOME.
        private.install_log_stub(logging.getLogger(CLIENT_LOGGER))
        import rocketmq
        from rocketmq.grpc_protocol import Code

        quieter = _Quieter()
        client_log = logging.getLogger(CLIENT_LOGGER)
        client_log.setLevel(logging.WARNING)
        client_log.propagate = True
        client_log.addFilter(quieter)
        # Its heartbeat callbacks re-raise (concurrent.futures logs them) and its telemetry writes can be
        # left pending when a stream is replaced (asyncio logs them when they are collected).
        logging.getLogger("concurrent.futures").addFilter(quieter)
        logging.getLogger("asyncio").addFilter(quieter)
        for name, value in Code.items():
            _codes[value] = name
            _kinds[value] = (
                "message" if name in _MESSAGE_CODES else "route" if name in _ROUTE_CODES else "transient"
            )
        _kinds[Code.Value("OK")] = "ok"
        module: types.ModuleType = rocketmq
        _client = module
        return module


def classify(code: int, message: str, *, topic: str = "", group: str = "") -> Status:
    """The kind of an answer's status, and a sentence that says what happened (and what to change)."""
    kind = _kinds.get(code, "transient")
    if kind == "ok":
        return OK
    name = _codes.get(code, str(code))
    return Status(kind, _sentence(name, message, topic, group), name)


def _sentence(name: str, message: str, topic: str, group: str) -> str:
    text = f"RocketMQ answered {name}: {message}"
    if name == "TOPIC_NOT_FOUND":
        text = f"the RocketMQ topic {topic!r} does not exist: create it ({name})"
    elif name == "CONSUMER_GROUP_NOT_FOUND":
        text = f"the RocketMQ consumer group {group!r} does not exist: create it ({name})"
    elif name in ("UNAUTHORIZED", "FORBIDDEN"):
        text = f"RocketMQ refused the credentials or their permissions ({name}: {message})"
    elif name == "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE":
        text = f"the topic {topic!r} does not take these messages ({name}: {message})"
    return text


def rpc_error(err: BaseException) -> Status:
    """A failed call (gRPC error, timeout): transient."""
    code = getattr(err, "code", None)
    if callable(code):
        details = getattr(err, "details", lambda: "")() or ""
        name = getattr(code(), "name", str(code()))
        return Status("transient", f"RocketMQ proxy not reachable ({name}: {' '.join(details.split())})")
    return Status("transient", f"RocketMQ call failed: {type(err).__name__}: {err}")


def credentials(endpoint: RocketMQEndpoint) -> tuple[str, str]:
    """(access key, secret key) from the environment when the route has credentials, else empty."""
    if not endpoint.credentials:
        return "", ""
    access, secret = os.environ.get(ROCKETMQ_ACCESS_KEY_ENV), os.environ.get(ROCKETMQ_SECRET_KEY_ENV)
    if not access or not secret:
        raise ValueError(
            f"the RocketMQ route has credentials but ${ROCKETMQ_ACCESS_KEY_ENV} or "
            f"${ROCKETMQ_SECRET_KEY_ENV} is not set"
        )
    register_secret(secret)
    return access, secret


class _Connection:
    """What producer and consumer share: the client object, its route to one topic, the error state."""

    def __init__(self, endpoint: RocketMQEndpoint, topic: str, group: str = "") -> None:
        self.rmq = load_client()
        self.endpoint = endpoint
        self.topic = topic
        self.group = group
        access, secret = credentials(endpoint)
        self.configuration = self.rmq.ClientConfiguration(
            endpoint.endpoints, self.rmq.Credentials(access, secret), request_timeout=REQUEST_TIMEOUT_S
        )
        self.client: Any = None
        self.started = False
        # Where requests go (the route's broker endpoints) and the route's queues.
        self.endpoints: Any = None
        self.queues: list[Any] = []
        self.accepts: set[int] = set()
        # The last call's outcome: readiness and the errors the sink/source report.
        self.reachable = False
        self.route_error: str | None = None
        self.last_error: str | None = None
        self._start_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self.endpoints is not None and self.reachable and self.route_error is None

    def _new_client(self) -> Any:
        raise NotImplementedError

    def note(self, status: Status) -> Status:
        """Record a call's outcome for readiness; returns it."""
        if status.kind == "ok":
            self.reachable = True
            self.route_error = None
            self.last_error = None
        elif status.kind == "route":
            self.reachable = True
            self.route_error = self.last_error = status.text
        elif status.kind == "transient":
            self.reachable = False
            self.last_error = status.text
        return status

    async def _call(self, future: Any) -> Any:
        """Await one of the client's concurrent.futures futures (completed on its loop thread)."""
        return await asyncio.wrap_future(future)

    async def connect(self) -> Status:
        """Start the client (once) and look the topic's route up; the outcome, also kept for readiness."""
        async with self._start_lock:
            if self.client is None:
                self.client = self._new_client()
            if not self.started:
                # startup() blocks on a route query (and spawns the client's threads): not on our loop.
                await asyncio.to_thread(self.client.startup)
                self.started = True
            status = await self.query_route()
            if status.kind != "ok":
                return status
            # The client's own route cache drives its heartbeats and telemetry (settings) stream.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(private.retrieve_topic_route, self.client, self.topic)
            return await self._connected()

    async def _connected(self) -> Status:
        """What else connecting takes once the route is known (a consumer: the proxy has its settings)."""
        return self.note(OK)

    async def probe(self) -> Status:
        """Is the proxy answering, and does the topic still exist? (readiness, also while nothing flows)"""
        if not self.started:
            return await self.connect()
        status = await self.query_route()
        return self.note(status) if status.kind == "ok" else status

    async def query_route(self) -> Status:
        """QueryRoute for the topic: is the proxy answering, does the topic exist? Failures are noted."""
        pb = self.rmq.grpc_protocol
        req = pb.QueryRouteRequest()
        req.topic.name = self.topic
        proxy = private.proxy_endpoints(self.configuration)
        req.endpoints.CopyFrom(private.endpoints_message(proxy))
        try:
            res = await self._call(
                private.unary_call(self.client, "query_topic_route_async", proxy, req, REQUEST_TIMEOUT_S)
            )
        except Exception as err:  # grpc.aio.AioRpcError and the client's own errors
            return self.note(rpc_error(err))
        status = classify(res.status.code, res.status.message, topic=self.topic, group=self.group)
        if status.kind != "ok":
            return self.note(status)
        queues = [q for q in res.message_queues if q.broker.id == 0 and self._usable(q)]
        if not queues:
            return self.note(Status("route", f"the RocketMQ topic {self.topic!r} has no usable queue"))
        self.queues = queues
        self.accepts = set(queues[0].accept_message_types)
        self.endpoints = private.rpc_endpoints(queues[0].broker.endpoints)
        return OK

    def _usable(self, queue: Any) -> bool:
        return True

    def _send_settings(self) -> None:
        """Send the client's settings again, on a new telemetry stream (the answer sets the event)."""
        event = private.settings_event(self.client)
        if event is not None:
            event.clear()
        _telemetry_refusals.pop(self.group, None)
        # The client creates its gRPC calls on its own loop: ask it there.
        private.send_settings(self.client, self.endpoints)

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and self.started:
            # shutdown() tells the proxy the client leaves (a blocking call per endpoint).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(client.shutdown), REQUEST_TIMEOUT_S + 5)
        self.started = False


class RocketMQProducer(_Connection):
    """Sends batches of records to one topic."""

    def __init__(self, endpoint: RocketMQEndpoint, topic: str, *, fifo: bool) -> None:
        super().__init__(endpoint, topic)
        self.fifo = fifo
        pb = self.rmq.grpc_protocol
        self._pb = pb
        self._type = pb.MessageType.Value("FIFO" if fifo else "NORMAL")
        self._identity = pb.Encoding.Value("IDENTITY")
        self._ids = private.message_id_codec()
        self._lost = False
        self._host = socket.gethostname()

    def _new_client(self) -> Any:
        return self.rmq.Producer(self.configuration, [self.topic], tls_enable=self.endpoint.tls)

    def note(self, status: Status) -> Status:
        # A restarted proxy has lost the producer's settings: sends work without them, but its heartbeats
        # fail until the client sends them again (every 5 minutes): send them once it answers again.
        if status.kind == "transient":
            self._lost = True
        elif status.kind == "ok" and self._lost and self.endpoints is not None:
            self._lost = False
            self._send_settings()
        return super().note(status)

    def _usable(self, queue: Any) -> bool:
        return queue.permission in (
            self._pb.Permission.Value("WRITE"),
            self._pb.Permission.Value("READ_WRITE"),
        )

    async def query_route(self) -> Status:
        status = await super().query_route()
        if status.kind == "ok" and self._type not in self.accepts:
            kinds = sorted(self._pb.MessageType.Name(t) for t in self.accepts)
            wanted = "FIFO" if self.fifo else "NORMAL"
            hint = "set ordered: false" if self.fifo else "set ordered: true"
            return self.note(
                Status(
                    "route",
                    f"the RocketMQ topic {self.topic!r} takes {'/'.join(kinds)} messages, the route sends "
                    f"{wanted} ones: {hint} or use a {wanted} topic",
                )
            )
        return status

    def request(self, records: Sequence[RocketMQRecord]) -> Any:
        """One SendMessageRequest of `records`."""
        req = self._pb.SendMessageRequest()
        add = req.messages.add
        now = time.time()
        seconds, nanos = int(now), int((now % 1) * 1e9)
        topic, kind, encoding, host, next_id = self.topic, self._type, self._identity, self._host, self._ids
        for body, tag, keys, properties, group in records:
            msg = add()
            msg.topic.name = topic
            msg.body = body
            if properties:
                msg.user_properties.update(properties)
            system = msg.system_properties
            if tag:
                system.tag = tag
            if keys:
                system.keys.extend(keys)
            system.message_id = next_id.next_message_id()
            system.message_type = kind
            system.born_timestamp.seconds = seconds
            system.born_timestamp.nanos = nanos
            system.born_host = host
            system.body_encoding = encoding
            if group:
                system.message_group = group
        return req

    async def send(self, records: Sequence[RocketMQRecord]) -> Status:
        """Send `records` in one request: one status for them all (the proxy stores them as one batch)."""
        client = self.client
        if client is None or self.endpoints is None:
            status = await self.connect()
            if status.kind != "ok":
                return status
            client = self.client
        try:
            res = await self._call(
                private.unary_call(
                    client, "send_message_async", self.endpoints, self.request(records), REQUEST_TIMEOUT_S
                )
            )
        except Exception as err:  # grpc.aio.AioRpcError and the client's own errors
            return self.note(rpc_error(err))
        status = classify(res.status.code, res.status.message, topic=self.topic)
        if status.kind == "ok" and len(res.entries) != 1 and len(res.entries) != len(records):
            status = Status("transient", f"RocketMQ answered {len(res.entries)} results for {len(records)}")
        elif status.kind == "ok":
            # A batch has one entry; several (MULTIPLE_RESULTS is not OK) would each need to be OK.
            bad = next((e.status for e in res.entries if e.status.code != res.status.code), None)
            if bad is not None:
                status = classify(bad.code, bad.message, topic=self.topic)
        return status if status.kind == "message" else self.note(status)


class RocketMQConsumer(_Connection):
    """Receives from one topic in a consumer group; acknowledges and extends held messages."""

    def __init__(self, endpoint: RocketMQEndpoint, topic: str, group: str, tag_filter: str) -> None:
        super().__init__(endpoint, topic, group)
        self.tag_filter = tag_filter or "*"
        pb = self.rmq.grpc_protocol
        self._pb = pb
        self._tag_type = pb.FilterType.Value("TAG")
        self._gzip = pb.Encoding.Value("GZIP")
        self._not_found = pb.Code.Value("MESSAGE_NOT_FOUND")
        self._ok = pb.Code.Value("OK")
        self._next_queue = 0
        # The group is FIFO (the proxy says so in the settings it sends back), None until known.
        self.fifo: bool | None = None
        # The proxy has this client's settings; after a failed receive they are sent again first.
        self.settings_ok = False
        self._resync_lock = asyncio.Lock()
        self._attempts = 0

    def _new_client(self) -> Any:
        consumer = self.rmq.SimpleConsumer(
            self.configuration,
            self.group,
            {self.topic: self.rmq.FilterExpression(self.tag_filter)},
            await_duration=LONG_POLL_S,
            tls_enable=self.endpoint.tls,
        )

        def settings(answer: Any) -> None:
            # The proxy's answer to our settings: whether the group delivers in order (FIFO).
            with contextlib.suppress(Exception):
                self.fifo = bool(answer.subscription.fifo)

        private.on_settings(consumer, settings)
        return consumer

    def _usable(self, queue: Any) -> bool:
        return queue.permission in (
            self._pb.Permission.Value("READ"),
            self._pb.Permission.Value("READ_WRITE"),
        )

    async def _connected(self) -> Status:
        if self._attempts:
            # The client sends its settings on its own only at start and every 5 minutes.
            self._send_settings()
        self._attempts += 1
        return await self._settings(SETTINGS_WAIT_S if self._attempts == 1 else RESYNC_WAIT_S)

    async def _settings(self, seconds: float) -> Status:
        """Until the proxy has the client's settings (a receive before fails with "settings is null")."""
        event = private.settings_event(self.client)
        deadline = time.monotonic() + seconds
        while event is not None and time.monotonic() < deadline:
            if event.is_set():
                self.settings_ok = True
                return self.note(OK)
            refused = _telemetry_refusals.get(self.group)
            if refused is not None:
                break
            await asyncio.sleep(0.05)
        self.settings_ok = False
        if _telemetry_refusals.get(self.group) is not None:
            return self.note(
                Status("route", f"the RocketMQ consumer group {self.group!r} does not exist: create it")
            )
        return self.note(Status("transient", "the RocketMQ proxy has not taken the consumer's settings"))

    async def resync(self) -> Status:
        """Send the client's settings again and wait for them to be taken (a restarted proxy lost them)."""
        async with self._resync_lock:
            if self.settings_ok:
                return OK  # another receiver just did
            # Only to a proxy that answers: a telemetry stream opened meanwhile would hang in the client.
            reachable = await self.query_route()
            if reachable.kind != "ok":
                return reachable
            self._send_settings()
            return await self._settings(RESYNC_WAIT_S)

    def _receive_request(self, invisible_s: int, batch: int) -> Any:
        req = self._pb.ReceiveMessageRequest()
        req.group.name = self.group
        queue = self.queues[self._next_queue % len(self.queues)]
        self._next_queue += 1
        req.message_queue.CopyFrom(queue)
        req.filter_expression.type = self._tag_type
        req.filter_expression.expression = self.tag_filter
        req.batch_size = batch
        req.invisible_duration.seconds = invisible_s
        req.long_polling_timeout.seconds = LONG_POLL_S
        req.auto_renew = False
        return req

    async def _receive_on_client_loop(self, req: Any, deadline_base: float, invisible_s: int) -> Any:
        """Runs on the client's loop: the streamed answer, decoded into RocketMQMessage objects."""
        call = await private.receive_message(
            self.client, self.endpoints, req, REQUEST_TIMEOUT_S + LONG_POLL_S
        )
        status = None
        messages: list[RocketMQMessage] = []
        gzip_encoding = self._gzip
        deadline = deadline_base + invisible_s
        try:
            async for res in call:
                content = res.WhichOneof("content")
                if content == "message":
                    pb_msg = res.message
                    system = pb_msg.system_properties
                    body = pb_msg.body
                    if system.body_encoding == gzip_encoding:
                        try:
                            body = gzip.decompress(body)
                        except (OSError, EOFError):
                            body = b""  # the mapping fails it: RocketMQ has no empty bodies
                    born, stored = system.born_timestamp, system.store_timestamp
                    messages.append(
                        RocketMQMessage(
                            body,
                            message_id=system.message_id,
                            receipt_handle=system.receipt_handle,
                            tag=system.tag or None,
                            keys=tuple(system.keys),
                            properties=dict(pb_msg.user_properties),
                            born=born.seconds + born.nanos / 1e9,
                            stored=stored.seconds + stored.nanos / 1e9,
                            message_group=system.message_group or None,
                            attempt=system.delivery_attempt or 1,
                            deadline=deadline,
                        )
                    )
                elif content == "status":
                    status = res.status
        except asyncio.CancelledError:
            call.cancel()
            raise
        return status, messages

    async def receive(
        self, invisible_s: int, batch: int = RECEIVE_BATCH
    ) -> tuple[Status, list[RocketMQMessage]]:
        """Long-poll for up to `batch` messages, invisible to the group for `invisible_s` seconds."""
        if self.client is None or self.endpoints is None:
            status = await self.connect()
            if status.kind != "ok":
                return status, []
        elif not self.settings_ok:
            status = await self.resync()
            if status.kind != "ok":
                return status, []
        client = self.client
        req = self._receive_request(invisible_s, batch)
        # Their deadline counts from before the request: the proxy's clock starts at the pop.
        started = time.monotonic()
        try:
            future = asyncio.run_coroutine_threadsafe(
                self._receive_on_client_loop(req, started, invisible_s), private.client_loop(client)
            )
            pb_status, messages = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # grpc.aio.AioRpcError and the client's own errors
            self.settings_ok = False  # the proxy may be a new one: send the settings again first
            return self.note(rpc_error(err)), []
        if pb_status is None or pb_status.code == self._not_found:
            return self.note(OK), messages
        status = classify(pb_status.code, pb_status.message, topic=self.topic, group=self.group)
        if status.kind != "ok":
            self.settings_ok = False
        return self.note(status), messages

    def _ack_request(self, messages: Sequence[RocketMQMessage]) -> Any:
        req = self._pb.AckMessageRequest()
        req.group.name = self.group
        req.topic.name = self.topic
        add = req.entries.add
        for msg in messages:
            entry = add()
            entry.message_id = msg.message_id
            entry.receipt_handle = msg.receipt_handle
        return req

    async def ack(self, messages: Sequence[RocketMQMessage]) -> list[tuple[RocketMQMessage, Status]]:
        """Acknowledge `messages`: those that were not, with why (they come to the group again)."""
        client = self.client
        if client is None or self.endpoints is None:
            return [(m, Status("transient", "not connected to RocketMQ")) for m in messages]
        chunks = [messages[i : i + ACK_CHUNK] for i in range(0, len(messages), ACK_CHUNK)]

        async def one(chunk: Sequence[RocketMQMessage]) -> list[tuple[RocketMQMessage, Status]]:
            try:
                res = await self._call(
                    private.unary_call(
                        client,
                        "ack_message_async",
                        self.endpoints,
                        self._ack_request(chunk),
                        REQUEST_TIMEOUT_S,
                    )
                )
            except Exception as err:  # grpc.aio.AioRpcError and the client's own errors
                status = self.note(rpc_error(err))
                return [(m, status) for m in chunk]
            failed: list[tuple[RocketMQMessage, Status]] = []
            by_handle = {m.receipt_handle: m for m in chunk}
            for entry in res.entries:
                if entry.status.code != self._ok:
                    msg = by_handle.get(entry.receipt_handle)
                    if msg is not None:
                        failed.append((msg, classify(entry.status.code, entry.status.message)))
            if not res.entries:
                status = classify(res.status.code, res.status.message, topic=self.topic, group=self.group)
                if status.kind != "ok":
                    return [(m, status) for m in chunk]
            self.note(OK)
            return failed

        results = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return [item for result in results for item in result]

    async def change_invisible(self, msg: RocketMQMessage, invisible_s: int) -> Status:
        """Keep `msg` invisible for `invisible_s` more seconds (its receipt handle changes)."""
        client = self.client
        if client is None or self.endpoints is None:
            return Status("transient", "not connected to RocketMQ")
        req = self._pb.ChangeInvisibleDurationRequest()
        req.group.name = self.group
        req.topic.name = self.topic
        req.receipt_handle = msg.receipt_handle
        req.invisible_duration.seconds = invisible_s
        req.message_id = msg.message_id
        started = time.monotonic()
        try:
            res = await self._call(
                private.unary_call(
                    client, "change_invisible_duration_async", self.endpoints, req, REQUEST_TIMEOUT_S
                )
            )
        except Exception as err:  # grpc.aio.AioRpcError and the client's own errors
            return rpc_error(err)
        status = classify(res.status.code, res.status.message, topic=self.topic, group=self.group)
        if status.kind == "ok":
            msg.receipt_handle = res.receipt_handle
            msg.deadline = started + invisible_s
        return status

    async def forward_to_dead_letter(self, msg: RocketMQMessage) -> Status:
        """ForwardMessageToDeadLetterQueue: `msg` goes to the group's dead-letter queue, `%DLQ%<group>`."""
        client = self.client
        if client is None or self.endpoints is None:
            return Status("transient", "not connected to RocketMQ")
        req = self._pb.ForwardMessageToDeadLetterQueueRequest()
        req.group.name = self.group
        req.topic.name = self.topic
        req.receipt_handle = msg.receipt_handle
        req.message_id = msg.message_id
        req.delivery_attempt = msg.attempt
        # The broker sends a message back for another attempt while fewer than this were made: the
        # attempt made so far is the last one, so the message goes straight to the dead-letter queue.
        req.max_delivery_attempts = msg.attempt
        try:
            res = await self._call(
                private.unary_call(
                    client,
                    "forward_message_to_dead_letter_queue_async",
                    self.endpoints,
                    req,
                    REQUEST_TIMEOUT_S,
                )
            )
        except Exception as err:  # grpc.aio.AioRpcError and the client's own errors
            return self.note(rpc_error(err))
        return classify(res.status.code, res.status.message, topic=self.topic, group=self.group)
