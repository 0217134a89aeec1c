"""The RocketMQ side of the worker without a RocketMQ: loading the client without its side effects, how
answers are judged, and what the sink and source do with them (fake producer and consumer)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mqtt_operator.bridge.config import RocketMQEndpoint, RocketMQToMqtt
from mqtt_operator.bridge.pipeline import TRANSIENT
from mqtt_operator.bridge.rocketmq_client import OK, Status, _Quieter, classify, credentials, load_client
from mqtt_operator.bridge.rocketmq_mapping import RocketMQMessage, RocketMQRecord
from mqtt_operator.bridge.rocketmq_sink import RocketMQSink
from mqtt_operator.bridge.rocketmq_source import RocketMQSource

ENDPOINT = RocketMQEndpoint(endpoints="127.0.0.1:1")


def test_loading_the_client_keeps_our_logging_and_writes_nothing_under_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # The client's own set-up creates logs/rocketmq_python here, and fails where HOME is read-only.
    home.chmod(0o500)
    script = textwrap.dedent(
        """
        import logging, sys
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        ours = Keep()
        logging.basicConfig(level=logging.INFO, handlers=[ours])
        from mqtt_operator.bridge.rocketmq_client import CLIENT_LOGGER, load_client
        rocketmq = load_client()
        assert rocketmq.Producer and rocketmq.SimpleConsumer
        assert logging.getLogger().handlers == [ours], logging.getLogger().handlers
        client_log = logging.getLogger(CLIENT_LOGGER)
        assert client_log.handlers == [] and client_log.propagate
        client_log.info("not shown")
        client_log.warning("shown %s", "once")
        logging.getLogger("ours").info("still ours")
        print(records)
        """
    )
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['rocketmq client: shown once', 'still ours']"
    assert list(home.iterdir()) == []


def test_answers_are_judged_by_their_code() -> None:
    load_client()
    from rocketmq.grpc_protocol import Code

    assert classify(Code.OK, "OK") == OK
    missing = classify(Code.TOPIC_NOT_FOUND, "topic not found", topic="pile-faults")
    assert missing.kind == "route"
    assert missing.text == "the RocketMQ topic 'pile-faults' does not exist: create it (TOPIC_NOT_FOUND)"
    group = classify(Code.CONSUMER_GROUP_NOT_FOUND, "x", group="pile-cmd")
    assert (group.kind, "'pile-cmd' does not exist: create it" in group.text) == ("route", True)
    assert classify(Code.FORBIDDEN, "no").kind == "route"
    assert classify(Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE, "FIFO").kind == "route"
    too_large = classify(Code.MESSAGE_BODY_TOO_LARGE, "max 4194304")
    assert (too_large.kind, too_large.code) == ("message", "MESSAGE_BODY_TOO_LARGE")
    assert classify(Code.MESSAGE_PROPERTIES_TOO_LARGE, "max 128").kind == "message"
    assert classify(Code.TOO_MANY_REQUESTS, "busy").kind == "transient"
    assert classify(Code.INTERNAL_SERVER_ERROR, "settings is null").kind == "transient"
    assert classify(99999, "?").kind == "transient"


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert credentials(ENDPOINT) == ("", "")
    with_keys = RocketMQEndpoint(endpoints="h:1", credentials=True)
    monkeypatch.delenv("ROCKETMQ_SECRET_KEY", raising=False)
    monkeypatch.setenv("ROCKETMQ_ACCESS_KEY", "ak")
    with pytest.raises(ValueError, match="ROCKETMQ_SECRET_KEY"):
        credentials(with_keys)
    monkeypatch.setenv("ROCKETMQ_SECRET_KEY", "a-long-secret-key-value")
    assert credentials(with_keys) == ("ak", "a-long-secret-key-value")


class GrpcLikeError(Exception):
    pass


GrpcLikeError.__module__ = "grpc.aio._call"


def test_the_clients_log_lines_are_shortened_and_rate_limited() -> None:
    quieter = _Quieter(burst=2, period=3600)

    def line(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
        return logging.LogRecord(
            name, logging.ERROR, __file__, 1, msg, None, (type(exc), exc, None) if exc else None
        )

    callback = line(
        "concurrent.futures", "exception calling callback", GrpcLikeError("UNAVAILABLE\n  details")
    )
    assert quieter.filter(callback)
    assert callback.exc_info is None and callback.levelno == logging.WARNING
    assert callback.getMessage() == "rocketmq client: RocketMQ client callback failed: UNAVAILABLE details"
    # A callback failure of anything else keeps its traceback and is not counted.
    other = line("concurrent.futures", "exception calling callback", ValueError("ours"))
    assert quieter.filter(other) and other.exc_info is not None
    # Our own loop's asyncio lines pass untouched; the client's loop's are the client's.
    ours = line("asyncio", "Task was destroyed but it is pending! coro=<ours() at /app/worker.py:3>")
    assert quieter.filter(ours) and ours.msg.startswith("Task was destroyed")
    theirs = line("asyncio", "Task was destroyed but it is pending!\n coro=<w() at /x/rocketmq/v5/c.py:2>")
    assert quieter.filter(theirs) and theirs.getMessage().startswith("rocketmq client: Task was destroyed")
    assert not quieter.filter(line("rocketmq-python-client", "third"))
    quieter._window -= 7200  # the next period
    later = line("rocketmq-python-client", "fourth")
    assert quieter.filter(later)
    assert later.getMessage() == "rocketmq client: fourth (1 earlier client log lines suppressed)"


# --- the sink, over a fake producer -----------------------------------------------------------------


class FakeProducer:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[list[bytes]] = []
        self.endpoints = object()
        self.ready = True
        self.last_error: str | None = None

    async def send(self, records: Sequence[RocketMQRecord]) -> Status:
        self.requests.append([r.body for r in records])
        await asyncio.sleep(0)
        result: Status = self.answer(records)
        return result


def rec(body: bytes, group: str | None = None) -> RocketMQRecord:
    return RocketMQRecord(body, None, (), {}, group)


def sink_with(answer: Any, ordered: bool = False) -> tuple[RocketMQSink, FakeProducer]:
    sink = RocketMQSink(ENDPOINT, "t", ordered=ordered, batch_messages=64)
    fake = FakeProducer(answer)
    sink.producer = fake  # type: ignore[assignment]
    return sink, fake


def test_unordered_records_go_in_batches_and_a_refused_batch_is_split_to_find_the_culprit() -> None:
    def answer(records: Sequence[RocketMQRecord]) -> Status:
        if any(r.body == b"bad" for r in records):
            return Status("message", "properties too large", "MESSAGE_PROPERTIES_TOO_LARGE")
        return OK

    sink, fake = sink_with(answer)
    records = [rec(b"%d" % i) for i in range(150)]
    records[70] = rec(b"bad")
    outcomes = asyncio.run(sink.deliver(records))
    assert outcomes == [None] * 70 + ["properties too large"] + [None] * 79
    sizes = sorted(len(r) for r in fake.requests)
    # 64 + 64 + 22, then the records of the refused batch one by one.
    assert sizes == [1] * 64 + [22, 64, 64]


def test_a_transient_answer_leaves_its_batch_to_the_pipelines_retry() -> None:
    def answer(records: Sequence[RocketMQRecord]) -> Status:
        return Status("transient", "proxy away") if records[0].body == b"0" else OK

    sink, _ = sink_with(answer)
    outcomes = asyncio.run(sink.deliver([rec(b"%d" % i) for i in range(100)]))
    assert outcomes == [TRANSIENT] * 64 + [None] * 36


def test_ordered_records_go_one_at_a_time_per_group_and_a_failure_holds_the_rest_of_its_group() -> None:
    def answer(records: Sequence[RocketMQRecord]) -> Status:
        body = records[0].body
        if body == b"a2":
            return Status("transient", "timeout")
        if body == b"b2":
            return Status("message", "refused", "ILLEGAL_MESSAGE_KEY")
        return OK

    sink, fake = sink_with(answer, ordered=True)
    records = [rec(f"{g}{i}".encode(), g) for i in range(5) for g in ("a", "b")]
    outcomes = asyncio.run(sink.deliver(records))
    by_body = {r.body: o for r, o in zip(records, outcomes, strict=True)}
    assert by_body == {
        b"a0": None,
        b"a1": None,
        b"a2": TRANSIENT,
        b"a3": TRANSIENT,
        b"a4": TRANSIENT,
        b"b0": None,
        b"b1": None,
        b"b2": "refused",
        b"b3": None,
        b"b4": None,
    }
    assert all(len(r) == 1 for r in fake.requests)
    sent = [r[0] for r in fake.requests]
    assert [b for b in sent if b.startswith(b"a")] == [b"a0", b"a1", b"a2"]
    assert [b for b in sent if b.startswith(b"b")] == [b"b0", b"b1", b"b2", b"b3", b"b4"]


# --- the source, over a fake consumer ---------------------------------------------------------------


class FakeConsumer:
    def __init__(self) -> None:
        self.acks: list[list[str]] = []
        self.ack_answers: list[dict[str, Status]] = []
        self.renewed: list[str] = []
        self.ready = True
        self.last_error = None

    async def ack(self, messages: Sequence[RocketMQMessage]) -> list[tuple[RocketMQMessage, Status]]:
        self.acks.append([m.message_id for m in messages])
        answers = self.ack_answers.pop(0) if self.ack_answers else {}
        return [(m, answers[m.message_id]) for m in messages if m.message_id in answers]

    async def change_invisible(self, msg: RocketMQMessage, seconds: int) -> Status:
        self.renewed.append(msg.message_id)
        msg.deadline = time.monotonic() + seconds
        return OK


def source_with_fake() -> tuple[RocketMQSource, FakeConsumer]:
    spec = RocketMQToMqtt.model_validate({"topic": "t", "consumerGroup": "g", "mqttTopic": "a/{key}"})
    source = RocketMQSource(ENDPOINT, spec, invisible_s=30)
    fake = FakeConsumer()
    source.consumer = fake  # type: ignore[assignment]
    return source, fake


def held(source: RocketMQSource, *ids: str, deadline_in: float = 30) -> list[RocketMQMessage]:
    messages = [RocketMQMessage(b"x", message_id=i, deadline=time.monotonic() + deadline_in) for i in ids]
    for msg in messages:
        source._held[msg] = None
    return messages


async def until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.01)


def test_settled_messages_are_acknowledged_and_transient_failures_retried_while_invisible() -> None:
    async def run() -> tuple[RocketMQSource, FakeConsumer]:
        source, fake = source_with_fake()
        messages = held(source, "m1", "m2", "m3")
        fake.ack_answers = [
            {
                "m2": Status("transient", "proxy away"),
                "m3": Status("transient", "expired", "INVALID_RECEIPT_HANDLE"),
            }
        ]
        await source.settle(messages)
        await until(lambda: not source._held)
        return source, fake

    _, fake = asyncio.run(run())
    # m3's receipt handle is no longer valid: RocketMQ delivers it again, no retry.
    assert fake.acks == [["m1", "m2", "m3"], ["m2"]]


def test_an_expired_message_is_not_acknowledged_again() -> None:
    async def run() -> FakeConsumer:
        source, fake = source_with_fake()
        messages = held(source, "late", deadline_in=0.5)
        fake.ack_answers = [{"late": Status("transient", "proxy away")}]
        await source.settle(messages)
        await until(lambda: not source._held)
        return fake

    assert asyncio.run(run()).acks == [["late"]]


def test_messages_held_past_half_their_invisible_time_get_more() -> None:
    async def run() -> tuple[FakeConsumer, list[RocketMQMessage]]:
        source, fake = source_with_fake()
        fresh = held(source, "fresh", deadline_in=29)
        old = held(source, "old", deadline_in=10)
        renewer = asyncio.create_task(source._renew_loop())
        await until(lambda: fake.renewed)
        renewer.cancel()
        return fake, fresh + old

    fake, messages = asyncio.run(run())
    assert fake.renewed == ["old"]
    assert messages[1].deadline - time.monotonic() > 25
