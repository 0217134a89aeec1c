"""Mosquitto's connect/disconnect log lines (as 2.0.11 writes them) -> device lifecycle records."""

from __future__ import annotations

import json

import pytest

from mqtt_operator.bridge.config import DeviceEvents
from mqtt_operator.bridge.device_events import LOG_TOPIC as LOG
from mqtt_operator.bridge.device_events import DeviceEventMapping, parse_log_line
from mqtt_operator.bridge.records import KafkaRecord, Message, Skip

NOW_MS = 1_800_000_000_000


def test_a_connect_line_with_every_field() -> None:
    event = parse_log_line(
        "2026-11-23T16:44:19: New client connected from 10.0.0.7:36448 as car-17 (p5, c0, k60, u'driver').",
        NOW_MS,
    )
    assert event is not None
    assert (event.event, event.clientid, event.address, event.username) == (
        "connect",
        "car-17",
        "10.0.0.7:36448",
        "driver",
    )
    assert (event.protocol, event.clean_start, event.keepalive) == (5, False, 60)
    assert event.ts_ms == 1795452259000  # 2026-11-23T16:44:19Z


def test_epoch_stamps_ids_with_spaces_and_no_username() -> None:
    event = parse_log_line(
        "1795452266: New client connected from 127.0.0.1:1 as dev 1 (p2, c1, k30).", NOW_MS
    )
    assert event is not None and event.clientid == "dev 1" and event.username is None
    assert event.ts_ms == 1795452266000 and event.protocol == 2 and event.clean_start is True


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("Client car-1 disconnected.", "disconnected"),
        ("Client car-1 closed its connection.", "connection_closed"),
        ("Client car-1 has exceeded timeout, disconnecting.", "keepalive_timeout"),
        ("Socket error on client car-1, disconnecting.", "socket_error"),
        ("Client car-1 disconnected due to protocol error.", "protocol_error"),
        ("Client car-1 disconnected, not authorised.", "not_authorised"),
        ("Client car-1 already connected, closing old connection.", "taken_over"),
    ],
)
def test_every_disconnect_wording(line: str, reason: str) -> None:
    event = parse_log_line(f"1795452266: {line}", NOW_MS)
    assert event is not None and (event.event, event.clientid, event.reason) == (
        "disconnect",
        "car-1",
        reason,
    )


@pytest.mark.parametrize(
    "line",
    [
        "1795452266: New connection from 127.0.0.1:44612 on port 1883.",
        "1795452266: Opening ipv4 listen socket on port 1883.",
        "Client car-1 disconnected.",  # no timestamp: not a broker log line
        "",
    ],
)
def test_other_lines_are_no_events(line: str) -> None:
    assert parse_log_line(line, NOW_MS) is None


def message(payload: bytes) -> Message:
    return Message("$SYS/broker/log/N", payload, 1, False, False, 1, None, received=NOW_MS / 1000)


def test_mapping_routes_keys_and_skips() -> None:
    both = DeviceEventMapping(
        DeviceEvents(connect_topic="mqtt-device-connect", disconnect_topic="mqtt-device-disconnect")
    )
    record = both(
        message(b"1795452266: New client connected from 127.0.0.1:1 as car-9 (p5, c1, k60, u'car-9').")
    )
    assert isinstance(record, KafkaRecord)
    assert (record.topic, record.key, record.timestamp_ms) == ("mqtt-device-connect", b"car-9", 1795452266000)
    assert json.loads(record.value) == {
        "clientid": "car-9",
        "ts": 1795452266000,
        "event": "connect",
        "address": "127.0.0.1:1",
        "username": "car-9",
        "protocol": 5,
        "keepalive": 60,
        "cleanStart": True,
    }
    gone = both(message(b"1795452267: Client car-9 closed its connection."))
    assert isinstance(gone, KafkaRecord) and gone.topic == "mqtt-device-disconnect"
    assert json.loads(gone.value)["reason"] == "connection_closed"
    assert isinstance(both(message(b"1795452267: New connection from 1.2.3.4:5 on port 1883.")), Skip)
    assert isinstance(both(message(b"\xff\xfe")), Skip)
    connects_only = DeviceEventMapping(DeviceEvents(connect_topic="c"))
    assert isinstance(connects_only(message(b"1795452267: Client car-9 disconnected.")), Skip)


PLUGIN_TOPIC = "$SYS/mqtt-operator/client-events"


def _msg(topic: str, payload: bytes) -> Message:
    return Message(topic, payload, 0, False, False, 0, None, received=NOW_MS / 1000)


def _plugin_mapping() -> DeviceEventMapping:
    return DeviceEventMapping(
        DeviceEvents(connect_topic="came", disconnect_topic="gone", plugin_topic=PLUGIN_TOPIC)
    )


def test_with_plugin_events_the_records_carry_their_ms_time_and_the_logs_port_and_reason() -> None:
    mapping = _plugin_mapping()
    came_line = (
        "2026-11-23T16:44:19: New client connected from 10.0.0.7:36448 as car-17 (p5, c1, k60, u'car')."
    )
    # The log line comes first and makes no record of its own.
    assert isinstance(mapping(_msg(LOG, came_line.encode())), Skip)
    connect = json.dumps({"event": "connect", "timestampMs": 1795452259123, "clientId": "car-17",
                          "address": "10.0.0.7", "username": "car", "protocolVersion": 5,
                          "keepalive": 60, "cleanStart": True}).encode()  # fmt: skip
    record = mapping(_msg(PLUGIN_TOPIC, connect))
    assert isinstance(record, KafkaRecord)
    assert (record.topic, record.key, record.timestamp_ms) == ("came", b"car-17", 1795452259123)
    assert json.loads(record.value) == {
        "clientid": "car-17", "ts": 1795452259123, "event": "connect", "address": "10.0.0.7:36448",
        "username": "car", "protocol": 5, "keepalive": 60, "cleanStart": True,
    }  # fmt: skip

    assert isinstance(mapping(_msg(LOG, b"2026-11-23T16:44:21: Client car-17 closed its connection.")), Skip)
    gone = json.dumps({"event": "disconnect", "timestampMs": 1795452261007, "clientId": "car-17",
                       "address": "10.0.0.7", "username": "car", "reason": None}).encode()  # fmt: skip
    record = mapping(_msg(PLUGIN_TOPIC, gone))
    assert isinstance(record, KafkaRecord)
    assert json.loads(record.value) == {
        "clientid": "car-17", "ts": 1795452261007, "event": "disconnect", "reason": "connection_closed",
        "address": "10.0.0.7", "username": "car",
    }  # fmt: skip


def test_with_plugin_events_a_refused_login_makes_no_record_and_notes_stay_bounded() -> None:
    mapping = _plugin_mapping()
    for i in range(10_050):
        line = f"2026-11-23T16:44:21: Client intruder-{i} disconnected, not authorised."
        assert isinstance(mapping(_msg(LOG, line.encode())), Skip)
    assert len(mapping._notes) == 10_000
    assert isinstance(mapping(_msg(PLUGIN_TOPIC, b"not json")), Skip)
    assert isinstance(mapping(_msg(PLUGIN_TOPIC, b'{"event": "publish"}')), Skip)
