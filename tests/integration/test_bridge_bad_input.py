"""Bad input through a real worker: each message is delivered, skipped or dead-lettered with its reason,
the worker never restarts or reconnects, and the numbered good messages between the bad ones all arrive.

The bad messages and records are drawn from the unit tests' strategies (tests/unit/bridge_inputs.py)
with a fixed seed: hypothesis generates them (`drawn`), the test sends them. What the real Mosquitto
2.0.11 lets through decides what the worker can ever see:

- A publisher sending a topic, a user property (name or value), a content type or a response topic
  holding a control character (tab and newline too), a Unicode non-character (U+FFFF, U+FDD0, ...)
  or invalid UTF-8, or a topic with a wildcard, is disconnected (DISCONNECT 0x81 "Malformed packet" or
  the socket closed): the message never enters the broker. The uplink test sends each such drawn
  message on a connection of its own and checks exactly that.
- Everything else passes: any other Unicode (U+2028, U+FEFF, emoji), empty user properties, user
  properties of 65535 bytes, forged `mqtt-operator/*` stamps (no broker plugin here), binary
  correlation data, a payload that is not UTF-8 even with payload format indicator 1, payloads of
  several MiB.
- So our decoder never sees a topic or property it cannot read from Mosquitto. What such a PUBLISH
  does to the worker is shown with a stand-in broker that sends one between good ones
  (`test_a_publish_the_decoder_cannot_read_...`): before the fix the worker dropped the connection
  and got the same PUBLISH again on the resumed session, forever.
- The worker's own publishes (downlink) are held to the same rules: a Kafka header Mosquitto would
  refuse as a topic or user property used to make Mosquitto disconnect the worker's publisher, which
  retried the same publish forever; the downlink test has such records in its stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from test_bridge_helpers import (
    Subscriber,
    WorkerProcess,
    consume,
    produce,
    publisher,
    unique,
    wait_for,
    worker_config,
)
from tests.unit.bridge_inputs import (
    deep_json,
    huge_payloads,
    kafka_headers,
    kafka_record_size,
    kafka_values,
    messages,
    mosquitto_refuses,
    raw_publish,
)

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.config import KafkaToMqtt, MqttToKafka
from mqtt_operator.bridge.kafka_mapping import Downlink, Uplink
from mqtt_operator.bridge.records import KafkaRecord, Message, MqttPublish, Properties
from testenv.kafka import Kafka
from testenv.mosquitto import Mosquitto
from testenv.process import free_port

pytestmark = pytest.mark.integration

UP = "mqtt_to_kafka"
DOWN = "kafka_to_mqtt"
SEED = 20261204
RECORD_LIMIT = 2 * 1024 * 1024  # the worker's maxRecordBytes (its default)

T = TypeVar("T")


def drawn(strategy: st.SearchStrategy[T], count: int, seed_value: int = SEED) -> list[T]:
    """`count` examples of `strategy`, the same on every run (a fixed seed, no example database)."""
    out: list[T] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(item=strategy)
    def collect(item: T) -> None:
        out.append(item)

    collect()
    return out


def worker_is_healthy(worker: WorkerProcess, direction: str) -> None:
    """Never restarted, never reconnected, nothing retried."""
    assert worker.server is not None and worker.server.proc is not None
    assert worker.server.proc.poll() is None, worker.log()[-3000:]
    log = worker.log()
    assert "internal failure" not in log and "lost the MQTT connection" not in log, log[-3000:]
    assert worker.metric("bridge_failed_total", direction=direction, kind="transient") == 0, log[-3000:]


# --- MQTT -> Kafka ------------------------------------------------------------------------------------


def _strings(topic: str, props: Properties | None) -> list[str]:
    out = [topic]
    if props is not None:
        out += [text for pair in props.user_properties for text in pair]
        out += [text for text in (props.content_type, props.response_topic) if text is not None]
    return out


def refused_by_mosquitto(port: int, topic: str, payload: bytes, props: Properties | None) -> bool:
    """Publish on a connection of its own: whether the broker closed it (DISCONNECT or EOF) instead of
    answering with a PUBACK."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            mqtt5.connect(
                unique("refused"), keepalive=30, clean_start=True, session_expiry=0, receive_maximum=10
            )
        )
        assert sock.recv(64)[:1] == b"\x20"  # CONNACK
        sock.sendall(mqtt5.publish(topic, payload, qos=1, packet_id=1, props=props))
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
            answer += chunk
            if answer[:1] == b"\xe0":
                return True
            if answer[:1] == b"\x40" and len(answer) >= 4:
                return False


async def _publish_in_order(port: int, items: list[tuple[str, bytes, bool, Properties | None]]) -> None:
    conn = await publisher(port)
    for topic, payload, retain, props in items:
        fut = await conn.publish(topic, payload, 1, retain, props)
        assert fut is not None
        assert await fut < 0x80, f"the broker refused {topic!r}"
    assert conn.is_open
    await conn.disconnect()


def test_uplink_bad_messages_are_delivered_skipped_or_dead_lettered_and_hold_up_nothing(
    no_drop_mosquitto: Mosquitto, kafka: Kafka
) -> None:
    """30 messages drawn from `bridge_inputs.messages` that Mosquitto takes (random, malformed, deeply
    nested and oversize JSON and binary payloads, forged stamps, user properties of any text), each
    followed by a numbered good one, through a worker keyed by `$.plate` with the JSON envelope; a
    quarter of the bad ones under a parent topic that is not registered (skipped); two payloads past the
    record limit and two nested past the JSON decoder's depth drawn on purpose as well. Ten drawn
    messages that Mosquitto refuses are sent on connections of their own. Drawn strings over 65535
    bytes cannot be sent at all (no MQTT packet can carry one)."""
    cars, vans, dlq = unique("cars"), unique("vans"), unique("dlq")
    spec = {
        "topicFilters": [f"{cars}/#", f"{vans}/#"],
        "shareGroup": unique("g"),
        "parentTopics": [cars],
        "key": {"source": "payloadField", "path": "$.plate"},
        "value": "envelope",
    }
    uplink = Uplink(MqttToKafka.model_validate(spec))
    stream: list[tuple[str, bytes, bool, Properties | None]] = []
    expected: dict[str, str] = {}  # bad-N -> "delivered", "dead" or "skipped"
    refused: list[tuple[str, bytes, Properties | None]] = []
    unsendable = 0
    extra = [
        Message(f"big/{n}", payload, 1, False, False, 1, None)
        for n, payload in enumerate(drawn(huge_payloads, 2) + drawn(deep_json, 2))
    ]
    for i, msg in enumerate([*extra, *drawn(messages(), 200)]):
        if len(expected) == 34:
            break
        parent = vans if i % 4 == 3 and i >= len(extra) else cars
        topic = f"{parent}/bad-{i}/{msg.topic}"
        props = msg.props
        if props is not None:
            props.message_expiry = None  # Mosquitto would expire some on the way: not what is tested here
        strings = _strings(topic, props)
        if any(len(text.encode()) > 65535 for text in strings):
            unsendable += 1  # no MQTT packet can carry a string that long
            continue
        if "+" in topic or "#" in topic or any(mosquitto_refuses(text) for text in strings):
            if len(refused) < 10:
                refused.append((topic, msg.payload, props))
            continue
        outcome = uplink(Message(topic, msg.payload, 1, False, False, 1, props, time.time()))
        if not isinstance(outcome, KafkaRecord):
            expected[f"bad-{i}"] = "skipped"
        elif kafka_record_size(outcome) > RECORD_LIMIT:
            expected[f"bad-{i}"] = "dead"
        else:
            expected[f"bad-{i}"] = "delivered"
        stream.append((topic, msg.payload, msg.retain, props))
        stream.append(
            (f"{cars}/good-{i}/x", json.dumps({"plate": f"p{i % 3}", "seq": i}).encode(), False, None)
        )
    goods = [int(topic.split("/")[1][5:]) for topic, *_ in stream if "/good-" in topic]
    counts = {
        kind: sum(1 for v in expected.values() if v == kind) for kind in ("delivered", "dead", "skipped")
    }
    # The strategies draw every kind of input at this seed.
    assert refused and counts["delivered"] and counts["dead"] and counts["skipped"], (counts, len(refused))

    for topic, payload, props in refused:
        taken = not refused_by_mosquitto(no_drop_mosquitto.port, topic, payload, props)
        assert not taken, f"Mosquitto took {topic[:80]!r}"

    config = worker_config(
        mqtt_port=no_drop_mosquitto.port, bootstrap=kafka.bootstrap, mqtt_to_kafka=spec, dead_letter_topic=dlq
    )
    worker = WorkerProcess(config).start()
    try:
        started = time.monotonic()
        asyncio.run(_publish_in_order(no_drop_mosquitto.port, stream))
        records = consume(kafka.bootstrap, cars, len(goods) + counts["delivered"], timeout=90)
        took = time.monotonic() - started
        dead = consume(kafka.bootstrap, dlq, counts["dead"], timeout=30)
        wait_for(
            "everything counted", lambda: worker.metric("bridge_received_total", direction=UP) == len(stream)
        )
        skipped = worker.metric("bridge_skipped_total", direction=UP)
        dead_lettered = worker.metric("bridge_dead_lettered_total", direction=UP)
        worker_is_healthy(worker, UP)
    finally:
        worker.stop()

    names = [json.loads(rec.value)["topic"].split("/")[1] for rec in records]
    # Every good message, once, in order; every bad one delivered once or not at all.
    assert [int(name[5:]) for name in names if name.startswith("good-")] == goods
    seen = set(names)
    assert len(seen) == len(names)
    for name, outcome in expected.items():
        assert (name in seen) == (outcome == "delivered"), (name, outcome)
    assert {d.headers["dlq.originalTopic"].decode().split("/")[1] for d in dead} == {
        name for name, outcome in expected.items() if outcome == "dead"
    }
    for d in dead:
        assert d.headers["dlq.reason"].startswith(b"record too large"), d.headers["dlq.reason"]
        assert len(d.value) < RECORD_LIMIT
    assert (skipped, dead_lettered) == (counts["skipped"], counts["dead"])
    print(
        f"uplink: {len(goods)} good, {counts} bad, {len(refused)} refused by Mosquitto, "
        f"{unsendable} unsendable, "
        f"all good ones in Kafka after {took:.1f} s"
    )


# --- a PUBLISH our decoder cannot read (a stand-in broker: Mosquitto never forwards one) ------------------


class StandInBroker:
    """Just enough of an MQTT 5 broker for one subscriber: CONNACK, SUBACK, PINGRESP; it sends `stream` once
    subscribed and records the PUBACKs and how many connections were made."""

    def __init__(self, stream: bytes) -> None:
        self.stream = stream
        self.port = free_port()
        self.acked: list[int] = []
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self._server.settimeout(0.5)
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while not self._stop:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2:
                    try:
                        length, start = mqtt5.decode_varint(buf, 1)
                    except IndexError:
                        break
                    if len(buf) < start + length:
                        break
                    kind, body, buf = buf[0] >> 4, buf[start : start + length], buf[start + length :]
                    if kind == mqtt5.CONNECT:
                        conn.sendall(b"\x20\x03\x00\x00\x00")
                    elif kind == mqtt5.SUBSCRIBE:
                        conn.sendall(b"\x90\x04" + body[:2] + b"\x00\x01")
                        conn.sendall(self.stream)
                    elif kind == mqtt5.PUBACK:
                        self.acked.append(struct.unpack(">H", body[:2])[0])
                    elif kind == mqtt5.PINGREQ:
                        conn.sendall(b"\xd0\x00")

    def close(self) -> None:
        self._stop = True
        self._server.close()


UNREADABLE = {
    3: raw_publish(b"cars/\xff\xfe", b"", b"topic not UTF-8", 3),
    6: raw_publish(b"cars/6", b"\x26\x00\x01k\x00\x02\xc0\xaf", b"user property not UTF-8", 6),
    9: raw_publish(b"cars/9", b"\x7f\x00\x00", b"unknown property", 9),
}


def test_a_publish_the_decoder_cannot_read_is_dead_lettered_and_acknowledged_in_order(kafka: Kafka) -> None:
    """A broker that forwarded a PUBLISH whose topic or user property is not UTF-8, or with an unknown
    property: the worker dead-letters it with the reason, acknowledges every PUBLISH in order on its one
    connection, and the good ones around it reach Kafka."""
    topic, dlq = unique("cars"), unique("dlq")
    stream = b"".join(
        UNREADABLE.get(pid) or mqtt5.publish(f"cars/{pid}", b"good-%d" % pid, qos=1, packet_id=pid)
        for pid in range(1, 13)
    )
    stand_in = StandInBroker(stream)
    config = worker_config(
        mqtt_port=stand_in.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={"topicFilters": ["cars/#"], "shareGroup": "g", "kafkaTopic": topic},
        dead_letter_topic=dlq,
    )
    worker = WorkerProcess(config).start()
    try:
        wait_for("every PUBLISH acknowledged", lambda: len(stand_in.acked) >= 12, 60)
        records = consume(kafka.bootstrap, topic, 9)
        dead = consume(kafka.bootstrap, dlq, 3)
        time.sleep(1)
        assert stand_in.connections == 1 and stand_in.acked == list(range(1, 13))
        worker_is_healthy(worker, UP)
    finally:
        worker.stop()
        stand_in.close()
    assert [r.value for r in records] == [b"good-%d" % pid for pid in range(1, 13) if pid not in UNREADABLE]
    reasons = sorted(d.headers["dlq.reason"].decode() for d in dead)
    assert all(r.startswith("the PUBLISH could not be read") for r in reasons), reasons
    assert sorted(d.value for d in dead) == [
        b"topic not UTF-8",
        b"unknown property",
        b"user property not UTF-8",
    ]


# --- Kafka -> MQTT ------------------------------------------------------------------------------------


def test_downlink_bad_records_are_published_or_dead_lettered_and_hold_up_nothing(
    no_drop_mosquitto: Mosquitto, kafka: Kafka
) -> None:
    """40 records drawn from `bridge_inputs.kafka_headers` / `kafka_values` (routing headers in any case with
    values such as '3', '-1', '2.0', topics with tabs, wildcards, U+FFFF; header values None, binary,
    over 64 KiB), each followed by a numbered good one. Each is published as the mapping says (the
    subscriber gets it, with the headers Mosquitto can take as user properties) or dead-lettered with the
    mapping's reason; records over 1 MiB are left out (only slower, the unit tests have them)."""
    commands, dlq, base = unique("cmd"), unique("dlq"), unique("dev")
    spec = {
        "kafkaTopic": commands,
        "consumerGroup": unique("grp"),
        "startFrom": "earliest",
        "defaultTopic": f"{base}/default",
    }
    downlink = Downlink(KafkaToMqtt.model_validate(spec))
    produced: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    expected: dict[str, MqttPublish | str] = {}
    for i, (value, headers) in enumerate(drawn(st.tuples(kafka_values, kafka_headers()), 40)):
        headers = [("x-seq", b"bad-%d" % i), *headers]
        if len(value or b"") + sum(len(raw or b"") for _, raw in headers) > 1024 * 1024:
            continue
        outcome = downlink(value, headers)  # type: ignore[arg-type]
        expected[f"bad-{i}"] = outcome if isinstance(outcome, MqttPublish) else outcome.reason
        # Keys None or bytes (the downlink ignores them; aiokafka sends no record without key and value).
        key = None if value is not None and i % 2 else b"key-%d" % i
        produced.append((key, value, headers))  # type: ignore[arg-type]
        produced.append(
            (None, b"good-%d" % i, [("mqttTopic", f"{base}/good/{i}".encode()), ("x-seq", b"good-%d" % i)])
        )
    published = {k: v for k, v in expected.items() if isinstance(v, MqttPublish)}
    rejected = {k: v for k, v in expected.items() if isinstance(v, str)}
    assert len(published) >= 5 and len(rejected) >= 5, expected
    # At least one that used to stop the downlink: a topic or header Mosquitto refuses, or one over 64 KiB.
    assert any(
        mosquitto_refuses(raw.decode(errors="ignore"))
        for _, _, headers in produced
        for _, raw in headers
        if raw
    )

    sub = Subscriber(no_drop_mosquitto.port, "#", qos=2)
    produce(kafka.bootstrap, commands, produced)
    goods = [f"good-{i}" for i in range(40) if f"bad-{i}" in expected]
    config = worker_config(
        mqtt_port=no_drop_mosquitto.port, bootstrap=kafka.bootstrap, kafka_to_mqtt=spec, dead_letter_topic=dlq
    )
    config["kafka"]["maxRecordBytes"] = RECORD_LIMIT
    started = time.monotonic()
    worker = WorkerProcess(config).start()
    try:

        def seqs() -> list[str]:
            return [dict(props).get("x-seq", "") for *_, props in sub.messages]

        wait_for("every good record at the subscriber", lambda: set(goods) <= set(seqs()), 90)
        took = time.monotonic() - started
        dead = consume(kafka.bootstrap, dlq, len(rejected), timeout=30)
        wait_for(
            "everything counted",
            lambda: worker.metric("bridge_received_total", direction=DOWN) == len(produced),
        )
        wait_for(
            "every publish confirmed",
            lambda: worker.metric("bridge_delivered_total", direction=DOWN) == len(goods) + len(published),
        )
        worker_is_healthy(worker, DOWN)
    finally:
        worker.stop()
        sub.close()

    assert [s for s in seqs() if s.startswith("good-")] == goods
    got = {dict(props).get("x-seq"): (topic, payload, props) for topic, payload, _, _, props in sub.messages}
    for name, pub in published.items():
        assert name in got, (name, pub.topic[:80])
        topic, payload, props = got[name]
        assert (topic, payload, props) == (pub.topic, pub.payload, pub.user_properties)
    assert not (set(rejected) & set(got))
    reasons = {d.headers["x-seq"].decode(): d.headers["dlq.reason"].decode() for d in dead}
    assert reasons == rejected
    print(
        f"downlink: {len(goods)} good, {len(published)} bad published, {len(rejected)} dead-lettered, "
        f"all good ones at the subscriber {took:.1f} s after the worker started"
    )
