"""The function sink: calls the FunctionTrigger's HTTP function and judges each call's outcome.

One aiohttp `ClientSession` per worker with a bounded keep-alive pool (`maxConnections`); each call
has the deadline `timeoutSeconds`. A call carries one message (`batchMaxMessages` 1: the pipeline's
batch becomes one call per message) or one batch (the `BatchingSource` hands over a batch per take).
Calls wait in one FIFO queue for a fixed set of runner tasks: one when `ordered` (one call at a
time, in arrival order, a retry before anything behind it), else `concurrency` (never more than
`maxConnections`, so no call waits for a pooled connection inside its deadline). Unordered, a call
waiting for its retry leaves its runner and queues again when its delay is over: a few failing
messages do not hold back the others. The runners, not the pipeline's window of batches, bound
the calls (docs/bridge.md, "Calls in flight: why the sink keeps its own runners").

Outcome of a call, for all its messages:

| the function                                  | outcome                                             |
|-----------------------------------------------|-----------------------------------------------------|
| answers 2xx                                   | delivered (the reply, if any, published first)      |
| answers 429, 502, 503 or 504 (unavailable: a  | retried (honouring Retry-After, up to `maxDelay`)   |
| rollout, an overload, no backend ready)       | for `unavailableFor` (5m) since the first such      |
|                                               | answer, not counted against `attempts`; then the    |
|                                               | messages fail (dead letter). `unavailableFor: 0s`   |
|                                               | counts them as any 5xx                              |
| answers another 5xx, no answer in time, or an | retried after the `retry` policy's delay; after     |
| answer that is not valid HTTP                 | `attempts` retries the messages fail (dead letter)  |
| answers anything else (4xx, 3xx)              | fails at once, no retry (dead letter)               |
| cannot be connected to (refused, DNS, connect | TRANSIENT: the pipeline retries for as long as it   |
| timeout), or drops the connection unanswered  | takes; the messages stay unacknowledged in the      |
|                                               | broker; not counted against `attempts`              |

Once a call could not connect, the others do not try: they wait (up to `PARK_SECONDS`, then they
are TRANSIENT too) while one scout task checks every 0.5 s, doubling up to 5 s, that the function's
address takes a TCP connection; when it does, they go at once. So an outage costs one connection
attempt (and name lookup) per scout round, not one per message, and delivery resumes within
seconds of the function's return, not after the pipeline's backoff.

A connection dropped without an answer is first retried once at once (a kept-alive connection the
function had just closed); a second drop makes the call TRANSIENT. A timed-out call's result is
unknown: it is counted in `bridge_function_timeouts_total` and retried, so the function may see it
twice. What the calls so far have shown (calls made, failures counted against `attempts`) is kept
on the events, so a message that waited for an unreachable function keeps its retry count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple

import aiohttp
from yarl import URL

from mqtt_operator import __version__
from mqtt_operator.bridge.component import Readiness
from mqtt_operator.bridge.config import MqttToFunction, RetryPolicy
from mqtt_operator.bridge.function_events import Encoder, FunctionEvent, ReplyTemplate, printable
from mqtt_operator.bridge.metrics import Metrics
from mqtt_operator.bridge.mqtt_sink import MqttSink
from mqtt_operator.bridge.pipeline import TRANSIENT, Delivery, deliver_with_retry
from mqtt_operator.bridge.records import MqttPublish, Properties

log = logging.getLogger(__name__)

# Seconds to establish a TCP (and TLS) connection; a function that cannot be connected to is
# unreachable (nothing was sent), not a timed-out call.
CONNECT_TIMEOUT = 10.0
# Idle kept-alive connections are closed after this: below the servers' own idle timeouts
# (Node.js closes after 5 s), so a call rarely goes out on a connection the function just closed.
KEEPALIVE_SECONDS = 4.0
# The reachability probe (a TCP connect) runs when no call was made for this long.
PROBE_IDLE_SECONDS = 5.0
# While the function cannot be connected to, calls wait this long for the scout before they are
# TRANSIENT (the pipeline then backs off and delivers them again).
PARK_SECONDS = 30.0
SCOUT_FIRST_DELAY = 0.5
SCOUT_MAX_DELAY = 5.0
JITTER = 0.2  # retry delays are spread by +-20 %
# Answers that say the function cannot serve now rather than that the call failed: too many requests,
# and what a gateway or a Knative/Kubernetes Service answers while no backend is ready (a rollout).
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = f"mqtt-operator-bridge/{__version__}"


class AnswerKind(Enum):
    """What one HTTP exchange with the function came to (an `Answer`'s kind)."""

    OK = "ok"  # a 2xx answer
    RETRY = "retry"  # another 5xx, a timeout, an answer that is not HTTP: retried, counted in `attempts`
    UNAVAILABLE = "unavailable"  # 429, 502, 503, 504: retried for `unavailableFor`, not counted
    REFUSED = "refused"  # any other status: fails at once
    UNREACHABLE = "unreachable"  # no connection: nothing was sent
    DROPPED = "dropped"  # the connection closed without an answer


class Failure(str):
    """Why messages can never be delivered, with the function's last HTTP status when there was one.

    A `str`, so it travels through the pipeline like any reason; the dead letter reads `status`.
    """

    status: int | None

    def __new__(cls, reason: str, status: int | None = None) -> Failure:
        self = super().__new__(cls, reason)
        self.status = status
        return self


class _CallGroup:
    """The calls of one `deliver()`: once one finds the function unreachable, the rest are not tried."""

    __slots__ = ("halted",)

    def __init__(self) -> None:
        self.halted = False


class _Call:
    __slots__ = ("body", "done", "dropped_once", "events", "group", "headers")

    def __init__(
        self, events: Sequence[FunctionEvent], done: asyncio.Future[Delivery], group: _CallGroup
    ) -> None:
        self.events = events
        self.done = done
        self.group = group
        self.headers: dict[str, str] = {}
        self.body: bytes | None = None  # encoded on the first attempt, sent again by retries
        self.dropped_once = False


class Answer(NamedTuple):
    kind: AnswerKind
    status: int | None = None
    why: str = ""
    body: bytes | None = None
    content_type: str | None = None
    retry_after: float | None = None


def retry_delay(policy: RetryPolicy, failures: int, retry_after: float | None = None) -> float:
    """Seconds before the retry after the `failures`-th failed call (1 for the first retry).

    Exponential: `initialDelay` doubled per failure, capped at `maxDelay`; fixed: `initialDelay`;
    both +-20 % jitter and never above `maxDelay`. A Retry-After (seconds) of the function's
    answer makes it longer, up to `maxDelay`.
    """
    base = policy.initial_delay_seconds
    if policy.backoff == "exponential":
        base *= 2.0 ** min(failures - 1, 30)
    delay = min(base * (1 + JITTER * (2 * random.random() - 1)), policy.max_delay_seconds)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay_seconds))
    return max(delay, 0.0)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: not worth honouring
    return seconds if seconds >= 0 else None


class FunctionSink:
    name = "function"

    def __init__(
        self,
        spec: MqttToFunction,
        metrics: Metrics,
        publisher: MqttSink | None = None,
    ) -> None:
        self.spec = spec
        self.url = URL(spec.function.url)
        if self.url.scheme not in ("http", "https") or not self.url.host:
            raise ValueError(f"function.url {spec.function.url!r} is not an absolute http(s) URL")
        self.encoder = Encoder(spec)
        self.ordered = spec.ordered
        self.batch_size = max(spec.batch_max_messages, 1)
        self.concurrency = 1 if spec.ordered else max(1, min(spec.concurrency, spec.function.max_connections))
        self.timeout = spec.function.timeout_seconds
        self.retry = spec.retry
        self.reply = ReplyTemplate(spec.reply_topic) if spec.reply_topic else None
        if self.reply is not None and publisher is None:
            raise ValueError("a reply topic needs an MQTT publisher")
        self.publisher = publisher
        self.session: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[_Call] = asyncio.Queue()
        self._runners: list[asyncio.Task[None]] = []
        # Set while calls may go; cleared after a failed connect until the scout gets through.
        self._gate = asyncio.Event()
        self._gate.set()
        self._scout: asyncio.Task[None] | None = None
        # Grows while the gate keeps closing again (TCP connects, HTTP does not: TLS, a proxy); an
        # HTTP answer resets it.
        self._scout_delay = SCOUT_FIRST_DELAY
        self.reachable = False
        self.last_error: str | None = None
        self._last_activity = 0.0  # monotonic time of the last call's end or probe
        self._m_calls = metrics.function_calls
        self._m_succeeded = metrics.function_succeeded
        self._m_retries = metrics.function_retries
        self._m_timeouts = metrics.function_timeouts
        self._m_replies = metrics.function_replies
        self._m_reply_failures = metrics.function_reply_failures
        self._m_reachable = metrics.connected.labels(endpoint="function")
        self._m_reachable.set(0)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.spec.function.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.timeout, sock_connect=min(self.timeout, CONNECT_TIMEOUT)
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Per request: no default headers to merge, no Accept-Encoding, no decompression.
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
        )
        self._runners = [
            asyncio.create_task(self._run(), name=f"function-call-{i}") for i in range(self.concurrency)
        ]

    def readiness(self) -> Readiness:
        # Reported, not required: the sink sets its own `bridge_connected{endpoint="function"}`.
        return Readiness("function", self.reachable, self.last_error, required=False)

    async def close(self) -> None:
        tasks = [*self._runners, *([self._scout] if self._scout is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # --- the pipeline's Sink ---

    async def deliver(self, records: Sequence[FunctionEvent]) -> list[Delivery]:
        assert self._runners, "start() the sink first"
        loop = asyncio.get_running_loop()
        size = self.batch_size
        group = _CallGroup()
        calls = []
        for start in range(0, len(records), size):
            call = _Call(records[start : start + size], loop.create_future(), group)
            self._queue.put_nowait(call)
            calls.append(call)
        outcomes: list[Delivery] = []
        try:
            for call in calls:
                outcome = await call.done
                outcomes.extend([outcome] * len(call.events))
        except BaseException:
            for call in calls:
                call.done.cancel()  # not tried any more (shutdown deadline)
            raise
        return outcomes

    async def recover(self) -> None:
        """Nothing to rebuild: the next call opens a fresh connection when the old ones are gone."""

    # --- the runners ---

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._work(await queue.get())

    async def _work(self, call: _Call) -> None:
        while not call.done.done():
            if call.group.halted:
                call.done.set_result(TRANSIENT)
                return
            try:
                result = await self._attempt(call)
            except Exception as err:  # a bug or a config error: the pipeline stops the worker
                if not call.done.done():
                    call.done.set_exception(err)
                return
            if isinstance(result, float):  # retry after this many seconds
                if self.ordered:
                    await asyncio.sleep(result)  # nothing may overtake it
                    continue
                asyncio.get_running_loop().call_later(result, self._requeue, call)
                return
            if result is TRANSIENT:
                call.group.halted = True
            if not call.done.done():
                call.done.set_result(result)

    def _requeue(self, call: _Call) -> None:
        if not call.done.done():
            self._queue.put_nowait(call)

    async def _attempt(self, call: _Call) -> Delivery | float:
        """One HTTP exchange: the call's outcome, or the seconds to wait before trying again."""
        if not self._gate.is_set():
            try:
                await asyncio.wait_for(self._gate.wait(), PARK_SECONDS)
            except TimeoutError:
                return TRANSIENT  # still unreachable: nothing was sent
        events = call.events
        if call.body is None:
            call.headers, call.body = self.encoder.encode(events)
            call.headers["User-Agent"] = USER_AGENT
        answer = await self._exchange(events, call.headers, call.body)
        kind = answer.kind
        if kind is AnswerKind.OK:
            if self.reply is not None and answer.body is None:
                self._m_reply_failures.inc()
                log.warning("the function's answer is not published: its body could not be read")
            elif self.reply is not None and answer.body:
                await self._publish_reply(events, answer)
            return None
        if kind is AnswerKind.UNREACHABLE:
            return TRANSIENT
        if kind is AnswerKind.DROPPED:
            if call.dropped_once:
                return TRANSIENT
            call.dropped_once = True
            return 0.0  # probably a kept-alive connection the function had just closed
        if kind is AnswerKind.REFUSED:
            return Failure(f"{answer.why}; not retried", answer.status)
        if kind is AnswerKind.UNAVAILABLE and self.retry.unavailable_for_seconds > 0:
            return self._unavailable(events, answer)
        for event in events:  # a real failure ends a run of "unavailable" answers
            event.unavailable, event.unavailable_since = 0, None
        failures = max(e.failures for e in events) + 1
        for event in events:
            event.failures = failures
        if failures > self.retry.attempts:
            return Failure(
                f"{answer.why}; gave up after {events[0].calls} calls ({self.retry.attempts} retries)",
                answer.status,
            )
        delay = retry_delay(self.retry, failures, answer.retry_after)
        log.debug(
            "function call failed, retrying",
            extra={"why": answer.why, "retry": failures, "retry_in_s": round(delay, 3)},
        )
        return delay

    def _unavailable(self, events: Sequence[FunctionEvent], answer: Answer) -> Delivery | float:
        """The function said it cannot serve now (a rollout, an overload): retry, honouring its Retry-After,
        until it has said so for `unavailableFor`; these answers are not counted against `attempts`."""
        now = time.monotonic()
        since = min((e.unavailable_since for e in events if e.unavailable_since is not None), default=now)
        count = max(e.unavailable for e in events) + 1
        for event in events:
            event.unavailable, event.unavailable_since = count, since
        budget = self.retry.unavailable_for_seconds
        if now - since >= budget:
            return Failure(
                f"{answer.why}; unavailable for {now - since:.0f} s (retry.unavailableFor {budget:g} s), "
                f"after {events[0].calls} calls",
                answer.status,
            )
        delay = min(retry_delay(self.retry, count, answer.retry_after), budget - (now - since))
        log.debug(
            "function unavailable, retrying",
            extra={"why": answer.why, "unavailable_s": round(now - since, 1), "retry_in_s": round(delay, 3)},
        )
        return max(delay, 0.0)

    async def _exchange(
        self, events: Sequence[FunctionEvent], headers: dict[str, str], body: bytes
    ) -> Answer:
        session = self.session
        assert session is not None, "start() the sink first"
        is_retry = events[0].calls > 0
        try:
            async with session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                reason = resp.reason or ""
                answer_type = resp.headers.get("Content-Type")
                retry_after = resp.headers.get("Retry-After")
                try:
                    content: bytes | None = await resp.read()
                except (aiohttp.ClientError, TimeoutError) as err:
                    # The status is known; only the answer's body is lost.
                    log.warning("could not read the function's answer", extra={"error": str(err)})
                    content = None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            self._unreachable(f"cannot connect to the function at {self.url}: {err}")
            self._close_gate()
            return Answer(AnswerKind.UNREACHABLE)
        except TimeoutError:
            self._made_call(events, is_retry)
            self._m_timeouts.inc()
            return Answer(AnswerKind.RETRY, why=f"the function did not answer within {self.timeout:g} s")
        except aiohttp.ClientConnectionError as err:
            self._made_call(events, is_retry)
            self._unreachable(f"the function closed the connection without answering: {err}")
            return Answer(AnswerKind.DROPPED)
        except aiohttp.ClientError as err:  # an answer that is not valid HTTP: like a 5xx
            self._made_call(events, is_retry)
            return Answer(AnswerKind.RETRY, why=f"the function's answer is not valid HTTP: {err}")
        self._made_call(events, is_retry)
        self._answered()
        self._scout_delay = SCOUT_FIRST_DELAY
        if 200 <= status < 300:
            self._m_succeeded.inc()
            return Answer(AnswerKind.OK, status, body=content, content_type=answer_type)
        why = f"the function answered {status} {reason}".rstrip()
        if status in UNAVAILABLE_STATUSES:
            return Answer(AnswerKind.UNAVAILABLE, status, why, retry_after=_retry_after(retry_after))
        if status >= 500:
            return Answer(AnswerKind.RETRY, status, why, retry_after=_retry_after(retry_after))
        return Answer(AnswerKind.REFUSED, status, why)

    def _made_call(self, events: Sequence[FunctionEvent], is_retry: bool) -> None:
        self._m_calls.inc()
        if is_retry:
            self._m_retries.inc()
        for event in events:
            event.calls += 1
        self._last_activity = time.monotonic()

    def _answered(self) -> None:
        if not self.reachable:
            self.reachable = True
            self._m_reachable.set(1)
            if self.last_error is not None:
                log.info("the function is reachable again", extra={"url": str(self.url)})
            self.last_error = None

    def _close_gate(self) -> None:
        self._gate.clear()
        if self._scout is None or self._scout.done():
            self._scout = asyncio.create_task(self._scout_until_reachable(), name="function-scout")

    async def _scout_until_reachable(self) -> None:
        while True:
            await asyncio.sleep(self._scout_delay)
            self._scout_delay = min(self._scout_delay * 2, SCOUT_MAX_DELAY)
            if await self._can_connect():
                self._gate.set()
                return

    def _unreachable(self, why: str) -> None:
        if self.reachable or self.last_error is None:
            log.warning(why)
        self.reachable = False
        self.last_error = why
        self._m_reachable.set(0)
        self._last_activity = time.monotonic()

    # --- replies ---

    def reply_topic(self, events: Sequence[FunctionEvent]) -> tuple[str | None, str]:
        """Where the answer to a call with `events` goes, or (None, why it goes nowhere).

        A batch's answer goes to the one topic its messages give; when they give different ones it
        is not published (one device's command must not reach another).
        """
        assert self.reply is not None
        topics = set()
        for event in events:
            topic, why = self.reply.fill(event.msg.topic, event.client_id)
            if topic is None:
                return None, why
            topics.add(topic)
        if len(topics) > 1:
            return None, f"the batch's messages give {len(topics)} different reply topics"
        return topics.pop(), ""

    async def _publish_reply(self, events: Sequence[FunctionEvent], answer: Answer) -> None:
        assert self.publisher is not None and answer.body is not None
        topic, why = self.reply_topic(events)
        if topic is None:
            self._m_reply_failures.inc()
            log.warning(
                "the function's answer is not published: the reply topic cannot be filled",
                extra={"reason": why, "template": self.spec.reply_topic, "mqtt_topic": events[0].msg.topic},
            )
            return
        props = Properties()
        if answer.content_type is not None and printable(answer.content_type):
            props.content_type = answer.content_type
        source = events[0].msg.props
        if len(events) == 1 and source is not None:
            props.correlation_data = source.correlation_data
        record = MqttPublish(topic, answer.body, 1, False, [], props)
        failed = await deliver_with_retry(self.publisher, [record], on_transient=lambda _n, _why: None)
        if failed:
            self._m_reply_failures.inc()
            log.warning(
                "the function's answer is not published: the broker refused it",
                extra={"reason": failed[0][1], "reply_topic": topic},
            )
        else:
            self._m_replies.inc()

    # --- reachability while idle ---

    async def probe(self) -> None:
        """When no call was made for a while: can the function's address be connected to?"""
        if time.monotonic() - self._last_activity >= PROBE_IDLE_SECONDS:
            await self._can_connect()

    async def _can_connect(self) -> bool:
        """A TCP connection to the function's host and port (no HTTP request: a scaled-to-zero
        function is not woken); the reachability gauge follows."""
        host, port = self.url.host, self.url.port
        assert host is not None and port is not None
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as err:
            self._unreachable(f"cannot connect to the function at {host}:{port}: {err}")
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self._last_activity = time.monotonic()
        self._answered()
        return True
