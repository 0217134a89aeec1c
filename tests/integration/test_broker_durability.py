"""What a broker keeps of a queued backlog when it stops: the operator's mosquitto.conf, the real Mosquitto.

Mosquitto holds queued messages, sessions and retained messages in memory and writes all of them to
`mosquitto.db` every `autosave_interval` seconds and when it exits cleanly; it has no write-ahead log.
So a clean stop (SIGTERM: `kubectl delete pod`, a rollout, a node drain) keeps everything, and a crash
(SIGKILL: the OOM killer, a lost node) loses what it accepted since its last save. These tests measure
both with the default spec (docs/reliability.md quotes their output): a backlog queued for an offline
persistent session, as a Kafka outage builds for the workers' shared subscription.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mosquitto_conf import RenderedBroker, make_spec

from mqtt_operator.api.instance import MqttInstanceSpec

pytestmark = pytest.mark.integration

TOPIC = "fleet/telemetry"
PAYLOAD_PAD = b"x" * 240  # about 256 B a message, as the benchmarks send


SHARED = f"$share/workers/{TOPIC}"


def _subscriber(port: int) -> tuple[mqtt.Client, set[int]]:
    """The backlog's owner: a persistent session (clean start false, an hour's expiry), as a worker has."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="backlog-owner", protocol=mqtt.MQTTv5)
    numbers: set[int] = set()
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            numbers.add(int(msg.payload.split(b":", 1)[0]))

    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
    client.loop_start()
    return client, numbers


def _queue_for_offline_session(broker: RenderedBroker, topic_filter: str = TOPIC) -> None:
    client, _ = _subscriber(broker.port())
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(10), "no SUBACK"
    finally:
        client.disconnect()
        client.loop_stop()


def _publish(port: int, numbers: range) -> set[int]:
    """QoS 1, each number once; returns when the broker has acknowledged every one, with the PUBACK reason
    codes seen (0 success, 0x10 "no matching subscribers")."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{numbers.start}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    reasons: set[int] = set()
    client.on_publish = lambda _c, _u, _mid, reason, _p: reasons.add(reason.value)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        infos = [client.publish(TOPIC, b"%d:" % n + PAYLOAD_PAD, qos=1) for n in numbers]
        for info in infos:
            info.wait_for_publish(60)
        assert all(info.is_published() for info in infos), "the broker did not acknowledge every message"
        time.sleep(0.2)  # the last on_publish has run
        return reasons
    finally:
        client.disconnect()
        client.loop_stop()


def _drain(port: int) -> set[int]:
    """Every number the session gets once the broker is back, waiting until 3 s pass with nothing new."""
    client, numbers = _subscriber(port)
    try:
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 3:
            time.sleep(0.1)
            if len(numbers) != seen:
                seen, quiet_since = len(numbers), time.monotonic()
        return set(numbers)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def broker() -> Iterator[RenderedBroker]:
    # The default spec (only authorization off, so the test's clients need no accounts).
    started = RenderedBroker(make_spec(authorization={"enabled": False}))
    started.start()
    yield started
    started.stop()


def _kill(broker: RenderedBroker) -> None:
    assert broker.server is not None and broker.server.proc is not None
    broker.server.kill(signal.SIGKILL)
    broker.server.proc.wait(30)
    broker.server = None


def test_the_default_saves_every_5_seconds() -> None:
    assert MqttInstanceSpec().persistence.autosave_seconds == 5


def test_a_clean_stop_keeps_the_whole_backlog(broker: RenderedBroker) -> None:
    _queue_for_offline_session(broker)
    sent = range(20_000)
    _publish(broker.port(), sent)
    broker.stop()  # SIGTERM, as the kubelet sends first
    broker.start()
    got = _drain(broker.port())
    print(f"clean stop: {len(sent)} queued, {len(got)} after the restart, {len(set(sent) - got)} lost")
    assert got == set(sent)


def test_a_crash_keeps_what_was_saved_and_loses_at_most_the_last_interval(broker: RenderedBroker) -> None:
    """Messages queued more than one autosave interval before the SIGKILL survive it; those queued
    after the last save are lost (Mosquitto acknowledged them: a loss the publisher never sees)."""
    _queue_for_offline_session(broker)
    saved = range(10_000)
    _publish(broker.port(), saved)
    time.sleep(broker.spec.persistence.autosave_seconds + 1.5)  # a save happened after the last of them
    at_risk = range(10_000, 15_000)
    _publish(broker.port(), at_risk)
    _kill(broker)
    broker.start()
    got = _drain(broker.port())
    lost_recent = len(set(at_risk) - got)
    print(
        f"SIGKILL: {len(saved)} queued before the last save, {len(set(saved) - got)} of them lost; "
        f"{len(at_risk)} queued in the last {broker.spec.persistence.autosave_seconds} s, {lost_recent} lost"
    )
    assert set(saved) <= got
    assert got <= set(saved) | set(at_risk)  # nothing invented, no number outside what was sent


@pytest.mark.parametrize("topic_filter", [TOPIC, SHARED])
def test_after_a_restart_a_share_group_has_no_member_until_its_session_owner_returns(
    broker: RenderedBroker, topic_filter: str
) -> None:
    """A known limit of Mosquitto 2.0 that the guarantees must state (docs/reliability.md): a persistent
    session's plain subscription comes back from the saved state, its shared subscription does not.
    Until the owner (a bridge worker) subscribes again, a message on the topic is acknowledged with
    "no matching subscribers" (0x10, a success code to MQTT 5) and dropped. The queued backlog itself
    survives the restart either way."""
    _queue_for_offline_session(broker, topic_filter)
    before = range(1_000)
    assert _publish(broker.port(), before) == {0}
    broker.stop()
    broker.start()
    after = range(1_000, 2_000)
    reasons = _publish(broker.port(), after)
    got = _drain(broker.port())
    print(f"{topic_filter}: {len(set(after) - got)} of {len(after)} published after the restart lost")
    assert set(before) <= got
    if topic_filter == SHARED:
        assert reasons == {0x10}
        assert not got & set(after)
    else:
        assert reasons == {0}
        assert set(after) <= got
