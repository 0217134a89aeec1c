"""MQTT -> HTTP function (FunctionTrigger) through the real worker process and real Mosquitto.

The function is a real aiohttp server in a thread of the test, on a loopback port, answering as
each test tells it; it records every call (headers, body, time) and the most calls it had in
flight at once.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from test_bridge_helpers import (
    Subscriber,
    SysDropped,
    WorkerProcess,
    no_drop_broker,
    paho_publish,
    publish_fast,
    unique,
    wait_for,
)

from mqtt_operator.bridge.config import BridgeConfig
from testenv.mosquitto import Mosquitto
from testenv.process import free_port

pytestmark = pytest.mark.integration

FN = "mqtt_to_function"
SOURCE = "/mqtt-operator/tests/devices"


@dataclass
class Call:
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() when it arrived


@dataclass
class Answer:
    status: int = 200  # 0: close the connection without answering
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Function:
    """A real HTTP function on 127.0.0.1:`port`; `answer(call)` decides each answer."""

    def __init__(self, answer: Callable[[Call], Answer] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/fn"
        self.answer = answer or (lambda _call: Answer())
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        call = Call({k.lower(): v for k, v in request.headers.items()}, body, time.time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.calls.append(call)
            answer = self.answer(call)
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.status == 0:
                assert request.transport is not None
                request.transport.abort()
                raise web.HTTPInternalServerError  # never sent: the connection is gone
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        finally:
            self.in_flight -= 1

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> Function:
        self._run(self._start())
        return self

    def stop(self) -> None:
        """Down: the port refuses connections (kept-alive ones are closed)."""
        if self._runner is not None:
            self._run(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def bodies(self) -> list[bytes]:
        return [c.body for c in list(self.calls)]


def trigger_config(broker: Mosquitto, fn: Function, **spec: Any) -> dict[str, Any]:
    """A BridgeConfig with only `mqttToFunction`, as the operator writes it (no Kafka)."""
    function = {"url": fn.url, "timeoutSeconds": 5, **spec.pop("function", {})}
    config: dict[str, Any] = {
        "owner": "tests/trigger",
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "clientIdPrefix": unique("trigger"),
            "sessionExpirySeconds": 600,
            "receiveMaximum": 1000,
            "keepaliveSeconds": 10,
        },
        "mqttToFunction": {
            "topicFilters": ["vehicles/#"],
            "shareGroup": unique("g"),
            "function": function,
            "eventSource": SOURCE,
            **spec,
        },
        "metricsPort": 0,
        "drainSeconds": 15,
    }
    assert BridgeConfig.model_validate(config).kafka is None
    return config


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = no_drop_broker()
    yield b
    b.stop()


@pytest.fixture
def fn() -> Iterator[Function]:
    f = Function().start()
    yield f
    f.close()


def start(broker: Mosquitto, fn: Function, **spec: Any) -> WorkerProcess:
    return WorkerProcess(trigger_config(broker, fn, **spec)).start()


def delivered(worker: WorkerProcess) -> float:
    return worker.metric("bridge_delivered_total", direction=FN)


def function_gauge(worker: WorkerProcess) -> float:
    return worker.metric("bridge_connected", endpoint="function")


def test_cloudevents_binary_mode(broker: Mosquitto, fn: Function) -> None:
    worker = start(broker, fn)
    started = time.time()
    try:
        paho_publish(
            broker.port,
            [
                (
                    "vehicles/car-1/battery",
                    b'{"level": 17}',
                    {"user_properties": [("clientId", "car-1")], "content_type": "application/json"},
                ),
                ("vehicles/car-2/raw", b"\x00\x01\xff", {}),
                ("vehicles/Ä 1/state", b"hi", {}),
            ],
        )
        wait_for("3 calls", lambda: len(fn.calls) >= 3, 30)
        wait_for("3 delivered", lambda: delivered(worker) == 3, 10)
        assert worker.metric("bridge_function_calls_total") == 3
        assert worker.metric("bridge_function_succeeded_total") == 3
        assert worker.metric("bridge_function_retries_total") == 0
        assert function_gauge(worker) == 1
    finally:
        worker.stop()
    by_subject = {unquote(c.headers["ce-subject"]): c for c in fn.calls}
    assert set(by_subject) == {"vehicles/car-1/battery", "vehicles/car-2/raw", "vehicles/Ä 1/state"}
    assert len({c.headers["ce-id"] for c in fn.calls}) == 3
    for topic, call in by_subject.items():
        h = call.headers
        assert (h["ce-specversion"], h["ce-type"]) == ("1.0", "io.mqtt-operator.message")
        assert unquote(unquote(h["ce-source"])) == f"{SOURCE}/{topic}"
        assert (h["ce-mqttqos"], h["ce-mqttretain"]) == ("1", "false")
        when = datetime.fromisoformat(h["ce-time"].replace("Z", "+00:00")).timestamp()
        assert started - 1 <= when <= time.time()
    car1 = by_subject["vehicles/car-1/battery"]
    assert (car1.body, car1.headers["content-type"]) == (b'{"level": 17}', "application/json")
    assert car1.headers["ce-mqttclientid"] == "car-1"
    car2 = by_subject["vehicles/car-2/raw"]
    assert (car2.body, car2.headers["content-type"]) == (b"\x00\x01\xff", "application/octet-stream")
    assert "ce-mqttclientid" not in car2.headers
    odd = by_subject["vehicles/Ä 1/state"]
    assert odd.headers["ce-subject"] == "vehicles/%C3%84%201/state"
    assert (odd.body, odd.headers["content-type"]) == (b"hi", "text/plain; charset=utf-8")


def test_base64_payload(broker: Mosquitto, fn: Function) -> None:
    worker = start(broker, fn, base64Payload=True, clientIdTopicLevel=1)
    try:
        paho_publish(broker.port, [("vehicles/car-3/image", b"\x89PNG\x00", {"content_type": "image/png"})])
        wait_for("the call", lambda: fn.calls, 30)
    finally:
        worker.stop()
    [call] = fn.calls
    assert base64.b64decode(call.body) == b"\x89PNG\x00"
    assert call.headers["content-type"] == "text/plain; charset=us-ascii"
    assert (call.headers["ce-mqttencoding"], call.headers["ce-mqttcontenttype"]) == ("base64", "image/png")
    assert call.headers["ce-mqttclientid"] == "car-3"


def test_json_format(broker: Mosquitto, fn: Function) -> None:
    worker = start(broker, fn, function={"format": "json"}, clientIdTopicLevel=1)
    try:
        paho_publish(
            broker.port,
            [("vehicles/car-4/state", b"\xff\x00", {"user_properties": [("fw", "1.2")]})],
        )
        wait_for("the call", lambda: fn.calls, 30)
    finally:
        worker.stop()
    [call] = fn.calls
    assert call.headers["content-type"] == "application/json"
    assert not any(name.startswith("ce-") for name in call.headers)
    body = json.loads(call.body)
    assert abs(body.pop("ts") / 1000 - time.time()) < 60
    assert body.pop("id")
    assert body == {
        "topic": "vehicles/car-4/state",
        "clientId": "car-4",
        "payload": base64.b64encode(b"\xff\x00").decode(),
        "payloadEncoding": "base64",
        "userProperties": {"fw": "1.2"},
        "qos": 1,
        "retain": False,
    }


def test_batches_of_n_and_the_max_wait_flush(broker: Mosquitto, fn: Function) -> None:
    worker = start(broker, fn, batchMaxMessages=5, batchMaxWaitSeconds=1)
    try:
        before = time.time()
        messages = [(f"vehicles/car-{i}/s", json.dumps({"seq": i}).encode(), {}) for i in range(11)]
        messages.append(("vehicles/car-11/s", b"\x00raw", {}))
        paho_publish(broker.port, messages)
        wait_for("12 events", lambda: sum(len(json.loads(b)) for b in fn.bodies()) >= 12, 30)
        wait_for("12 delivered", lambda: delivered(worker) == 12, 10)
        assert worker.metric("bridge_function_calls_total") == 3
    finally:
        worker.stop()
    assert {c.headers["content-type"] for c in fn.calls} == {"application/cloudevents-batch+json"}
    # Batches may be called concurrently (unordered): put them in the order of their first message.
    batches = [json.loads(c.body) for c in fn.calls]
    batches.sort(key=lambda b: int(b[0]["subject"].split("car-")[1].split("/")[0]))
    assert [len(b) for b in batches] == [5, 5, 2]
    events = [e for b in batches for e in b]
    assert [e["subject"] for e in events] == [f"vehicles/car-{i}/s" for i in range(12)]
    assert [e["data"] for e in events[:11]] == [{"seq": i} for i in range(11)]
    assert base64.b64decode(events[11]["data_base64"]) == b"\x00raw"
    assert {e["specversion"] for e in events} == {"1.0"}
    assert len({e["id"] for e in events}) == 12
    # The partial batch of two went once the wait had passed, not earlier.
    partial = next(c for c in fn.calls if len(json.loads(c.body)) == 2)
    assert partial.at >= before + 1.0


def test_retries_timeouts_and_dead_letters(broker: Mosquitto, fn: Function) -> None:
    seen: dict[bytes, int] = {}

    def answer(call: Call) -> Answer:
        n = seen[call.body] = seen.get(call.body, 0) + 1
        if call.body == b"flaky":
            return Answer(500 if n <= 2 else 200)
        if call.body == b"bad":
            return Answer(400, b"no such car")
        if call.body == b"down":
            return Answer(500)
        if call.body == b"slow":
            return Answer(200, delay=4.0 if n == 1 else 0.0)
        return Answer()

    fn.answer = answer
    dlq = unique("dlq")
    sub = Subscriber(broker.port, dlq)
    worker = start(
        broker,
        fn,
        function={"timeoutSeconds": 2},
        retry={"attempts": 3, "initialDelaySeconds": 0.2, "maxDelaySeconds": 1},
        deadLetterTopic=dlq,
    )

    def counts() -> tuple[float, ...]:
        """(calls, succeeded, retries, timeouts, dead-lettered, failed for good)."""
        return (
            worker.metric("bridge_function_calls_total"),
            worker.metric("bridge_function_succeeded_total"),
            worker.metric("bridge_function_retries_total"),
            worker.metric("bridge_function_timeouts_total"),
            worker.metric("bridge_dead_lettered_total", direction=FN),
            worker.metric("bridge_failed_total", direction=FN, kind="permanent"),
        )

    try:
        # 500, 500, 200: one success after two retries.
        paho_publish(broker.port, [("vehicles/car-1/s", b"flaky", {})])
        wait_for("flaky delivered", lambda: delivered(worker) == 1, 30)
        assert counts() == (3, 1, 2, 0, 0, 0)
        flaky = [c for c in fn.calls if c.body == b"flaky"]
        assert len({c.headers["ce-id"] for c in flaky}) == 1  # a retry is the same event

        # 400: dead-lettered at once, no retry.
        paho_publish(broker.port, [("vehicles/car-2/s", b"bad", {"user_properties": [("trace", "t1")]})])
        wait_for("the dead letter", lambda: sub.messages, 30)
        wait_for("bad settled", lambda: counts()[4] == 1, 10)
        assert counts() == (4, 1, 2, 0, 1, 1)
        assert seen[b"bad"] == 1
        topic, payload, qos, retain, props = sub.messages[0]
        assert (topic, payload, qos, retain) == (dlq, b"bad", 1, False)
        properties = dict(props)
        assert properties["statusCode"] == "400"
        assert "400" in properties["reason"] and "not retried" in properties["reason"]
        assert (properties["sourceTopic"], properties["trace"]) == ("vehicles/car-2/s", "t1")

        # 500 (the function's own error) every time: the first call and three retries, then the dead letter.
        paho_publish(broker.port, [("vehicles/car-3/s", b"down", {})])
        wait_for("the second dead letter", lambda: len(sub.messages) == 2, 30)
        wait_for("down settled", lambda: counts()[4] == 2, 10)
        assert counts() == (8, 1, 5, 0, 2, 2)
        assert seen[b"down"] == 4
        properties = dict(sub.messages[1][4])
        assert properties["statusCode"] == "500"
        assert "gave up after 4 calls" in properties["reason"]

        # No answer within the timeout: unknown result, counted and retried.
        paho_publish(broker.port, [("vehicles/car-4/s", b"slow", {})])
        wait_for("slow delivered", lambda: delivered(worker) == 2, 30)
        assert counts() == (10, 2, 6, 1, 2, 2)
        assert seen[b"slow"] == 2
    finally:
        worker.stop()
        sub.close()
    assert len(sub.messages) == 2


def test_the_default_retry_rides_out_20_seconds_of_503_as_during_a_rollout(
    broker: Mosquitto, fn: Function
) -> None:
    """The default retry policy (3 attempts, exponential from 1 s) and a function answering 503 for 20 s,
    as a Deployment or Knative rollout does: every message of that window is delivered, none
    dead-lettered; the 503s used no attempt. A Retry-After is honoured."""
    unavailable_until = time.monotonic() + 20

    def answer(_call: Call) -> Answer:
        if time.monotonic() < unavailable_until:
            return Answer(503, headers={"Retry-After": "2"})
        return Answer()

    fn.answer = answer
    dlq = unique("dlq")
    worker = start(broker, fn, deadLetterTopic=dlq)
    try:
        paho_publish(broker.port, [(f"vehicles/car-{i % 5}/s", b"%d" % i, {}) for i in range(50)])
        wait_for("all 50 delivered", lambda: delivered(worker) == 50, 120)
        assert worker.metric("bridge_dead_lettered_total", direction=FN) == 0
        assert worker.metric("bridge_failed_total", direction=FN, kind="permanent") == 0
        # Retry-After: 2 made every retry of a message wait at least 2 s (less the +-20 % jitter).
        by_message: dict[bytes, list[float]] = {}
        for call in list(fn.calls):
            by_message.setdefault(call.body, []).append(call.at)
        gaps = [b - a for times in by_message.values() for a, b in itertools.pairwise(times)]
        assert gaps and min(gaps) >= 1.9, sorted(gaps)[:5]
    finally:
        worker.stop()


def test_unavailable_for_longer_than_its_budget_is_dead_lettered(broker: Mosquitto, fn: Function) -> None:
    fn.answer = lambda _call: Answer(503)
    dlq = unique("dlq")
    sub = Subscriber(broker.port, dlq)
    worker = start(
        broker,
        fn,
        retry={"attempts": 3, "initialDelaySeconds": 0.2, "maxDelaySeconds": 0.5, "unavailableForSeconds": 3},
        deadLetterTopic=dlq,
    )
    try:
        paho_publish(broker.port, [("vehicles/car-1/s", b"gone", {})])
        wait_for("the dead letter", lambda: sub.messages, 30)
        properties = dict(sub.messages[0][4])
        assert properties["statusCode"] == "503"
        assert "retry.unavailableFor 3 s" in properties["reason"]
        calls = [c.at for c in fn.calls]
        # More calls than `attempts` allows, over about the budget: the 503s were not counted.
        assert len(calls) > 4 and 2.5 <= calls[-1] - calls[0] <= 6.0, (len(calls), calls[-1] - calls[0])
    finally:
        worker.stop()
        sub.close()


def test_a_connection_dropped_without_answer_uses_no_attempt(broker: Mosquitto, fn: Function) -> None:
    drops = 0

    def answer(_call: Call) -> Answer:
        nonlocal drops
        if drops < 3:
            drops += 1
            return Answer(0)
        return Answer()

    fn.answer = answer
    dlq = unique("dlq")
    worker = start(broker, fn, retry={"attempts": 0}, deadLetterTopic=dlq)
    try:
        paho_publish(broker.port, [("vehicles/car-1/s", b"cut", {})])
        wait_for("delivered", lambda: delivered(worker) == 1, 30)
        # Each call reached the function (and counts); none used a retry attempt (there are none).
        assert worker.metric("bridge_function_calls_total") == 4
        assert worker.metric("bridge_function_succeeded_total") == 1
        assert worker.metric("bridge_dead_lettered_total", direction=FN) == 0
        assert worker.metric("bridge_failed_total", direction=FN, kind="permanent") == 0
    finally:
        worker.stop()
    assert fn.bodies() == [b"cut"] * 4


def test_function_down_for_30_seconds_loses_nothing(broker: Mosquitto, fn: Function) -> None:
    dropped = SysDropped(broker.port)
    worker = start(broker, fn, concurrency=8)
    try:
        paho_publish(broker.port, [(f"vehicles/car-{i % 7}/s", b"%d" % i, {}) for i in range(100)])
        wait_for("100 delivered", lambda: delivered(worker) == 100, 30)
        assert function_gauge(worker) == 1
        fn.stop()
        down_since = time.monotonic()
        paho_publish(broker.port, [(f"vehicles/car-{i % 7}/s", b"%d" % i, {}) for i in range(100, 600)])
        wait_for("the function seen as down", lambda: function_gauge(worker) == 0, 20)
        time.sleep(max(30 - (time.monotonic() - down_since), 0))
        assert delivered(worker) == 100
        assert worker.ready()  # a down function does not make the worker unready
        fn.start()
        wait_for("all 600 seen", lambda: {int(b) for b in fn.bodies()} == set(range(600)), 60)
        wait_for("600 delivered", lambda: delivered(worker) == 600, 20)
        assert function_gauge(worker) == 1
        assert worker.metric("bridge_failed_total", direction=FN, kind="permanent") == 0
        assert worker.metric("bridge_failed_total", direction=FN, kind="transient") > 0
    finally:
        worker.stop()
    with dropped:
        assert dropped.value() == 0


def test_ordered_mode_keeps_the_order_of_1000_messages(broker: Mosquitto, fn: Function) -> None:
    answered: list[int] = []
    failed_once: set[int] = set()

    def answer(call: Call) -> Answer:
        # Every 100th message fails once: its retry must come before anything behind it. The
        # short delay keeps each call in the handler long enough for an overlap to show.
        seq = int(call.body)
        if seq % 100 == 99 and seq not in failed_once:
            failed_once.add(seq)
            return Answer(503, delay=0.001)
        answered.append(seq)
        return Answer(delay=0.001)

    fn.answer = answer
    worker = start(broker, fn, ordered=True, concurrency=1, retry={"initialDelaySeconds": 0.05})
    try:
        publish_fast(broker.port, ((f"vehicles/car-{i % 10}/s", b"%d" % i) for i in range(1000)))
        wait_for("1000 answered", lambda: len(answered) >= 1000, 90)
        wait_for("1000 delivered", lambda: delivered(worker) == 1000, 10)
        assert worker.metric("bridge_function_retries_total") == 10
    finally:
        worker.stop()
    assert answered == list(range(1000))
    assert fn.max_in_flight == 1


def test_unordered_mode_calls_concurrently(broker: Mosquitto, fn: Function) -> None:
    fn.answer = lambda _call: Answer(delay=0.05)
    worker = start(broker, fn, concurrency=8)
    try:
        publish_fast(broker.port, ((f"vehicles/car-{i % 10}/s", b"%d" % i) for i in range(200)))
        wait_for("200 delivered", lambda: delivered(worker) == 200, 60)
    finally:
        worker.stop()
    assert sorted(int(b) for b in fn.bodies()) == list(range(200))
    assert fn.max_in_flight > 1 and fn.max_in_flight <= 8


def test_reply_topic(broker: Mosquitto, fn: Function) -> None:
    def answer(call: Call) -> Answer:
        if call.body == b"low":
            return Answer(200, b'{"cmd": "charge"}', {"Content-Type": "application/json"})
        return Answer(200)

    fn.answer = answer
    sub = Subscriber(broker.port, "commands/#")
    worker = start(broker, fn, replyTopic="commands/{level.1}/{clientId}")
    try:
        paho_publish(
            broker.port,
            [
                ("vehicles/car-7/battery", b"low", {"user_properties": [("clientId", "car-7")]}),
                ("vehicles/car-8/battery", b"fine", {"user_properties": [("clientId", "car-8")]}),
                # No client id known: the template cannot be filled; the message still succeeds.
                ("vehicles/car-9/battery", b"low", {}),
            ],
        )
        wait_for("3 delivered", lambda: delivered(worker) == 3, 30)
        wait_for("the reply", lambda: sub.messages, 10)
        assert worker.metric("bridge_function_replies_total") == 1
        assert worker.metric("bridge_function_reply_failures_total") == 1
        assert worker.metric("bridge_dead_lettered_total", direction=FN) == 0
    finally:
        worker.stop()
        sub.close()
    replies = [(t, p, q) for t, p, q, _, _ in sub.messages]
    assert replies == [("commands/car-7/car-7", b'{"cmd": "charge"}', 1)]


def test_a_stopped_worker_keeps_its_session(broker: Mosquitto, fn: Function) -> None:
    """`enabled: false` scales the workers to 0: messages wait in the session for the same replica."""
    config = trigger_config(broker, fn)
    worker = WorkerProcess(config, replica_id="trigger-0").start()
    paho_publish(broker.port, [("vehicles/car-1/s", b"before", {})])
    wait_for("the first message", lambda: delivered(worker) == 1, 30)
    code = worker.terminate()
    assert code == 0, worker.log()[-3000:]
    assert "bridge worker stopped" in worker.log()
    publish_fast(broker.port, ((f"vehicles/car-{i % 10}/s", b"%d" % i) for i in range(300)))
    assert fn.bodies() == [b"before"]
    again = WorkerProcess(config, replica_id="trigger-0").start()
    try:
        wait_for("the 300 waiting messages", lambda: delivered(again) == 300, 60)
    finally:
        again.stop()
    assert sorted(int(b) for b in fn.bodies()[1:]) == list(range(300))
