"""Benchmark: the FunctionTrigger worker, MQTT -> HTTP function, events per second and added latency.

Real components on this machine: one Mosquitto configured not to drop, the worker as a process
(`python -m mqtt_operator bridge`), and the function: a no-op aiohttp server in its own process
(`bench_function.py --function PORT`), so it does not share the worker's GIL. 256-byte payloads,
QoS 1, at least once, CloudEvents.

Throughput figures are drain rates, as in bench_bridge.py: the worker's persistent session is
created first, the broker's queue for it is pre-loaded by two pipelined publisher processes, then
the worker is started and timed from its WARMUP-th to its last confirmed message (metrics scraped
every 0.1 s). Latency: a paced publisher stamps each message with its send time; the function
notes when the call reaches its handler (its own time is ~0: it answers 200 at once), so the
figure is publish -> broker -> worker -> HTTP call -> function. The same paced stream into a plain
QoS 1 subscriber process (publish -> broker -> subscriber) is the baseline: the difference is what
the trigger adds. The machine is shared, so each is run LATENCY_RUNS times, interleaved, and the
median run is reported with all runs listed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from aiohttp import web  # noqa: E402

from bench.common import drain, record  # noqa: E402

FN = "mqtt_to_function"
PAYLOAD = 256
# Moderate for one HTTP call per message (a tenth of what one worker drains on a quiet machine).
LATENCY_RATE = 500
LATENCY_SECONDS = 12
LATENCY_WARMUP_S = 2
LATENCY_RUNS = 3
RUNS: list[dict[str, Any]] = [
    # name, total events, warm-up events, spec overrides
    {"name": "batch1_c16", "count": 60_000, "warmup": 6_000, "spec": {"concurrency": 16}},
    {"name": "batch1_c64", "count": 60_000, "warmup": 6_000, "spec": {"concurrency": 64}},
    {
        "name": "batch100",
        "count": 400_000,
        "warmup": 40_000,
        "spec": {"batchMaxMessages": 100, "batchMaxWaitSeconds": 1, "concurrency": 16},
    },
]


# --- the function (its own process) ---------------------------------------------------------


def serve_function(port: int) -> None:
    """A no-op function: 200 at once. For binary-mode calls it notes publish -> arrival latency
    from the stamp the paced publisher put at the start of the payload."""
    latencies_ms: list[float] = []
    calls = 0

    async def call(request: web.Request) -> web.Response:
        nonlocal calls
        arrived = time.time_ns()
        body = await request.read()
        calls += 1
        if request.headers.get("ce-subject", "").startswith("latency/"):
            latencies_ms.append((arrived - int(body.split(b":", 1)[0])) / 1e6)
        return web.Response(status=200)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"calls": calls, "latencies_ms": latencies_ms})

    app = web.Application()
    app.router.add_post("/fn", call)
    app.router.add_get("/stats", stats)
    gc.freeze()  # its own start-up objects out of its collections: it should take ~no time itself
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def start_function(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--function", str(port)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            function_stats(port)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the benchmark function did not start")


def function_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
        return stats


def _baseline_subscriber(port: int, count: int, out: Any) -> None:
    """A plain QoS 1 shared subscriber (the worker's MQTT client): publish -> here latencies."""
    from mqtt_operator.bridge.mqtt_client import MqttConnection, open_connection

    async def run() -> None:
        latencies: list[float] = []
        done = asyncio.Event()

        def on_messages(conn: MqttConnection, messages: list[Any]) -> None:
            now = time.time_ns()
            latencies.extend((now - int(m.payload.split(b":", 1)[0])) / 1e6 for m in messages)
            conn.ack([m.packet_id for m in messages])
            if len(latencies) >= count:
                done.set()

        conn, _ = await open_connection(
            "127.0.0.1",
            port,
            client_id="bench-fn-baseline",
            keepalive=60,
            clean_start=True,
            session_expiry=0,
            receive_maximum=1000,
            on_messages=on_messages,
        )
        await conn.subscribe([("$share/baseline/latency/#", 1)], 10)
        out.put("subscribed")
        await asyncio.wait_for(done.wait(), 120)
        out.put(latencies)
        await conn.disconnect()

    asyncio.run(run())


def load_average() -> float:
    """The machine's 1-minute load average (the machine is shared: recorded with the figures)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) after the warm-up."""
    lat = sorted(samples[LATENCY_RATE * LATENCY_WARMUP_S :])
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def baseline_latency(broker_port: int) -> tuple[float, float]:
    queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
    sub = multiprocessing.Process(
        target=_baseline_subscriber, args=(broker_port, LATENCY_RATE * LATENCY_SECONDS, queue)
    )
    sub.start()
    assert queue.get(timeout=30) == "subscribed"
    asyncio.run(paced(broker_port, LATENCY_RATE, LATENCY_SECONDS))
    samples = queue.get(timeout=60)
    sub.join(10)
    return percentiles(samples)


def function_latency(broker_port: int, fn_port: int, run: int) -> tuple[float, float]:
    from test_bridge_helpers import WorkerProcess

    before = len(function_stats(fn_port)["latencies_ms"])
    config = trigger_config(
        broker_port, fn_port, f"g-latency-{run}", topic="latency", session_expiry=0, concurrency=16
    )
    worker = WorkerProcess(config, replica_id=f"lat{run}").start()
    asyncio.run(paced(broker_port, LATENCY_RATE, LATENCY_SECONDS))
    time.sleep(1)
    worker.terminate()
    samples = function_stats(fn_port)["latencies_ms"][before:]
    assert len(samples) == LATENCY_RATE * LATENCY_SECONDS, len(samples)
    return percentiles(samples)


# --- the measurements -----------------------------------------------------------------------


def trigger_config(
    broker_port: int,
    fn_port: int,
    group: str,
    topic: str = "vehicles",
    session_expiry: int = 600,
    **spec: Any,
) -> dict[str, Any]:
    from test_bridge_helpers import unique

    from mqtt_operator.bridge.config import BridgeConfig

    config: dict[str, Any] = {
        "owner": "bench/trigger",
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "clientIdPrefix": unique("bench-fn"),
            "sessionExpirySeconds": session_expiry,
            "receiveMaximum": 1000,
        },
        "mqttToFunction": {
            "topicFilters": [f"{topic}/#"],
            "shareGroup": group,
            "function": {"url": f"http://127.0.0.1:{fn_port}/fn", "timeoutSeconds": 10},
            "eventSource": "/mqtt-operator/bench/devices",
            "clientIdTopicLevel": 1,
            **spec,
        },
        "metricsPort": 0,
        "drainSeconds": 15,
    }
    BridgeConfig.model_validate(config)
    return config


def main() -> None:
    from test_bridge_helpers import NO_DROP_CONF, WorkerProcess

    from bench.bench_bridge import preload
    from testenv.mosquitto import Mosquitto
    from testenv.process import free_port

    broker = Mosquitto(config=NO_DROP_CONF).start()
    fn_port = free_port()
    function = start_function(fn_port)
    results: dict[str, dict[str, float]] = {}
    try:
        for run in RUNS:
            w = WorkerProcess(
                trigger_config(broker.port, fn_port, f"g-{run['name']}", **run["spec"]),
                replica_id=run["name"],
            ).start()
            w.terminate()  # the session now exists and collects what is published next
            preload(broker.port, run["count"])
            w.start(wait_ready=False)
            results[run["name"]] = {
                **drain(w, FN, run["count"], run["warmup"]),
                "calls": w.metric("bridge_function_calls_total"),
            }
            w.terminate()
            print(f"{run['name']}: {results[run['name']]}", flush=True)

        # Added latency at a steady rate, one message per call, against the MQTT-only baseline.
        base_runs, fn_runs, loads = [], [], []
        for i in range(LATENCY_RUNS):
            loads.append(load_average())
            base_runs.append(baseline_latency(broker.port))
            fn_runs.append(function_latency(broker.port, fn_port, i))
            loads.append(load_average())
            print(f"latency ms (p50, p99): baseline {base_runs[-1]}, function {fn_runs[-1]}", flush=True)
    finally:
        function.terminate()
        function.wait(10)
        broker.stop()

    b1, b64, b100 = results["batch1_c16"], results["batch1_c64"], results["batch100"]
    p50, p99 = sorted(fn_runs, key=lambda r: r[1])[LATENCY_RUNS // 2]
    base50, base99 = sorted(base_runs, key=lambda r: r[1])[LATENCY_RUNS // 2]

    def runs(values: list[tuple[float, float]]) -> str:
        return ", ".join(f"{a:.2f}/{b:.2f}" for a, b in values)

    figures = {
        "mqtt_to_function_batch1_c16_events_s": {
            "value": round(b1["rate"]),
            "unit": "events/s",
            "how": f"one message per call (CloudEvents binary mode), unordered, concurrency 16, "
            f"{RUNS[0]['count']} pre-loaded {PAYLOAD} B QoS 1 messages, timed after {RUNS[0]['warmup']}; "
            f"a no-op aiohttp function in its own process; worker CPU {b1['cpu_us']:.0f} us/event; "
            "goal >= 3,000",
        },
        "mqtt_to_function_batch1_c64_events_s": {
            "value": round(b64["rate"]),
            "unit": "events/s",
            "how": f"as batch1_c16 with concurrency 64; worker CPU {b64['cpu_us']:.0f} us/event",
        },
        "mqtt_to_function_batch100_events_s": {
            "value": round(b100["rate"]),
            "unit": "events/s",
            "how": f"100 messages per call (application/cloudevents-batch+json), concurrency 16, "
            f"{RUNS[2]['count']} pre-loaded, timed after {RUNS[2]['warmup']}; worker CPU "
            f"{b100['cpu_us']:.1f} us/event; goal >= 20,000",
        },
        "mqtt_to_function_latency_p50_ms": {
            "value": round(p50, 2),
            "unit": "ms",
            "how": f"publish -> the function's handler, steady {LATENCY_RATE} msg/s for {LATENCY_SECONDS} s "
            f"(first {LATENCY_WARMUP_S} s not counted), one message per call, unordered, concurrency 16, "
            f"QoS 1, 1 worker; the median of {LATENCY_RUNS} runs by p99 (p50/p99 of each: {runs(fn_runs)}); "
            f"1-minute load average {min(loads):.1f}-{max(loads):.1f} (the machine is shared)",
        },
        "mqtt_to_function_latency_p99_ms": {
            "value": round(p99, 2),
            "unit": "ms",
            "how": "same run as mqtt_to_function_latency_p50_ms; goal <= 5 ms",
        },
        "mqtt_only_latency_p50_ms": {
            "value": round(base50, 2),
            "unit": "ms",
            "how": "the baseline of mqtt_to_function_latency_*: the same paced stream, publish -> a plain "
            f"QoS 1 subscriber process, runs interleaved with the function's (p50/p99: {runs(base_runs)})",
        },
        "mqtt_only_latency_p99_ms": {
            "value": round(base99, 2),
            "unit": "ms",
            "how": "same runs as mqtt_only_latency_p50_ms",
        },
        "mqtt_to_function_worker_peak_rss_mib": {
            "value": round(max(r["rss"] for r in results.values()), 1),
            "unit": "MiB",
            "how": "VmHWM of the worker during the throughput runs",
        },
    }
    record(figures)
    print(json.dumps({k: v["value"] for k, v in figures.items()}, indent=2))


async def paced(port: int, rate: int, seconds: float) -> None:
    """QoS 1 publishes at a steady `rate`, each payload starting with its send time (ns) and ':'."""
    from mqtt_operator.bridge.mqtt_client import open_connection

    conn, _ = await open_connection(
        "127.0.0.1",
        port,
        client_id="bench-fn-paced",
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
        stamp = b"%d:" % time.time_ns()
        await conn.publish(f"latency/dev{i % 100}/state", stamp + b"x" * (PAYLOAD - len(stamp)), 1, False)
    await asyncio.sleep(1)
    await conn.disconnect()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--function", type=int, metavar="PORT", help="run the no-op function on PORT")
    args = parser.parse_args()
    if args.function:
        serve_function(args.function)
    else:
        main()
