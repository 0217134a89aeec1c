"""Shared by the bridge worker's integration tests (no tests here): the worker as a real process,
brokers configured so they never drop, fast publishers, Kafka topics and consumers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.bridge.mqtt_client import MqttConnection, open_connection
from testenv.mosquitto import Mosquitto
from testenv.paths import run_dir
from testenv.process import Server, free_port

# Mosquitto's defaults drop QoS 1 messages for a subscriber that falls behind (FACTS.md); these
# keep everything, and $SYS is published every second for the dropped-messages check.
NO_DROP_CONF = (
    "allow_anonymous true\n"
    "max_queued_messages 0\n"
    "max_queued_bytes 0\n"
    "max_inflight_messages 1000\n"
    "sys_interval 1\n"
    "persistence false\n"
)


def no_drop_broker() -> Mosquitto:
    return Mosquitto(config=NO_DROP_CONF).start()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_config(
    *,
    mqtt_port: int,
    bootstrap: str,
    mqtt_to_kafka: dict[str, Any] | None = None,
    kafka_to_mqtt: dict[str, Any] | None = None,
    dead_letter_topic: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A BridgeConfig as the operator writes it (camelCase JSON), validated here already."""
    config: dict[str, Any] = {
        "owner": "tests/connector",
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "clientIdPrefix": unique("bridge"),
            "sessionExpirySeconds": 600,
            "receiveMaximum": 1000,
            "keepaliveSeconds": 10,
        },
        "kafka": {"bootstrapServers": bootstrap},
        "metricsPort": 0,
        "drainSeconds": 15,
        **extra,
    }
    if mqtt_to_kafka is not None:
        config["mqttToKafka"] = mqtt_to_kafka
    if kafka_to_mqtt is not None:
        config["kafkaToMqtt"] = kafka_to_mqtt
    if dead_letter_topic is not None:
        config["deadLetterTopic"] = dead_letter_topic
    BridgeConfig.model_validate(config)
    return config


@dataclass
class WorkerProcess:
    """`python -m mqtt_operator bridge --config FILE --replica-id ID` as a child process."""

    config: dict[str, Any]
    replica_id: str = "r0"
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bridge-", dir=run_dir())))
    server: Server | None = None
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)  # e.g. MQTT_PASSWORD, as a Pod's Secret env would be

    def start(self, wait_ready: bool = True) -> WorkerProcess:
        self.port = self.port or free_port()
        config = {**self.config, "metricsPort": self.port}
        path = self.root / "config.json"
        path.write_text(json.dumps(config))
        self.server = Server(
            f"bridge-{self.replica_id}",
            [
                sys.executable,
                "-m",
                "mqtt_operator",
                "bridge",
                "--config",
                str(path),
                "--replica-id",
                self.replica_id,
            ],
            self.root / f"worker-{self.replica_id}.log",
            env=self.env,
        )
        self.server.start()
        if wait_ready:
            self.server.wait_until(self.ready, 60, "ready (/readyz)")
        else:
            self.server.wait_until(self.alive, 30, "serving /healthz")
        return self

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def alive(self) -> bool:
        return self._get("/healthz")[0] == 200

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def scrape(self) -> str:
        """The worker's /metrics text."""
        status, text = self._get("/metrics")
        assert status == 200, f"/metrics answered {status}: {text}"
        return text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`."""
        _, text = self._get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            metric_name = series.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def log(self) -> str:
        return (self.root / f"worker-{self.replica_id}.log").read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the exit code."""
        assert self.server is not None and self.server.proc is not None
        proc = self.server.proc
        self.server.kill(15)
        code = proc.wait(timeout)
        self.server = None
        return code

    def kill(self) -> None:
        assert self.server is not None and self.server.proc is not None
        self.server.kill(9)
        self.server.proc.wait(10)
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- MQTT ---------------------------------------------------------------------------------------


def paho_publish(
    port: int,
    messages: Iterable[tuple[str, bytes, dict[str, Any]]],
    qos: int = 1,
    auth: tuple[str, str] | None = None,
) -> None:
    """Publish with paho (an independent MQTT 5 implementation), MQTT 5 properties as keyword dicts:
    user_properties=[(k, v)], content_type=str, correlation_data=bytes, client_id (of this publisher).
    `auth` is (username, password).
    """
    messages = list(messages)
    client_id = next((opts["client_id"] for _, _, opts in messages if "client_id" in opts), unique("pub"))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if auth is not None:
        client.username_pw_set(*auth)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        infos = []
        for topic, payload, opts in messages:
            props = Properties(PacketTypes.PUBLISH)
            if opts.get("user_properties"):
                props.UserProperty = list(opts["user_properties"])
            if "content_type" in opts:
                props.ContentType = opts["content_type"]
            if "correlation_data" in opts:
                props.CorrelationData = opts["correlation_data"]
            infos.append(client.publish(topic, payload, qos=qos, properties=props))
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


async def publisher(port: int) -> MqttConnection:
    """A connection of the worker's own client, to publish with (clean start, no session)."""
    conn, _ = await open_connection(
        "127.0.0.1",
        port,
        client_id=unique("fastpub"),
        keepalive=30,
        clean_start=True,
        session_expiry=0,
        receive_maximum=1000,
    )
    return conn


async def _publish_fast(port: int, items: Iterable[tuple[str, bytes]], window: int = 2000) -> int:
    conn = await publisher(port)
    pending: list[asyncio.Future[int]] = []
    refused = 0
    for topic, payload in items:
        fut = await conn.publish(topic, payload, 1, False)
        assert fut is not None
        pending.append(fut)
        if len(pending) >= window:
            refused += sum(1 for code in await asyncio.gather(*pending) if code >= 0x80)
            pending.clear()
    refused += sum(1 for code in await asyncio.gather(*pending) if code >= 0x80)
    await conn.disconnect()
    return refused


def publish_fast(port: int, items: Iterable[tuple[str, bytes]]) -> None:
    """QoS 1 publishes, pipelined (the worker's own client): tens of thousands a second."""
    assert asyncio.run(_publish_fast(port, items)) == 0, "the broker refused publishes"


class Subscriber:
    """A paho MQTT 5 subscriber collecting (topic, payload, qos, retain, user properties)."""

    def __init__(
        self, port: int, topic_filter: str, qos: int = 1, auth: tuple[str, str] | None = None
    ) -> None:
        self.messages: list[tuple[str, bytes, int, bool, list[tuple[str, str]]]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("sub"), protocol=mqtt.MQTTv5)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self._subacked = False

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            props = getattr(msg.properties, "UserProperty", None) or []
            self.messages.append((msg.topic, msg.payload, msg.qos, bool(msg.retain), list(props)))

        def on_subscribe(*_: Any) -> None:
            self._subacked = True

        self.client.on_message = on_message
        self.client.on_subscribe = on_subscribe
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=qos)
        wait_for("SUBACK", lambda: self._subacked, 10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SysDropped:
    """Mosquitto's $SYS/broker/publish/messages/dropped, followed from the start of a test.

    Mosquitto 2.0 publishes its $SYS values retained but with a 60 s message expiry, and again only
    when a value changes: a subscriber that comes more than 60 s after the last change gets nothing.
    Subscribed while the broker is new, this sees the first value and every change after it."""

    def __init__(self, port: int) -> None:
        self.values: list[int] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("sys"), protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self.values.append(int(msg.payload))
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        self.client.subscribe("$SYS/broker/publish/messages/dropped", qos=0)
        wait_for("$SYS dropped counter", lambda: self.values, 15)

    def value(self) -> int:
        return self.values[-1]

    def __enter__(self) -> SysDropped:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- Kafka --------------------------------------------------------------------------------------


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()

    asyncio.run(create())


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    header_list: list[tuple[str, bytes]]
    timestamp: int


def consume(bootstrap: str, topic: str, count: int, timeout: float = 60, settle: float = 0.0) -> list[Rec]:
    """Read `topic` from the beginning until `count` records (then `settle` s more for extras)."""

    async def run() -> list[Rec]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await consumer.start()
        out: list[Rec] = []
        try:
            deadline = time.monotonic() + timeout
            extra_until: float | None = None
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=300)
                for records in batches.values():
                    for r in records:
                        hl = [(k, bytes(v)) for k, v in r.headers]
                        out.append(
                            Rec(r.topic, r.partition, r.offset, r.key, r.value, dict(hl), hl, r.timestamp)
                        )
                if len(out) >= count:
                    if extra_until is None:
                        extra_until = time.monotonic() + settle
                    if time.monotonic() >= extra_until:
                        break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            max_request_size=4 * 1024 * 1024,
            max_batch_size=512 * 1024,
        )
        await producer.start()
        try:
            futs = [
                await producer.send(topic, value, key=key, headers=headers) for key, value, headers in records
            ]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()

    asyncio.run(run())
