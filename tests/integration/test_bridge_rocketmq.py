"""A ReplicationTask's worker between a real Mosquitto and a real RocketMQ 5.5: MQTT -> RocketMQ and
RocketMQ -> MQTT through the worker process, read back with rocketmq-python-client and paho-mqtt.

Runs in file order; the proxy outage comes last (the cluster is shared by the session).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rocketmq import Producer
from test_bridge_helpers import Subscriber, WorkerProcess, no_drop_broker, paho_publish, unique, wait_for
from tests.integration.rocketmq_clients import command, read, rocketmq_consumer, rocketmq_producer

from mqtt_operator.bridge.config import BridgeConfig
from testenv.mosquitto import Mosquitto
from testenv.rocketmq import RocketMQ

pytestmark = pytest.mark.integration

UP = "mqtt_to_rocketmq"
DOWN = "rocketmq_to_mqtt"


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    b = no_drop_broker()
    yield b
    b.stop()


def config(cluster: RocketMQ, broker: Mosquitto, **routes: Any) -> dict[str, Any]:
    """A worker config as the operator writes it for a ReplicationTask (validated here already)."""
    cfg: dict[str, Any] = {
        "owner": "tests/replication",
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "clientIdPrefix": unique("rt"),
            "sessionExpirySeconds": 600,
            "keepaliveSeconds": 10,
        },
        "rocketmq": {"endpoints": cluster.endpoint},
        "metricsPort": 0,
        "drainSeconds": 10,
        **routes,
    }
    BridgeConfig.model_validate(cfg)
    return cfg


def topic_and_group(cluster: RocketMQ, fifo: bool = False) -> tuple[str, str]:
    topic, group = cluster.new_name("topic"), cluster.new_name("group")
    cluster.create_topic(topic, "FIFO" if fifo else "NORMAL")
    cluster.create_group(group, fifo=fifo)
    return topic, group


def metric(worker: WorkerProcess, name: str, direction: str, **labels: str) -> float:
    return worker.metric(name, direction=direction, **labels)


def settled(worker: WorkerProcess, direction: str, count: int) -> bool:
    """The worker received and confirmed `count` messages (its settle loop runs after the sink)."""
    return (
        metric(worker, "bridge_received_total", direction) == count
        and metric(worker, "bridge_delivered_total", direction) == count
    )


def figures_of(worker: WorkerProcess, direction: str) -> dict[str, float]:
    """Where the worker's messages of `direction` went: delivered, failed, dead-lettered, dropped."""
    return {
        "delivered": metric(worker, "bridge_delivered_total", direction),
        "permanent": metric(worker, "bridge_failed_total", direction, kind="permanent"),
        "transient": metric(worker, "bridge_failed_total", direction, kind="transient"),
        "deadLettered": metric(worker, "bridge_dead_lettered_total", direction),
        "dropped": metric(worker, "bridge_dropped_total", direction),
    }


def test_a_piles_last_will_reaches_rocketmq_with_the_pile_id(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    topic, group = topic_and_group(rocketmq_cluster)
    worker = WorkerProcess(
        config(
            rocketmq_cluster,
            broker,
            mqttToRocketmq={
                "topicFilters": ["piles/+/will"],
                "shareGroup": unique("wills"),
                "topic": topic,
                "tag": "will",
                "key": {"source": "clientId"},
                "clientIdTopicLevel": 1,
            },
        )
    ).start()
    pile, silent = unique("pile"), unique("pile")
    will = json.dumps({"pileId": pile, "location": "Hall A, bay 3", "errorCode": "E-42"}).encode()
    try:
        for client_id, payload in ((pile, will), (silent, b"")):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
            props = Properties(PacketTypes.WILLMESSAGE)
            props.UserProperty = [("site", "depot-7")]
            client.will_set(f"piles/{client_id}/will", payload, qos=1, properties=props)
            connected = threading.Event()
            client.on_connect = lambda *_, done=connected: done.set()
            client.connect("127.0.0.1", broker.port, 30)
            client.loop_start()
            assert connected.wait(10)
            client.loop_stop()
            # Dropped off abnormally: the socket closes without a DISCONNECT, the broker sends the will.
            client.socket().close()
        with rocketmq_consumer(rocketmq_cluster, group, topic) as consumer:
            got = read(consumer, lambda got: len(got) >= 2, timeout=60)
        wait_for("the worker's figures", lambda: settled(worker, UP, 2), 15)
    finally:
        worker.stop()
    by_key = {next(iter(m.keys)): m for m in got}
    assert sorted(by_key) == sorted([pile, silent])
    first = by_key[pile]
    assert (first.body, first.tag) == (will, "will")
    assert json.loads(first.body)["errorCode"] == "E-42"
    props = first.properties
    assert (props["mqtt.clientId"], props["mqtt.topic"]) == (pile, f"piles/{pile}/will")
    assert (props["mqtt.qos"], props["mqtt.retain"], props["site"]) == ("1", "false", "depot-7")
    assert props["mqtt.messageId"] != by_key[silent].properties["mqtt.messageId"]
    # RocketMQ cannot carry an empty body: a NUL byte and a flag stand for the empty will.
    assert by_key[silent].body == b"\x00"
    assert by_key[silent].properties["mqtt.emptyPayload"] == "true"


def test_rocketmq_commands_reach_devices_in_order_on_an_ordered_route(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    topic, group = topic_and_group(rocketmq_cluster, fifo=True)
    worker = WorkerProcess(
        config(
            rocketmq_cluster,
            broker,
            rocketmqToMqtt={
                "topic": topic,
                "consumerGroup": group,
                "mqttTopic": "piles/{key}/cmd",
                "ordered": True,
            },
        )
    ).start()
    sub = Subscriber(broker.port, "piles/+/cmd")
    piles = [unique("pile") for _ in range(4)]
    count = 1000
    try:
        with rocketmq_producer(rocketmq_cluster, topic) as producer:
            for seq in range(count):
                pile = piles[seq % len(piles)]
                producer.send(command(topic, pile, {"pile": pile, "seq": seq}, fifo=True))
        wait_for("1,000 commands at the devices", lambda: len(sub.messages) >= count, 120)
        wait_for("the worker's figures", lambda: settled(worker, DOWN, len(sub.messages)), 15)
    finally:
        sub.close()
        worker.stop()
    seqs: dict[str, list[int]] = {pile: [] for pile in piles}
    for topic_name, payload, qos, retain, user_properties in sub.messages:
        body = json.loads(payload)
        assert (topic_name, qos, retain) == (f"piles/{body['pile']}/cmd", 1, False)
        assert ("issuer", "maintenance") in user_properties
        seqs[body["pile"]].append(body["seq"])
    for index, pile in enumerate(piles):
        assert seqs[pile] == list(range(index, count, len(piles)))


def test_a_stopped_worker_finds_what_arrived_meanwhile_both_ways(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    up_topic, read_group = topic_and_group(rocketmq_cluster)
    down_topic, group = topic_and_group(rocketmq_cluster)
    cfg = config(
        rocketmq_cluster,
        broker,
        mqttToRocketmq={
            "topicFilters": ["piles/+/status"],
            "shareGroup": unique("status"),
            "topic": up_topic,
            "clientIdTopicLevel": 1,
        },
        rocketmqToMqtt={"topic": down_topic, "consumerGroup": group, "mqttTopic": "piles/{key}/cmd"},
    )
    worker = WorkerProcess(cfg, replica_id="r0").start()
    sub = Subscriber(broker.port, "piles/+/cmd")
    try:
        with rocketmq_producer(rocketmq_cluster, down_topic) as producer:
            paho_publish(broker.port, [("piles/p1/status", b"before", {})])
            producer.send(command(down_topic, "p1", {"seq": "before"}))
            wait_for("both ways once", lambda: settled(worker, UP, 1) and settled(worker, DOWN, 1), 30)
            assert worker.terminate() == 0  # paused: the StatefulSet scaled to 0
            paho_publish(broker.port, [(f"piles/p{i % 3}/status", b"paused-%d" % i, {}) for i in range(50)])
            for i in range(50):
                producer.send(command(down_topic, f"p{i % 3}", {"seq": i}))
            worker.start()  # resumed: the same replica, so the same MQTT session
        wait_for("50 commands at the devices", lambda: len(sub.messages) >= 51, 60)
        with rocketmq_consumer(rocketmq_cluster, read_group, up_topic) as consumer:
            got = read(consumer, lambda got: len(got) >= 51, timeout=60)
        # The restarted process counts from zero: what it took in while resuming.
        wait_for("the worker's figures", lambda: settled(worker, UP, 50) and settled(worker, DOWN, 50), 15)
    finally:
        sub.close()
        worker.stop()
    assert sorted(m.body for m in got) == sorted([b"before"] + [b"paused-%d" % i for i in range(50)])
    seqs = [json.loads(payload)["seq"] for _, payload, *_ in sub.messages]
    assert sorted(seqs[1:]) == list(range(50)) and seqs[0] == "before"


def test_a_missing_topic_or_group_is_named_in_readiness_until_it_exists(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    up_topic, down_topic, group = (rocketmq_cluster.new_name(p) for p in ("missing", "topic", "group"))
    rocketmq_cluster.create_topic(down_topic)
    worker = WorkerProcess(
        config(
            rocketmq_cluster,
            broker,
            mqttToRocketmq={"topicFilters": ["piles/+/will"], "shareGroup": unique("g"), "topic": up_topic},
            rocketmqToMqtt={"topic": down_topic, "consumerGroup": group, "mqttTopic": "piles/{key}/cmd"},
        )
    ).start(wait_ready=False)
    try:
        status, text = wait_for(
            "readiness naming both",
            readyz_when(worker, lambda _, text: up_topic in text and group in text),
            60,
        )
        assert status == 503
        assert f"the RocketMQ topic '{up_topic}' does not exist: create it" in text
        assert f"the RocketMQ consumer group '{group}' does not exist: create it" in text
        rocketmq_cluster.create_topic(up_topic)
        rocketmq_cluster.create_group(group)
        wait_for("ready once they exist", worker.ready, 60)
    finally:
        worker.stop()


def test_commands_that_cannot_reach_a_device_go_to_the_consumer_groups_dead_letter_queue(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    topic, group = topic_and_group(rocketmq_cluster)
    worker = WorkerProcess(
        config(
            rocketmq_cluster,
            broker,
            rocketmqToMqtt={"topic": topic, "consumerGroup": group, "mqttTopic": "piles/{key}/cmd"},
        )
    ).start()
    sub = Subscriber(broker.port, "piles/+/cmd")
    good = [("p1", 0), ("p2", 2), ("p1", 4)]
    # No key for {key}, and a key that would fill more than one topic level: never deliverable.
    bad = [(None, 1), ("bay/7", 3), (None, 5)]
    sent: dict[int, str] = {}
    try:
        with rocketmq_producer(rocketmq_cluster, topic) as producer:
            for pile, seq in sorted(good + bad, key=lambda item: item[1]):
                sent[seq] = producer.send(command(topic, pile, {"seq": seq})).message_id
        wait_for("the good commands at the devices", lambda: len(sub.messages) >= len(good), 60)
        wait_for(
            "the bad ones dead-lettered",
            lambda: (
                metric(worker, "bridge_dead_lettered_total", DOWN) == len(bad)
                and metric(worker, "bridge_received_total", DOWN) == len(good) + len(bad)
                and metric(worker, "bridge_in_flight", DOWN) == 0
            ),
            60,
        )
        # Read with RocketMQ's own client, as a user would: the queue needs a consumer group of its own.
        reader = rocketmq_cluster.new_name("dlq-reader")
        rocketmq_cluster.create_group(reader)
        with rocketmq_consumer(rocketmq_cluster, reader, f"%DLQ%{group}") as consumer:
            dead = read(consumer, lambda got: len(got) >= len(bad), timeout=60)
        figures = figures_of(worker, DOWN)
        log = worker.log()
    finally:
        sub.close()
        worker.stop()
    assert sorted(json.loads(payload)["seq"] for _, payload, *_ in sub.messages) == [0, 2, 4]
    by_seq = {json.loads(m.body)["seq"]: m for m in dead}
    assert sorted(by_seq) == [1, 3, 5], [m.body for m in dead]
    # The message as it was sent: body, tag, keys, properties; its message id survives the forward.
    assert (by_seq[1].keys, by_seq[3].keys, by_seq[5].keys) == (set(), {"bay/7"}, set())
    assert all(m.tag == "cmd" and m.properties["issuer"] == "maintenance" for m in dead)
    assert {seq: m.message_id for seq, m in by_seq.items()} == {seq: sent[seq] for seq in (1, 3, 5)}
    assert figures == {"delivered": 3, "permanent": 3, "transient": 0, "deadLettered": 3, "dropped": 0}
    # The acknowledgement after a forward is answered OK, and a forwarded message is not renewed.
    assert "acknowledgement failed" not in log and "could not extend" not in log, log[-3000:]
    assert "messages dead-lettered" in log and "the message has no key" in log


def test_status_messages_rocketmq_refuses_go_to_the_mqtt_dead_letter_topic(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    topic, read_group = topic_and_group(rocketmq_cluster)
    dead_letter = unique("piles-dead-letter")
    worker = WorkerProcess(
        config(
            rocketmq_cluster,
            broker,
            mqttToRocketmq={
                "topicFilters": ["piles/+/status"],
                "shareGroup": unique("status"),
                "topic": topic,
                "clientIdTopicLevel": 1,
                "deadLetterTopic": dead_letter,
            },
        )
    ).start()
    sub = Subscriber(broker.port, dead_letter)
    # Over RocketMQ's 4 MiB body limit: the mapping refuses it. 200 user properties: the proxy refuses
    # the message (MESSAGE_PROPERTIES_TOO_LARGE, more than 128).
    too_large = b"x" * (4 * 1024 * 1024 + 1)
    many = [(f"p{i}", "v") for i in range(200)]
    try:
        paho_publish(
            broker.port,
            [
                ("piles/p1/status", b"ok", {}),
                ("piles/p2/status", too_large, {}),
                ("piles/p3/status", b"many properties", {"user_properties": many}),
            ],
        )
        wait_for("two dead letters", lambda: len(sub.messages) >= 2, 60)
        with rocketmq_consumer(rocketmq_cluster, read_group, topic) as consumer:
            got = read(consumer, lambda got: len(got) >= 1, timeout=60)
        wait_for("the worker's figures", lambda: metric(worker, "bridge_in_flight", UP) == 0, 15)
        figures = figures_of(worker, UP)
    finally:
        sub.close()
        worker.stop()
    assert [m.body for m in got] == [b"ok"]
    by_source = {
        dict(props)["sourceTopic"]: (topic_name, payload, qos, props)
        for topic_name, payload, qos, _, props in sub.messages
    }
    assert sorted(by_source) == ["piles/p2/status", "piles/p3/status"]
    topic_name, payload, qos, props = by_source["piles/p2/status"]
    assert (topic_name, payload, qos) == (dead_letter, too_large, 1)
    assert "over RocketMQ's body limit" in dict(props)["reason"]
    _, payload, _, props = by_source["piles/p3/status"]
    assert payload == b"many properties"
    assert "MESSAGE_PROPERTIES_TOO_LARGE" in dict(props)["reason"]
    # reason and sourceTopic come first, then the message's own user properties.
    assert [name for name, _ in props[:2]] == ["reason", "sourceTopic"] and props[2:] == many
    assert figures == {"delivered": 1, "permanent": 2, "transient": 0, "deadLettered": 2, "dropped": 0}


def test_a_proxy_outage_loses_nothing_shows_in_the_figures_and_heals(
    rocketmq_cluster: RocketMQ, broker: Mosquitto
) -> None:
    up_topic, read_group = topic_and_group(rocketmq_cluster)
    down_topic, group = topic_and_group(rocketmq_cluster)
    worker = WorkerProcess(
        config(
            rocketmq_cluster,
            broker,
            mqttToRocketmq={
                "topicFilters": ["piles/+/status"],
                "shareGroup": unique("status"),
                "topic": up_topic,
                "clientIdTopicLevel": 1,
            },
            rocketmqToMqtt={"topic": down_topic, "consumerGroup": group, "mqttTopic": "piles/{key}/cmd"},
        )
    ).start()
    sub = Subscriber(broker.port, "piles/+/cmd")
    stop = threading.Event()
    published: list[tuple[int, float]] = []

    def mqtt_stream() -> None:
        # A steady stream of pile status messages; the broker stays up all along.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("piles"), protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", broker.port, 30)
        client.loop_start()
        seq = 0
        while not stop.is_set():
            client.publish(f"piles/p{seq % 5}/status", b"%d" % seq, qos=1).wait_for_publish(10)
            published.append((seq, time.monotonic()))
            seq += 1
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()

    produced: list[int] = []

    def produce(producer: Producer, first: int, count: int) -> None:
        for seq in range(first, first + count):
            while True:  # a command is sent until RocketMQ confirms it
                try:
                    producer.send(command(down_topic, f"p{seq % 5}", {"seq": seq}))
                    break
                except Exception:
                    time.sleep(0.5)
            produced.append(seq)

    streamer = threading.Thread(target=mqtt_stream, daemon=True)
    streamer.start()
    try:
        with rocketmq_producer(rocketmq_cluster, down_topic) as producer:
            produce(producer, 0, 20)
            time.sleep(2)
            # Nothing of RocketMQ's is in flight when the proxy dies: a killed broker may lose the state
            # of messages popped and not yet acknowledged (RocketMQ's own limit, not the worker's).
            wait_for("the commands before", lambda: metric(worker, "bridge_delivered_total", DOWN) >= 20, 30)
            rocketmq_cluster.stop_proxy(graceful=False)
            stopped = time.monotonic()
            try:
                # The consumer or the producer may notice first: wait until the producer's side says so.
                producer_down = "rocketmq producer: RocketMQ proxy not reachable"
                _, text = wait_for(
                    "unready",
                    readyz_when(worker, lambda status, body: status == 503 and producer_down in body),
                    30,
                )
                assert producer_down in text
                # Commands sent during the outage are retried by the sender until the proxy is back.
                during = threading.Thread(target=produce, args=(producer, 20, 10), daemon=True)
                during.start()
                time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
            finally:
                rocketmq_cluster.start_proxy()
                restarted = time.monotonic()
            wait_for("ready again by itself", worker.ready, 90)
            during.join(60)
            produce(producer, 30, 10)
        time.sleep(2)
        stop.set()
        streamer.join(30)
        wait_for("every command at the devices", lambda: len({*map(_seq, sub.messages)}) >= 40, 90)
        with rocketmq_consumer(rocketmq_cluster, read_group, up_topic) as consumer:
            got = read(
                consumer, lambda got: {int(m.body) for m in got} >= {s for s, _ in published}, timeout=90
            )
        wait_for(
            "the worker's figures",
            lambda: (
                metric(worker, "bridge_delivered_total", DOWN) == len(sub.messages)
                and metric(worker, "bridge_delivered_total", UP) >= len(published)
            ),
            30,
        )
        transient = metric(worker, "bridge_failed_total", UP, kind="transient")
        _, text = worker._get("/metrics")
    finally:
        stop.set()
        sub.close()
        worker.stop()
    assert {int(m.body) for m in got} == {seq for seq, _ in published}
    assert {*map(_seq, sub.messages)} == set(range(40)) == set(produced)
    # The outage shows: failed (and retried) deliveries, and messages that waited more than 10 s.
    assert transient > 0
    assert _bucket(text, UP, "10.0") < _bucket(text, UP, "+Inf")
    # The stream went on through the outage: those messages waited in the worker, unacknowledged.
    assert sum(1 for _, at in published if stopped < at < restarted) > 100


def readyz_when(
    worker: WorkerProcess, check: Callable[[int, str], bool]
) -> Callable[[], tuple[int, str] | None]:
    """A probe for wait_for: /readyz's (status, text) once check(status, text) holds."""

    def probe() -> tuple[int, str] | None:
        answer = worker._get("/readyz")
        return answer if check(*answer) else None

    return probe


def _seq(message: tuple[str, bytes, int, bool, list[tuple[str, str]]]) -> int:
    seq: int = json.loads(message[1])["seq"]
    return seq


def _bucket(text: str, direction: str, le: str) -> float:
    prefix = f'bridge_end_to_end_latency_seconds_bucket{{direction="{direction}",le="{le}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix)).rsplit(" ", 1)[1])
