"""Benchmark: the bridge worker, MQTT -> RocketMQ and RocketMQ -> MQTT (a ReplicationTask's routes).

Real components on this machine: one RocketMQ 5.5 (name server + proxy in local mode, the broker
embedded; testenv/rocketmq.py), one Mosquitto configured not to drop, the worker as a process
(`python -m mqtt_operator bridge`). 256-byte payloads, QoS 1, at least once; topics of 8 queues.

Throughput figures are drain rates of one worker: its MQTT session (uplink) or consumer group
(downlink) is pre-loaded, then the worker is started and timed from its WARMUP-th to its last
confirmed message (metrics scraped every 0.1 s).
- MQTT -> RocketMQ: the pipelined publisher of bench_bridge.py fills the worker's persistent session.
- RocketMQ -> MQTT: the topic is filled with the worker's own batched producer (another process);
  the worker publishes to a QoS 1 mosquitto_sub.

Latency at a steady 1,000 msg/s, payloads stamped with their send time:
- MQTT -> RocketMQ: MQTT publish -> the broker's store timestamp of the RocketMQ message (read back
  by a consumer afterwards; milliseconds).
- RocketMQ -> MQTT: the RocketMQ send (its born timestamp, which is when the worker's latency clock
  starts too) -> the MQTT subscriber's receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from test_bridge_helpers import NO_DROP_CONF, WorkerProcess, unique  # noqa: E402

from bench.bench_bridge import preload  # noqa: E402
from bench.common import drain, record  # noqa: E402
from mqtt_operator.bridge.config import RocketMQEndpoint  # noqa: E402
from mqtt_operator.bridge.mqtt_client import MqttConnection, open_connection  # noqa: E402
from mqtt_operator.bridge.records import Message  # noqa: E402
from mqtt_operator.bridge.rocketmq_client import RocketMQConsumer, RocketMQProducer  # noqa: E402
from mqtt_operator.bridge.rocketmq_mapping import RocketMQRecord  # noqa: E402
from testenv.mosquitto import Mosquitto  # noqa: E402
from testenv.paths import tool  # noqa: E402
from testenv.rocketmq import RocketMQ  # noqa: E402

UP_COUNT = 200_000
DOWN_COUNT = 200_000
WARMUP = 50_000
PAYLOAD = 256
QUEUES = 8
LATENCY_RATE = 1000
LATENCY_SECONDS = 12
LATENCY_WARMUP_S = 2
# RocketMQ -> MQTT: an uncounted pass at the same rate first (see downlink_latency).
LATENCY_WARM_PASS_S = 30
UP = "mqtt_to_rocketmq"
DOWN = "rocketmq_to_mqtt"
# Fresh interpreters for the helper processes: a fork of a process whose gRPC threads run hangs.
SPAWN = multiprocessing.get_context("spawn")


def payload(i: int) -> bytes:
    head = b"%d:" % i
    return head + b"x" * (PAYLOAD - len(head))


def stamped() -> bytes:
    stamp = b"%d" % time.time_ns()
    return stamp + b":" + b"x" * (PAYLOAD - len(stamp) - 1)


def worker_config(broker: Mosquitto, cluster: RocketMQ, **routes: Any) -> dict[str, Any]:
    return {
        "owner": "bench/replication",
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "clientIdPrefix": unique("bench-rt"),
            "sessionExpirySeconds": 3600,
            "receiveMaximum": 1000,
        },
        "rocketmq": {"endpoints": cluster.endpoint},
        "metricsPort": 0,
        "drainSeconds": 15,
        **routes,
    }


def uplink(topic: str, group: str) -> dict[str, Any]:
    return {
        "mqttToRocketmq": {
            "topicFilters": ["vehicles/#"],
            "shareGroup": group,
            "topic": topic,
            "tag": "state",
            "key": {"source": "clientId"},
            "clientIdTopicLevel": 1,
        }
    }


def downlink(topic: str, group: str) -> dict[str, Any]:
    return {"rocketmqToMqtt": {"topic": topic, "consumerGroup": group, "mqttTopic": "devices/{key}/cmd"}}


async def _fill(endpoint: str, topic: str, start: int, count: int) -> None:
    producer = RocketMQProducer(RocketMQEndpoint(endpoints=endpoint), topic, fifo=False)
    assert (await producer.connect()).kind == "ok", producer.last_error
    slots = asyncio.Semaphore(16)

    async def send(first: int) -> None:
        records = [
            RocketMQRecord(payload(i), "cmd", (f"dev{i % 1000}",), {"seq": str(i)}, None)
            for i in range(first, min(first + 64, start + count))
        ]
        async with slots:
            status = await producer.send(records)
        assert status.kind == "ok", status.text

    await asyncio.gather(*(send(first) for first in range(start, start + count, 64)))
    await producer.close()


def _fill_proc(endpoint: str, topic: str, start: int, count: int) -> None:
    asyncio.run(_fill(endpoint, topic, start, count))


def fill(endpoint: str, topic: str, count: int, procs: int = 2) -> float:
    started = time.monotonic()
    share = count // procs
    workers = [
        SPAWN.Process(target=_fill_proc, args=(endpoint, topic, p * share, share)) for p in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    return time.monotonic() - started


async def _paced_rocketmq(endpoint: str, topic: str, rate: int, seconds: float) -> None:
    producer = RocketMQProducer(RocketMQEndpoint(endpoints=endpoint), topic, fifo=False)
    assert (await producer.connect()).kind == "ok", producer.last_error
    loop = asyncio.get_running_loop()
    start = loop.time()
    sends = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        record = RocketMQRecord(stamped(), "cmd", (f"dev{i % 1000}",), {}, None)
        sends.append(asyncio.ensure_future(producer.send([record])))
    statuses = await asyncio.gather(*sends)
    assert all(s.kind == "ok" for s in statuses)
    await producer.close()


def _paced_rocketmq_proc(endpoint: str, topic: str, rate: int, seconds: float) -> None:
    asyncio.run(_paced_rocketmq(endpoint, topic, rate, seconds))


async def _read_stored(endpoint: str, topic: str, group: str, count: int) -> list[tuple[float, float]]:
    """(send stamp, store time) in ms of each message of `topic`, read back after the run."""
    consumer = RocketMQConsumer(RocketMQEndpoint(endpoints=endpoint), topic, group, "*")
    assert (await consumer.connect()).kind == "ok", consumer.last_error
    rows: list[tuple[float, float]] = []
    deadline = time.monotonic() + 120

    async def one() -> None:
        while len(rows) < count and time.monotonic() < deadline:
            status, messages = await consumer.receive(30)
            assert status.kind == "ok", status.text
            rows.extend((int(m.body.split(b":", 1)[0]) / 1e6, m.stored * 1000) for m in messages)
            if messages:
                await consumer.ack(messages)

    await asyncio.gather(*(one() for _ in range(4)))
    await consumer.close()
    return rows


# --- MQTT publisher and subscriber ------------------------------------------------------------------


async def _paced_mqtt(port: int, rate: int, seconds: float) -> None:
    conn, _ = await open_connection(
        "127.0.0.1",
        port,
        client_id=f"bench-paced-{uuid.uuid4().hex[:6]}",
        keepalive=60,
        clean_start=True,
        session_expiry=0,
        receive_maximum=1000,
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await conn.publish(f"vehicles/dev{i % 1000}/state", stamped(), 1, False)
    await asyncio.sleep(1)
    await conn.disconnect()


def _paced_mqtt_proc(port: int, rate: int, seconds: float) -> None:
    asyncio.run(_paced_mqtt(port, rate, seconds))


async def _collect_mqtt(port: int, topic_filter: str, count: int, wait_s: float) -> list[float]:
    """Latencies (ms) from the payload's send stamp to this subscriber's receipt."""
    latencies: list[float] = []
    done = asyncio.Event()

    def on_messages(conn: MqttConnection, messages: list[Message]) -> None:
        now = time.time_ns()
        latencies.extend((now - int(m.payload.split(b":", 1)[0])) / 1e6 for m in messages)
        conn.ack([m.packet_id for m in messages if m.packet_id], settled=len(messages))
        if len(latencies) >= count:
            done.set()

    conn, _ = await open_connection(
        "127.0.0.1",
        port,
        client_id=f"bench-sub-{uuid.uuid4().hex[:6]}",
        keepalive=60,
        clean_start=True,
        session_expiry=0,
        receive_maximum=1000,
        on_messages=on_messages,
        max_unacked=1000,
    )
    await conn.subscribe([(topic_filter, 1)], wait_s=10)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), wait_s)
    await conn.disconnect()
    return latencies


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def uplink_throughput(cluster: RocketMQ, broker: Mosquitto) -> dict[str, float]:
    """MQTT -> RocketMQ: one worker drains its pre-loaded MQTT session."""
    topic = cluster.new_name("bench-up")
    cluster.create_topic(topic, queues=QUEUES)
    w = WorkerProcess(worker_config(broker, cluster, **uplink(topic, "g1")), replica_id="up")
    try:
        w.start().terminate()  # the session now exists and collects what is published next
        preload(broker.port, UP_COUNT)
        w.start(wait_ready=False)
        up = drain(w, UP, UP_COUNT, WARMUP)
    finally:
        w.stop()
    print(f"mqtt -> rocketmq: {up}")
    return up


def downlink_throughput(cluster: RocketMQ, broker: Mosquitto) -> dict[str, float]:
    """RocketMQ -> MQTT: one worker drains a pre-filled topic into a QoS 1 subscriber."""
    topic, group = cluster.new_name("bench-down"), cluster.new_name("bench-g")
    cluster.create_topic(topic, queues=QUEUES)
    cluster.create_group(group)
    filled = fill(cluster.endpoint, topic, DOWN_COUNT)
    print(f"filled {DOWN_COUNT} in {filled:.1f}s")
    sub = subprocess.Popen(
        [tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", "devices/#"],
        stdout=subprocess.DEVNULL,
    )
    d = WorkerProcess(worker_config(broker, cluster, **downlink(topic, group)), replica_id="down")
    try:
        d.start(wait_ready=False)
        down = drain(d, DOWN, DOWN_COUNT, WARMUP)
    finally:
        d.stop()
        sub.terminate()
        sub.wait(10)
    print(f"rocketmq -> mqtt: {down}")
    return down


def uplink_latency(cluster: RocketMQ, broker: Mosquitto) -> tuple[float, float]:
    """MQTT publish -> RocketMQ store time at a steady LATENCY_RATE: (p50, p99) in ms."""
    topic, group = cluster.new_name("bench-lat-up"), cluster.new_name("bench-lat-g")
    cluster.create_topic(topic, queues=QUEUES)
    cluster.create_group(group)
    w = WorkerProcess(worker_config(broker, cluster, **uplink(topic, "g3")), replica_id="lat-up")
    total = LATENCY_RATE * LATENCY_SECONDS
    try:
        w.start()
        publisher = SPAWN.Process(target=_paced_mqtt_proc, args=(broker.port, LATENCY_RATE, LATENCY_SECONDS))
        publisher.start()
        publisher.join()
        deadline = time.monotonic() + 60
        while w.metric("bridge_delivered_total", direction=UP) < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        w.stop()
    rows = asyncio.run(_read_stored(cluster.endpoint, topic, group, total))
    cutoff = min(sent for sent, _ in rows) + LATENCY_WARMUP_S * 1000
    p50, p99 = percentiles([stored - sent for sent, stored in rows if sent >= cutoff])
    print(f"mqtt -> rocketmq latency ms: p50={p50:.1f} p99={p99:.1f} ({len(rows)}/{total} arrived)")
    return p50, p99


def _downlink_pass(cluster: RocketMQ, broker: Mosquitto, seconds: int) -> list[float]:
    """One worker on a fresh topic and group, a paced producer for `seconds`: the latencies in ms."""
    topic, group = cluster.new_name("bench-lat-down"), cluster.new_name("bench-lat-dg")
    cluster.create_topic(topic, queues=QUEUES)
    cluster.create_group(group)
    w = WorkerProcess(worker_config(broker, cluster, **downlink(topic, group)), replica_id="lat-down")
    total = LATENCY_RATE * seconds
    pace = (cluster.endpoint, topic, LATENCY_RATE, seconds)
    producer = SPAWN.Process(target=_paced_rocketmq_proc, args=pace)

    async def measure() -> list[float]:
        collecting = asyncio.create_task(_collect_mqtt(broker.port, "devices/#", total, seconds + 60))
        await asyncio.sleep(1)
        producer.start()
        return await collecting

    try:
        w.start()
        got = asyncio.run(measure())
        producer.join()
    finally:
        w.stop()
    print(f"rocketmq -> mqtt latency pass: {len(got)}/{total} arrived")
    return got


def downlink_latency(cluster: RocketMQ, broker: Mosquitto) -> tuple[float, float]:
    """RocketMQ send -> MQTT subscriber at a steady LATENCY_RATE: (p50, p99) in ms.

    A first pass is not counted: one message per send request and receives of a few messages each
    run code paths of the broker that the throughput runs (batches) did not, and the JVM was still
    compiling them; the first passes on a fresh broker measured up to ten times the steady p99.
    """
    _downlink_pass(cluster, broker, LATENCY_WARM_PASS_S)
    got = _downlink_pass(cluster, broker, LATENCY_SECONDS)
    p50, p99 = percentiles(got[LATENCY_WARMUP_S * LATENCY_RATE :])
    print(f"rocketmq -> mqtt latency ms: p50={p50:.1f} p99={p99:.1f}")
    return p50, p99


def main() -> None:
    cluster = RocketMQ().start()
    broker = Mosquitto(config=NO_DROP_CONF).start()
    figures: dict[str, dict[str, Any]] = {}
    try:
        # The machine's load average after each stage: other work on the 2 cores shows in the figures.
        load: dict[str, float] = {}
        up = uplink_throughput(cluster, broker)
        load["up"] = os.getloadavg()[0]
        down = downlink_throughput(cluster, broker)
        load["down"] = os.getloadavg()[0]
        up_p50, up_p99 = uplink_latency(cluster, broker)
        load["up_latency"] = os.getloadavg()[0]
        down_p50, down_p99 = downlink_latency(cluster, broker)
        load["down_latency"] = os.getloadavg()[0]
        print(f"load averages: {load}")
        figures = {
            "mqtt_to_rocketmq_1worker_msgs_s": {
                "value": round(up["rate"]),
                "unit": "msg/s",
                "how": f"QoS 1 at least once, {PAYLOAD} B, {UP_COUNT} pre-loaded in the worker's MQTT "
                "session, "
                f"timed after {WARMUP}; key clientId (topic level), tag, MQTT metadata as properties; "
                f"batched SendMessage requests (64 messages), {QUEUES}-queue topic; worker CPU "
                f"{up['cpu_us']:.1f} us/msg; load average {load['up']:.1f}",
            },
            "rocketmq_to_mqtt_1worker_msgs_s": {
                "value": round(down["rate"]),
                "unit": "msg/s",
                "how": f"{DOWN_COUNT} pre-filled {PAYLOAD} B messages, {QUEUES}-queue topic, up to 8 "
                "receives of 32 in flight, QoS 1 publishes confirmed by PUBACK, then batched AckMessage; "
                f"a mosquitto_sub QoS 1 subscriber; worker CPU {down['cpu_us']:.1f} us/msg; "
                f"load average {load['down']:.1f}",
            },
            "mqtt_to_rocketmq_latency_p50_ms": {
                "value": round(up_p50, 1),
                "unit": "ms",
                "how": f"MQTT publish -> RocketMQ store timestamp, steady {LATENCY_RATE} msg/s for "
                f"{LATENCY_SECONDS} s (first {LATENCY_WARMUP_S} s not counted), QoS 1, 1 worker; "
                f"load average {load['up_latency']:.1f}",
            },
            "mqtt_to_rocketmq_latency_p99_ms": {
                "value": round(up_p99, 1),
                "unit": "ms",
                "how": "same run as mqtt_to_rocketmq_latency_p50_ms",
            },
            "rocketmq_to_mqtt_latency_p50_ms": {
                "value": round(down_p50, 1),
                "unit": "ms",
                "how": f"RocketMQ send (a paced producer process) -> MQTT subscriber receipt, steady "
                f"{LATENCY_RATE} msg/s for {LATENCY_SECONDS} s (first {LATENCY_WARMUP_S} s not counted) "
                f"after an uncounted {LATENCY_WARM_PASS_S} s pass, QoS 1, 1 worker; broker with "
                f"enablePopBufferMerge; load average {load['down_latency']:.1f}",
            },
            "rocketmq_to_mqtt_latency_p99_ms": {
                "value": round(down_p99, 1),
                "unit": "ms",
                "how": "same run as rocketmq_to_mqtt_latency_p50_ms",
            },
            "rocketmq_worker_peak_rss_mib": {
                "value": round(max(up["rss"], down["rss"]), 1),
                "unit": "MiB",
                "how": "VmHWM of the worker during the two throughput runs",
            },
        }
        record(figures)
        print(json.dumps({k: v["value"] for k, v in figures.items()}, indent=2))
    finally:
        broker.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
