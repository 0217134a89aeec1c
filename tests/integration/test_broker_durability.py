"""What a broker keeps of a queued backlog when it stops: the operator's mosquitto.conf, the real Mosquitto.

Mosquitto holds queued messages, sessions and retained messages in memory and writes all of them to
`mosquitto.db` every `autosave_interval` seconds and when it exits cleanly; it has no write-ahead log.
So a clean stop (SIGTERM: `kubectl delete pod`, a rollout, a node drain) keeps everything, and a crash
(SIGKILL: the OOM killer, a lost node) loses what it accepted since its last save. These tests measure
both with the default spec (docs/reliability.md quotes their output): a backlog queued for an offline
persistent session, as a Kafka outage builds for the workers' shared subscription.
"""

from __future__ import annotations

import contextlib
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
from mqtt_operator.resources.mosquitto_conf import EXPORTER_CLIENT_ID

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


@contextlib.contextmanager
def _running(**persistence: str) -> Iterator[RenderedBroker]:
    # The default spec (only authorization off, so the test's clients need no accounts).
    started = RenderedBroker(make_spec(authorization={"enabled": False}, persistence=persistence))
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def broker() -> Iterator[RenderedBroker]:
    with _running() as started:
        yield started


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


def _admitted(port: int, client_id: str, wait_s: float = 5) -> bool:
    """Whether the broker lets a client in now: True on a CONNACK, False when it closes the connection
    without one (what the plugin does while it holds clients after a start)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    outcome: list[bool] = []
    done = threading.Event()

    def on_connect(*_: object) -> None:
        outcome.append(True)
        done.set()

    def on_disconnect(*_: object) -> None:
        outcome.append(False)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        assert done.wait(wait_s), "neither a CONNACK nor a closed connection"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


def _until_quiet(numbers: set[int], quiet_s: float = 3) -> set[int]:
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        time.sleep(0.1)
        if len(numbers) != seen:
            seen, quiet_since = len(numbers), time.monotonic()
    return set(numbers)


def _resubscribe(port: int, topic_filter: str) -> tuple[mqtt.Client, set[int]]:
    """The backlog's owner back, as a worker comes back: its session resumed, its filter subscribed again."""
    client, numbers = _subscriber(port)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic_filter, qos=1)
    assert subscribed.wait(10), "no SUBACK"
    return client, numbers


def _restarted(broker: RenderedBroker) -> None:
    broker.stop()
    broker.start()


def test_after_a_restart_clients_wait_until_the_shared_subscription_is_back(broker: RenderedBroker) -> None:
    """Mosquitto 2.0 restores a persistent session's plain subscriptions, not its shared ones: a message
    published before the owner (a bridge worker) subscribes again would be acknowledged with "no matching
    subscribers" (0x10) and dropped. Our plugin records the shared subscription and, after the start,
    closes other clients' connections without a CONNACK until it is back; the owner gets in at once."""
    _queue_for_offline_session(broker, SHARED)
    before = range(1_000)
    assert _publish(broker.port(), before) == {0}
    _restarted(broker)
    assert not _admitted(broker.port(), "device-early"), (
        "a device got in before the shared subscription was back"
    )
    owner, numbers = _resubscribe(broker.port(), SHARED)
    try:
        assert _admitted(broker.port(), "device-late")
        after = range(1_000, 2_000)
        reasons = _publish(broker.port(), after)
        got = _until_quiet(numbers)
    finally:
        owner.disconnect()
        owner.loop_stop()
    print(
        f"{SHARED}: {len(set(before) - got)} of the backlog and "
        f"{len(set(after) - got)} of {len(after)} published after the restart lost"
    )
    assert reasons == {0}
    assert set(before) | set(after) <= got
    assert "every shared subscription renewed after" in broker.log


def test_a_plain_subscription_is_restored_and_holds_nobody(broker: RenderedBroker) -> None:
    _queue_for_offline_session(broker, TOPIC)
    _restarted(broker)
    assert _admitted(broker.port(), "device")
    after = range(1_000)
    assert _publish(broker.port(), after) == {0}
    assert set(after) <= _drain(broker.port())


def test_a_restart_while_holding_keeps_the_record(broker: RenderedBroker) -> None:
    _queue_for_offline_session(broker, SHARED)
    _restarted(broker)
    assert not _admitted(broker.port(), "device")
    _restarted(broker)  # before the owner came back: nothing was rewritten
    assert not _admitted(broker.port(), "device")
    # The exporter sidecar gets in: the broker Pod's readiness waits on it, and the workers on that.
    assert _admitted(broker.port(), EXPORTER_CLIENT_ID)
    owner, _ = _resubscribe(broker.port(), SHARED)
    owner.disconnect()
    owner.loop_stop()
    assert _admitted(broker.port(), "device")


def test_a_clean_session_holds_nobody(broker: RenderedBroker) -> None:
    """A shared subscription that ends with its connection is not recorded: nothing to wait for."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="passing", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port(), 30, clean_start=True)
    client.loop_start()
    client.subscribe(SHARED, qos=1)
    assert subscribed.wait(10)
    client.disconnect()
    client.loop_stop()
    _restarted(broker)
    assert _admitted(broker.port(), "device")


def test_an_unsubscribed_share_holds_nobody(broker: RenderedBroker) -> None:
    owner, _ = _resubscribe(broker.port(), SHARED)
    done = threading.Event()
    owner.on_unsubscribe = lambda *_: done.set()
    owner.unsubscribe(SHARED)
    assert done.wait(10)
    owner.disconnect()
    owner.loop_stop()
    _restarted(broker)
    assert _admitted(broker.port(), "device")


def test_the_hold_ends_after_resubscribe_wait_when_the_owner_does_not_return() -> None:
    """A holder that never comes back (its connector deleted while the broker was down) holds clients for
    spec.persistence.resubscribeWait at most; then they get in, the log names what was not renewed, and the
    record forgets it, so the next restart holds nobody."""
    with _running(resubscribeWait="3s") as broker:
        _queue_for_offline_session(broker, SHARED)
        _restarted(broker)
        started = time.monotonic()
        assert not _admitted(broker.port(), "device")
        while not _admitted(broker.port(), "device"):
            assert time.monotonic() - started < 15, "still holding clients long after resubscribeWait"
            time.sleep(0.5)
        assert (
            f"not renewed, so what is published on them is dropped until their holders return: {SHARED}"
            in broker.log
        )
        assert _publish(broker.port(), range(100)) == {0x10}  # what the hold was for: nobody takes them
        _restarted(broker)
        assert _admitted(broker.port(), "device")


def test_resubscribe_wait_0s_turns_the_hold_off() -> None:
    with _running(resubscribeWait="0s") as broker:
        _queue_for_offline_session(broker, SHARED)
        _restarted(broker)
        assert _admitted(broker.port(), "device")
