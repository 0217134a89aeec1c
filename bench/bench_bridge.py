"""Benchmark: the bridge worker, MQTT -> Kafka and Kafka -> MQTT, against a C pipeline in the same run.

Real components on this machine: one KRaft Kafka, one Mosquitto configured not to drop (the
operator's defaults: unlimited queue, 1000 in flight), the worker as a process
(`python -m mqtt_operator bridge`). 256-byte payloads, QoS 1, at least once.

Throughput figures are drain rates: the worker's persistent session is created first, then the
broker's queue for it is pre-loaded with a fast pipelined publisher (the worker's own MQTT client
in a separate process, not a Python paho loop that would be the bottleneck), then the worker is
started and timed from its WARMUP-th to its last confirmed message (metrics scraped every 0.1 s).
The C baseline (`mosquitto_sub -q 1 | kcat -P`, no guarantees: mosquitto_sub acknowledges on
receipt and kcat produces with its defaults) drains the same pre-loaded queue of the same payloads.
Latency: a paced publisher stamps each message with its send time; the Kafka topic uses
LogAppendTime, so the record's timestamp is the moment Kafka stored it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
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

from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from test_bridge_helpers import NO_DROP_CONF, WorkerProcess, worker_config  # noqa: E402

from bench.common import cpu_seconds, peak_rss_mib, record  # noqa: E402
from mqtt_operator.bridge.mqtt_client import open_connection  # noqa: E402
from testenv.kafka import Kafka  # noqa: E402
from testenv.mosquitto import Mosquitto, stamp_plugin  # noqa: E402
from testenv.paths import tool  # noqa: E402

UP_COUNT = 400_000
# Pairs of one-worker runs, without and with the broker plugin. Nine, not five: single pairs on this
# shared machine ranged 0.43-1.25 in one run of five (the plugin cannot make a worker faster), and
# the median of five moved with one or two of them.
PLUGIN_ROUNDS = 9
UP2_COUNT = 400_000
DOWN_COUNT = 200_000
WARMUP = 50_000
PAYLOAD = 256
LATENCY_RATE = 1000
LATENCY_SECONDS = 12
LATENCY_WARMUP_S = 2
DEVICES = 1000
UP = "mqtt_to_kafka"
DOWN = "kafka_to_mqtt"


def payload(i: int) -> bytes:
    # Printable, no newline (the C pipeline is line-based), exactly PAYLOAD bytes.
    head = b"%d:" % i
    return head + b"x" * (PAYLOAD - len(head))


# --- publishers (separate processes: their CPU is not the worker's) ---------------------------


async def _publish(port: int, start: int, count: int) -> None:
    conn, _ = await open_connection(
        "127.0.0.1",
        port,
        client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        keepalive=60,
        clean_start=True,
        session_expiry=0,
        receive_maximum=1000,
    )
    pending: list[asyncio.Future[int]] = []
    for i in range(start, start + count):
        fut = await conn.publish(f"vehicles/dev{i % DEVICES}/state", payload(i), 1, False)
        assert fut is not None
        pending.append(fut)
        if len(pending) >= 5000:
            assert all(code < 0x80 for code in await asyncio.gather(*pending))
            pending.clear()
    assert all(code < 0x80 for code in await asyncio.gather(*pending))
    await conn.disconnect()


def _publish_proc(port: int, start: int, count: int) -> None:
    asyncio.run(_publish(port, start, count))


def preload(port: int, count: int, procs: int = 2) -> float:
    """Publish `count` QoS 1 messages with `procs` pipelined publishers; the seconds it took."""
    started = time.monotonic()
    share = count // procs
    workers = [
        multiprocessing.Process(target=_publish_proc, args=(port, p * share, share)) for p in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    return time.monotonic() - started


async def _paced(port: int, rate: int, seconds: float) -> None:
    conn, _ = await open_connection(
        "127.0.0.1",
        port,
        client_id="bench-paced",
        keepalive=60,
        clean_start=True,
        session_expiry=0,
        receive_maximum=1000,
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stamp = b"%d" % time.time_ns()
        await conn.publish(
            f"vehicles/dev{i % DEVICES}/state", stamp + b":" + b"x" * (PAYLOAD - len(stamp) - 1), 1, False
        )
    await asyncio.sleep(1)
    await conn.disconnect()


# --- Kafka -----------------------------------------------------------------------------------


def create_topic(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs)]
            )
        finally:
            await admin.close()

    asyncio.run(run())


def read_all(bootstrap: str, topic: str, count: int, timeout: float = 120) -> list[tuple[int, bytes]]:
    async def run() -> list[tuple[int, bytes]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < count and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend((r.timestamp, r.value) for r in batch)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


# --- measurements ----------------------------------------------------------------------------


def uplink_config(broker: Mosquitto, kafka: Kafka, topic: str, group: str) -> dict[str, Any]:
    return worker_config(
        mqtt_port=broker.port,
        bootstrap=kafka.bootstrap,
        mqtt_to_kafka={
            "topicFilters": ["vehicles/#"],
            "shareGroup": group,
            "kafkaTopic": topic,
            "key": {"source": "clientId"},
            "clientIdTopicLevel": 1,
        },
        dead_letter_topic=f"{topic}-dlq",
    )


def drain(workers: list[WorkerProcess], direction: str, total: int) -> dict[str, float]:
    """Time the workers from WARMUP confirmed messages to `total`; their CPU over that window."""
    pids = [w.server.proc.pid for w in workers if w.server and w.server.proc]

    def delivered() -> float:
        return sum(w.metric("bridge_delivered_total", direction=direction) for w in workers)

    deadline = time.monotonic() + 600
    while delivered() < WARMUP:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    t0, d0 = time.monotonic(), delivered()
    c0 = sum(cpu_seconds(p) for p in pids)
    while (d := delivered()) < total:
        assert time.monotonic() < deadline, f"stuck at {d} of {total}"
        time.sleep(0.1)
    t1 = time.monotonic()
    c1 = sum(cpu_seconds(p) for p in pids)
    n = d - d0
    return {
        "rate": n / (t1 - t0),
        "cpu_us": (c1 - c0) / n * 1e6,
        "seconds": t1 - t0,
        "rss": max(peak_rss_mib(p) for p in pids),
    }


def one_worker(broker_config: str, kafka: Kafka, topic: str) -> dict[str, float]:
    """One worker draining UP_COUNT messages pre-loaded into its session, on a broker of its own
    (`broker_config`): `drain`'s figures.

    A broker per run: on a shared one, each earlier run's persistent session (a share group of its
    own) kept a copy of every later message queued, 400,000 more a run, and the runs slowed down as
    they went (the ratio came out at 0.65 on a shared broker, 0.875 in the next run with a broker per
    run)."""
    broker = Mosquitto(config=broker_config).start()
    try:
        create_topic(kafka.bootstrap, topic, 4)
        w = WorkerProcess(uplink_config(broker, kafka, topic, topic), replica_id="w0").start()
        w.terminate()  # the session now exists and collects what is published next
        preload(broker.port, UP_COUNT)
        w.start(wait_ready=False)
        try:
            return drain([w], UP, UP_COUNT)
        finally:
            w.terminate()
    finally:
        broker.stop()


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median rate (its CPU with it), the peak RSS of all."""
    ordered = sorted(runs, key=lambda run: run["rate"])
    return {**ordered[len(ordered) // 2], "rss": max(run["rss"] for run in runs)}


def c_pipeline(broker: Mosquitto, kafka: Kafka, topic: str) -> float:
    sub_id = f"c-sub-{uuid.uuid4().hex[:6]}"
    sub = [
        tool("mosquitto_sub"),
        "-h",
        "127.0.0.1",
        "-p",
        str(broker.port),
        "-V",
        "5",
        "-c",
        "-i",
        sub_id,
        "-q",
        "1",
        "-t",
        "$share/cgroup/vehicles/#",
    ]
    subprocess.run([*sub, "-E"], check=True, timeout=30)  # creates the persistent session
    preload(broker.port, UP_COUNT)
    started = time.monotonic()
    consumer = subprocess.Popen([*sub, "-C", str(UP_COUNT)], stdout=subprocess.PIPE)
    producer = subprocess.run(
        [tool("kcat"), "-P", "-b", kafka.bootstrap, "-t", topic],
        stdin=consumer.stdout,
        check=True,
        timeout=600,
    )
    consumer.wait(60)
    elapsed = time.monotonic() - started
    assert producer.returncode == 0
    return UP_COUNT / elapsed


def main() -> None:
    kafka = Kafka(heap="1g").start()
    broker = Mosquitto(config=NO_DROP_CONF).start()
    figures: dict[str, dict[str, Any]] = {}
    try:
        # C baseline (same payloads, same broker and Kafka, same run).
        c_topic = "bench-c"
        create_topic(kafka.bootstrap, c_topic, 4)
        c_rate = c_pipeline(broker, kafka, c_topic)
        print(f"c_pipe_baseline_msgs_s={c_rate:.0f}")

        # One worker, through a broker without our plugin and through one with it (stamps and client
        # table, as the operator loads it), in pairs: the machine's pace drifts over a run (Kafka's JIT,
        # the page cache), so each run with the plugin is set against the run without it beside it, and
        # every other pair runs the plugin first, so the drift favours neither side.
        stamped = f"plugin {stamp_plugin()}\nplugin_opt_clients on\nplugin_opt_access allow\n" + NO_DROP_CONF
        # One run first, not counted: Kafka's JIT is cold at the start (its CPU per message fell from
        # 3.3 to about 1 µs over the first runs of an experiment), and a cold Kafka slowed the first
        # run of the first pair most, whichever it was.
        one_worker(NO_DROP_CONF, kafka, "bench-up1-warmup")
        plain_runs, plugin_runs = [], []
        for r in range(PLUGIN_ROUNDS):
            if r % 2:
                plugin_runs.append(one_worker(stamped, kafka, f"bench-up1-plugin-{r}"))
                plain_runs.append(one_worker(NO_DROP_CONF, kafka, f"bench-up1-{r}"))
            else:
                plain_runs.append(one_worker(NO_DROP_CONF, kafka, f"bench-up1-{r}"))
                plugin_runs.append(one_worker(stamped, kafka, f"bench-up1-plugin-{r}"))
            print(f"1 worker, round {r}: without the plugin {plain_runs[-1]}, with it {plugin_runs[-1]}")
        ratios = [w["rate"] / o["rate"] for o, w in zip(plain_runs, plugin_runs, strict=True)]
        one = median_run(plain_runs)
        one_plugin = median_run(plugin_runs)

        # Two workers on one share group.
        topic2 = "bench-up2"
        create_topic(kafka.bootstrap, topic2, 4)
        cfg2 = uplink_config(broker, kafka, topic2, "g2")
        pair = [WorkerProcess(cfg2, replica_id=f"w{i}").start() for i in range(2)]
        for p in pair:
            p.terminate()
        preload(broker.port, UP2_COUNT)
        for p in pair:
            p.start(wait_ready=False)
        two = drain(pair, UP, UP2_COUNT)
        for p in pair:
            p.terminate()
        print(f"2 workers: {two}")

        # Latency at a steady 1,000 msg/s.
        topic3 = "bench-latency"
        create_topic(kafka.bootstrap, topic3, 4, **{"message.timestamp.type": "LogAppendTime"})
        lw = WorkerProcess(uplink_config(broker, kafka, topic3, "g3"), replica_id="lat").start()
        total = LATENCY_RATE * LATENCY_SECONDS
        asyncio.run(_paced(broker.port, LATENCY_RATE, LATENCY_SECONDS))
        rows = read_all(kafka.bootstrap, topic3, total)
        lw.terminate()
        sent = sorted((int(v.split(b":", 1)[0]) / 1e6, ts) for ts, v in rows)
        cutoff = sent[0][0] + LATENCY_WARMUP_S * 1000
        # Kafka's timestamp is the whole millisecond (floored) in which it stored the record: the middle
        # of that millisecond is the unbiased guess (reading its start made sub-millisecond medians < 0).
        lat = sorted(ts + 0.5 - sent_ms for sent_ms, ts in sent if sent_ms >= cutoff)
        p50 = statistics.median(lat)
        p99 = lat[int(len(lat) * 0.99) - 1]
        print(f"latency ms: p50={p50:.1f} p99={p99:.1f} ({len(lat)} samples, {len(rows)}/{total} arrived)")

        # Kafka -> MQTT, one worker, with a QoS 1 subscriber receiving everything.
        cmd = "bench-cmd"
        create_topic(kafka.bootstrap, cmd, 4)
        lines = "".join(f"{payload(i).decode()}\n" for i in range(DOWN_COUNT))
        subprocess.run(
            [
                tool("kcat"),
                "-P",
                "-b",
                kafka.bootstrap,
                "-t",
                cmd,
                "-H",
                "mqttTopic=devices/all/cmd",
                "-H",
                "qosLevel=1",
            ],
            input=lines.encode(),
            check=True,
            timeout=300,
        )
        sink_sub = subprocess.Popen(
            [tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", "devices/#"],
            stdout=subprocess.DEVNULL,
        )
        down_cfg = worker_config(
            mqtt_port=broker.port,
            bootstrap=kafka.bootstrap,
            kafka_to_mqtt={"kafkaTopic": cmd, "consumerGroup": "bench", "startFrom": "earliest"},
            dead_letter_topic="bench-cmd-dlq",
        )
        dw = WorkerProcess(down_cfg, replica_id="down").start(wait_ready=False)
        down = drain([dw], DOWN, DOWN_COUNT)
        dw.terminate()
        sink_sub.terminate()
        print(f"downlink: {down}")

        figures = {
            "c_pipe_baseline_msgs_s": {
                "value": round(c_rate),
                "unit": "msg/s",
                "how": f"mosquitto_sub -q 1 ($share, persistent session) | kcat -P, {UP_COUNT} pre-loaded "
                f"{PAYLOAD} B messages, 4 partitions; no delivery guarantee",
            },
            "mqtt_to_kafka_1worker_msgs_s": {
                "value": round(one["rate"]),
                "unit": "msg/s",
                "how": f"QoS 1 at least once, {PAYLOAD} B, {UP_COUNT} pre-loaded, timed after {WARMUP}, "
                f"median of {PLUGIN_ROUNDS} runs; key "
                f"clientId (topic level), 4 partitions, acks=all idempotent; "
                f"{one['rate'] / c_rate:.2f}x the C pipeline",
            },
            "mqtt_to_kafka_1worker_broker_plugin_msgs_s": {
                "value": round(one_plugin["rate"]),
                "unit": "msg/s",
                "how": f"as mqtt_to_kafka_1worker_msgs_s, through a broker with mqtt-operator's plugin "
                f"(stamps, client table); median of {PLUGIN_ROUNDS} runs, alternating with those without it",
            },
            "mqtt_to_kafka_broker_plugin_ratio": {
                "value": round(statistics.median(ratios), 3),
                "unit": "ratio",
                "how": f"one worker's rate through a broker with the plugin / without, median of "
                f"{PLUGIN_ROUNDS} pairs run one after the other after a warm-up run, every other pair with "
                f"the plugin first (pairs {', '.join(f'{r:.2f}' for r in ratios)})",
            },
            "mqtt_to_kafka_broker_plugin_cpu_us_per_msg": {
                "value": round(one_plugin["cpu_us"], 1),
                "unit": "us/msg",
                "how": "as mqtt_to_kafka_cpu_us_per_msg, through the broker with the plugin (the worker "
                "reads the stamps and writes two headers more and the broker's message id)",
            },
            "mqtt_to_kafka_2workers_msgs_s": {
                "value": round(two["rate"]),
                "unit": "msg/s",
                "how": f"two worker processes on one share group, same load ({UP2_COUNT}); "
                f"{two['rate'] / c_rate:.2f}x the C pipeline; 2 cores shared with Mosquitto and Kafka",
            },
            "mqtt_to_kafka_latency_p50_ms": {
                "value": round(p50, 1),
                "unit": "ms",
                "how": f"publish -> Kafka LogAppendTime, steady {LATENCY_RATE} msg/s for {LATENCY_SECONDS} s "
                f"(first {LATENCY_WARMUP_S} s not counted), QoS 1, 1 worker; Kafka timestamps are whole "
                "milliseconds (floored): each sample takes the middle of its millisecond, +-0.5 ms",
            },
            "mqtt_to_kafka_latency_p99_ms": {
                "value": round(p99, 1),
                "unit": "ms",
                "how": "same run as mqtt_to_kafka_latency_p50_ms",
            },
            "mqtt_to_kafka_cpu_us_per_msg": {
                "value": round(one["cpu_us"], 1),
                "unit": "us/msg",
                "how": "worker user+sys CPU (/proc) over the 1-worker throughput window / messages confirmed",
            },
            "worker_peak_rss_mib": {
                "value": round(max(one["rss"], two["rss"]), 1),
                "unit": "MiB",
                "how": "VmHWM of the worker during the throughput runs (Receive Maximum 1000)",
            },
            "kafka_to_mqtt_1worker_msgs_s": {
                "value": round(down["rate"]),
                "unit": "msg/s",
                "how": f"{DOWN_COUNT} pre-loaded records with an mqttTopic header, QoS 1 publishes "
                "confirmed by PUBACK, offsets committed after; a mosquitto_sub QoS 1 subscriber "
                f"receiving them; worker CPU {down['cpu_us']:.1f} us/msg",
            },
        }
        record(figures)
        print(json.dumps({k: v["value"] for k, v in figures.items()}, indent=2))
    finally:
        broker.stop()
        kafka.stop()


if __name__ == "__main__":
    main()
