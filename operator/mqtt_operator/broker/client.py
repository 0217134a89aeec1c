"""One MQTT 5 connection to a broker's dynamic-security plugin, used from asyncio.

Commands go to ``$CONTROL/dynamic-security/v1`` as ``{"commands": [...]}``, many per message (the
operator must create thousands of clients and roles quickly), and every command carries a
``correlationData`` that the plugin echoes in its answer on ``.../v1/response``. The answers are
broadcast to every subscriber of that topic, so our ids start with a random per-connection
prefix and foreign answers are ignored; concurrent callers never see each other's answers.

Why paho-mqtt with its own network thread: paho is the maintained reference client for MQTT 5
in Python and its threaded mode (``loop_start``) is its best-exercised path. The alternatives
either run the blocking TCP/TLS connect inside the event loop (paho's socket callbacks) or wrap
the same library (aiomqtt). The thread crosses into asyncio at exactly one point:
every paho callback hands its result to the event loop with ``call_soon_threadsafe``, so all of
this class's state is only ever touched on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_operator import metrics
from mqtt_operator.broker import commands as cmd
from mqtt_operator.broker.commands import CONTROL_TOPIC, RESPONSE_TOPIC, Command, Result
from mqtt_operator.broker.errors import (
    BrokerAuthFailed,
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    ClientNotFound,
    RoleNotFound,
)
from mqtt_operator.broker.model import Acl, AclType, BrokerClient, BrokerRole, DefaultAclAccess
from mqtt_operator.logs import register_secret

log = logging.getLogger(__name__)

# CONNACK reason codes that mean "these credentials are not welcome here".
_AUTH_REFUSED = {0x86, 0x87, 0x8C}


class DynsecClient:
    """A dynamic-security admin connection: `connect()` (or `async with`), `execute()`, `close()`.

    `timeout` bounds waiting for CONNACK/SUBACK and the silence between two answers while commands
    are outstanding, so a long batch that keeps progressing never times out but a stuck broker does.
    After the connection is lost, the next call connects again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        tls: ssl.SSLContext | None = None,
        *,
        timeout: float = 30.0,
        batch_size: int = 100,
        max_batch_bytes: int = 256 * 1024,
        keepalive: int = 30,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        register_secret(password)
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self._tls = tls
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.keepalive = keepalive
        self._prefix = secrets.token_hex(8)
        self._ids = itertools.count()
        self._paho: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._connect_lock = asyncio.Lock()
        self._connack: asyncio.Future[None] | None = None
        self._suback: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._pending: dict[str, asyncio.Future[Mapping[str, Any]]] = {}
        self._batches: dict[int, list[str]] = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._connected

    async def __aenter__(self) -> DynsecClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- connection ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and subscribe to the answers; raises BrokerUnreachable or BrokerAuthFailed."""
        async with self._connect_lock:
            if self._connected:
                return
            await self._drop_client()
            self._loop = asyncio.get_running_loop()
            paho = self._new_paho()
            self._paho = paho
            self._connack = self._loop.create_future()
            try:
                # paho's connect does a blocking DNS lookup, TCP (and TLS) connect: keep it off the loop.
                await asyncio.to_thread(paho.connect, self.host, self.port, self.keepalive, clean_start=True)
            except (OSError, ValueError) as exc:
                await self._drop_client()
                raise BrokerUnreachable(
                    f"cannot connect to the broker at {self.address}: {_describe(exc)}"
                ) from exc
            paho.loop_start()
            try:
                await asyncio.wait_for(asyncio.shield(self._connack), self.timeout)
                self._connected = True
                await self._subscribe_answers(paho)
            except TimeoutError:
                await self._drop_client()
                raise BrokerUnreachable(
                    f"the broker at {self.address} did not answer CONNECT/SUBSCRIBE within {self.timeout:g} s"
                ) from None
            except BaseException:
                await self._drop_client()
                raise
            log.debug("connected to the broker's dynamic security", extra={"broker": self.address})

    async def close(self) -> None:
        async with self._connect_lock:
            await self._drop_client()

    def _new_paho(self) -> mqtt.Client:
        paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"mqtt-operator-{self._prefix}",
            protocol=mqtt.MQTTv5,
            # A lost connection ends the paho thread; the next call reconnects (and resubscribes) cleanly.
            reconnect_on_failure=False,
        )
        paho.username_pw_set(self.username, self._password)
        if self._tls is not None:
            paho.tls_set_context(self._tls)
        paho.connect_timeout = self.timeout
        paho.max_inflight_messages_set(100)
        paho.on_connect = self._cb_connect
        paho.on_disconnect = self._cb_disconnect
        paho.on_subscribe = self._cb_subscribe
        paho.on_publish = self._cb_publish
        paho.on_message = self._cb_message
        return paho

    async def _subscribe_answers(self, paho: mqtt.Client) -> None:
        assert self._loop is not None
        rc, mid = paho.subscribe(RESPONSE_TOPIC, qos=0)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerUnreachable(
                f"cannot subscribe at the broker at {self.address}: {mqtt.error_string(rc)}"
            )
        future = self._suback.setdefault(mid, self._loop.create_future())
        codes = await asyncio.wait_for(future, self.timeout)
        if not codes or codes[0].is_failure:
            reason = str(codes[0]) if codes else "no reason code"
            raise BrokerAuthFailed(
                f"the broker at {self.address} refused user {self.username!r} a subscription to "
                f"{RESPONSE_TOPIC} ({reason}): that account needs the dynamic-security admin role"
            )

    async def _drop_client(self) -> None:
        paho, self._paho = self._paho, None
        self._connected = False
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()  # its connect() is the one dropping the client and raises its own error
        self._fail_all(BrokerUnreachable(f"the connection to the broker at {self.address} was closed"))
        if paho is not None:
            paho.disconnect()
            await asyncio.to_thread(paho.loop_stop)

    def _fail_all(self, error: BrokerError) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(error)
        for suback in self._suback.values():
            if not suback.done():
                suback.set_exception(error)
        self._suback.clear()
        self._batches.clear()

    # -- paho callbacks: run on paho's thread, so each only hands over to the event loop -----------

    def _hand_over(self, callback: Any, *args: Any) -> None:
        if self._loop is None:
            return
        # RuntimeError: the event loop is closed, and nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _cb_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._hand_over(self._on_connack, reason.value, str(reason))

    def _cb_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._hand_over(self._on_lost, client, str(reason))

    def _cb_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        self._hand_over(self._on_suback, mid, codes)

    def _cb_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._hand_over(self._on_puback, mid, reason.is_failure, str(reason))

    def _cb_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            log.warning("ignoring an answer on %s that is not JSON", message.topic)
            return
        responses = body.get("responses") if isinstance(body, dict) else None
        if isinstance(responses, list):
            self._hand_over(self._on_responses, responses)

    # -- the same events, on the event loop ----------------------------------------------------------

    def _on_connack(self, code: int, reason: str) -> None:
        if self._connack is None or self._connack.done():
            return
        if code == 0:
            self._connack.set_result(None)
        elif code in _AUTH_REFUSED:
            self._connack.set_exception(
                BrokerAuthFailed(f"the broker at {self.address} refused user {self.username!r}: {reason}")
            )
        else:
            self._connack.set_exception(
                BrokerUnreachable(f"the broker at {self.address} refused the connection: {reason}")
            )

    def _on_lost(self, client: mqtt.Client, reason: str) -> None:
        if client is not self._paho:
            return  # a connection we already dropped
        self._connected = False
        log.info("lost the connection to the broker: %s", reason, extra={"broker": self.address})
        self._fail_all(BrokerUnreachable(f"lost the connection to the broker at {self.address}: {reason}"))

    def _on_suback(self, mid: int, codes: list[ReasonCode]) -> None:
        assert self._loop is not None
        future = self._suback.setdefault(mid, self._loop.create_future())
        if not future.done():
            future.set_result(codes)

    def _on_puback(self, mid: int, failed: bool, reason: str) -> None:
        ids = self._batches.pop(mid, [])
        if not failed:
            return
        # The broker refused the command message itself, e.g. the account lacks the $CONTROL ACL.
        error = BrokerAuthFailed(
            f"the broker at {self.address} refused user {self.username!r} to publish to {CONTROL_TOPIC} "
            f"({reason}): that account needs the dynamic-security admin role"
        )
        for correlation in ids:
            future = self._pending.get(correlation)
            if future is not None and not future.done():
                future.set_exception(error)

    def _on_responses(self, responses: list[Any]) -> None:
        for response in responses:
            if not isinstance(response, dict):
                continue
            future = self._pending.get(str(response.get("correlationData")))
            if future is not None and not future.done():
                future.set_result(response)

    # -- commands -------------------------------------------------------------------------------------

    async def execute(self, commands: Sequence[Command]) -> list[Result]:
        """Run `commands` in order and return one Result per command, in the same order.

        A command the broker turns down gives a Result with `error` set (the others still run: the
        plugin carries on after a failed command). Connection problems raise BrokerUnreachable
        (BrokerAuthFailed, BrokerTimeout) and leave the outcome of unanswered commands unknown.
        """
        if not commands:
            return []
        await self.connect()
        paho = self._paho
        assert paho is not None and self._loop is not None
        correlations: list[str] = []
        started = time.perf_counter()
        try:
            for batch in self._batches_of(commands):
                ids = [f"{self._prefix}-{next(self._ids)}" for _ in batch]
                for correlation in ids:
                    self._pending[correlation] = self._loop.create_future()
                correlations.extend(ids)
                for command in batch:
                    for secret in command.secrets:
                        register_secret(secret)
                payload = json.dumps({"commands": [c.to_json(i) for c, i in zip(batch, ids, strict=True)]})
                info = paho.publish(CONTROL_TOPIC, payload, qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise BrokerUnreachable(
                        f"cannot send commands to the broker at {self.address}: {mqtt.error_string(info.rc)}"
                    )
                self._batches[info.mid] = ids
                log.debug(
                    "sent %d dynamic-security command(s): %s",
                    len(batch),
                    ", ".join(sorted({c.name for c in batch})),
                    extra={"broker": self.address},
                )
            answers = await self._answers([self._pending[c] for c in correlations])
        except BaseException:
            metrics.commands_done(
                (c.name for c in commands), ("error" for _ in commands), time.perf_counter() - started
            )
            raise
        finally:
            for correlation in correlations:
                future = self._pending.pop(correlation)
                # Consume what nobody will await, so asyncio does not report "exception never retrieved".
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.cancel()
        results = [cmd.result_from_response(c, a) for c, a in zip(commands, answers, strict=True)]
        metrics.commands_done(
            (c.name for c in commands),
            ("error" if r.error else "ok" for r in results),
            time.perf_counter() - started,
        )
        return results

    def _batches_of(self, commands: Sequence[Command]) -> Iterator[list[Command]]:
        batch: list[Command] = []
        size = 0
        for command in commands:
            # Rough size (without correlation ids) so one message stays well under any max_packet_size.
            cost = len(json.dumps(command.fields)) + 64
            if batch and (len(batch) >= self.batch_size or size + cost > self.max_batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(command)
            size += cost
        if batch:
            yield batch

    async def _answers(self, futures: list[asyncio.Future[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
        waiting: set[asyncio.Future[Mapping[str, Any]]] = set(futures)
        while waiting:
            done, waiting = await asyncio.wait(waiting, timeout=self.timeout)
            if not done:
                raise BrokerTimeout(
                    f"the broker at {self.address} left {len(waiting)} dynamic-security command(s) "
                    f"unanswered for {self.timeout:g} s"
                )
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
        return [future.result() for future in futures]

    async def _one(self, command: Command) -> Mapping[str, Any]:
        (result,) = await self.execute([command])
        return result.raise_for_error()

    # -- typed helpers --------------------------------------------------------------------------------

    async def list_clients(self) -> list[BrokerClient]:
        data = await self._one(cmd.list_clients(verbose=True))
        return [cmd.parse_client(item) for item in data.get("clients", ()) if isinstance(item, dict)]

    async def get_client(self, username: str) -> BrokerClient | None:
        """The client, or None when the broker has no client of that name."""
        try:
            data = await self._one(cmd.get_client(username))
        except ClientNotFound:
            return None
        return cmd.parse_client(data["client"])

    async def create_client(
        self,
        username: str,
        password: str,
        *,
        clientid: str | None = None,
        textname: str | None = None,
        textdescription: str | None = None,
    ) -> None:
        """A client without roles; give it roles with `add_client_role` (see commands.create_client)."""
        await self._one(
            cmd.create_client(
                username, password, clientid=clientid, textname=textname, textdescription=textdescription
            )
        )

    async def delete_client(self, username: str) -> None:
        await self._one(cmd.delete_client(username))

    async def set_client_password(self, username: str, password: str) -> None:
        await self._one(cmd.set_client_password(username, password))

    async def add_client_role(self, username: str, rolename: str, priority: int = -1) -> None:
        await self._one(cmd.add_client_role(username, rolename, priority))

    async def remove_client_role(self, username: str, rolename: str) -> None:
        await self._one(cmd.remove_client_role(username, rolename))

    async def list_roles(self) -> list[BrokerRole]:
        data = await self._one(cmd.list_roles(verbose=True))
        return [cmd.parse_role(item) for item in data.get("roles", ()) if isinstance(item, dict)]

    async def get_role(self, rolename: str) -> BrokerRole | None:
        """The role, or None when the broker has no role of that name."""
        try:
            data = await self._one(cmd.get_role(rolename))
        except RoleNotFound:
            return None
        return cmd.parse_role(data["role"])

    async def create_role(
        self,
        rolename: str,
        acls: Sequence[Acl] = (),
        *,
        textname: str | None = None,
        textdescription: str | None = None,
    ) -> None:
        await self._one(cmd.create_role(rolename, acls, textname=textname, textdescription=textdescription))

    async def delete_role(self, rolename: str) -> None:
        await self._one(cmd.delete_role(rolename))

    async def add_role_acl(self, rolename: str, acl: Acl) -> None:
        await self._one(cmd.add_role_acl(rolename, acl))

    async def remove_role_acl(self, rolename: str, acltype: AclType, topic: str) -> None:
        await self._one(cmd.remove_role_acl(rolename, acltype, topic))

    async def set_default_acl_access(self, access: DefaultAclAccess) -> None:
        await self._one(cmd.set_default_acl_access(access))

    async def get_default_acl_access(self) -> DefaultAclAccess:
        return cmd.parse_default_acl_access(await self._one(cmd.get_default_acl_access()))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text
