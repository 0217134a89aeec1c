"""The pure parts of `kubectl mqtt clients`, `client`, `clients --watch` and `tail`."""

from __future__ import annotations

from mqtt_operator.kubectl.broker import Received
from mqtt_operator.kubectl.devices import render_client, render_clients, render_event
from mqtt_operator.kubectl.main import message_record

CAR = {
    "clientId": "car-17",
    "online": True,
    "address": "10.244.0.7",
    "username": "fleet",
    "protocolVersion": 5,
    "keepalive": 60,
    "cleanStart": False,
    "connectedAtMs": 1796304939018,
    "disconnectedAtMs": None,
    "subscriptionCount": 2,
}


def test_clients_table_has_one_row_per_client_with_its_connection() -> None:
    offline = {
        **CAR,
        "clientId": "meter-3",
        "online": False,
        "protocolVersion": 4,
        "disconnectedAtMs": 1796304940000,
    }
    lines = render_clients([CAR, offline]).splitlines()
    assert lines[0].split() == [
        "CLIENT",
        "ID",
        "ONLINE",
        "ADDRESS",
        "USERNAME",
        "PROTOCOL",
        "KEEPALIVE",
        "CLEAN",
        "SINCE",
        "SUBS",
    ]
    assert lines[1].split() == [
        "car-17",
        "yes",
        "10.244.0.7",
        "fleet",
        "5",
        "60s",
        "no",
        "2026-12-03T13:35:39.018Z",
        "2",
    ]
    # An offline session shows when it went.
    assert lines[2].split()[:2] == ["meter-3", "no"] and "2026-12-03T13:35:40.000Z" in lines[2]
    assert render_clients([]) == "No clients.\n"


def test_client_detail_lists_its_subscriptions() -> None:
    text = render_client({**CAR, "subscriptions": [{"topicFilter": "cmd/car-17/#", "qos": 1}]})
    assert "Client car-17: online" in text
    assert "  address       10.244.0.7" in text
    assert any(line.split() == ["cmd/car-17/#", "1"] for line in text.splitlines())
    assert "No subscriptions." in render_client({**CAR, "subscriptions": []})


def test_watch_lines_name_the_event_and_the_client() -> None:
    event = {"event": "connect", "timestampMs": 1796304939018, "clientId": "car-17", "address": "10.244.0.7"}
    line = render_event({**event, "username": "fleet", "protocolVersion": 4, "keepalive": 30})
    assert line.split() == ["2026-12-03T13:35:39.018Z", "connect", "car-17", "10.244.0.7", "fleet", "MQTT",
                            "3.1.1", "keepalive", "30s"]  # fmt: skip


def test_tail_separates_the_brokers_stamps_from_the_publishers_properties() -> None:
    msg = Received(
        "cars/17", b"\xff\x00", 1, False,
        (("fleet", "north"), ("mqtt-operator/clientId", "car-17"),
         ("mqtt-operator/clientAddress", "10.0.0.9"),
         ("mqtt-operator/messageId", "019ae4c2-7f1a-7003-9b2e-5c1f0a6d3e88")),
        1796304939.0,
    )  # fmt: skip
    record = message_record(msg)
    assert record["publisher"] == {"clientId": "car-17", "address": "10.0.0.9"}
    assert record["messageId"] == "019ae4c2-7f1a-7003-9b2e-5c1f0a6d3e88"
    assert record["userProperties"] == [["fleet", "north"]]
    assert (record["payload"], record["payloadEncoding"]) == ("/wA=", "base64")
