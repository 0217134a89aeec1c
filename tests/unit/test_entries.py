"""The index entries of MqttInstances: what the integrations read of their instance."""

from __future__ import annotations

from mqtt_operator.controllers.entries import instance_entry


def body(**spec: object) -> dict[str, object]:
    return {"metadata": {"name": "devices", "namespace": "iot", "uid": "u1"}, "spec": spec}


def test_the_client_events_topic_is_the_instances_or_none_when_it_publishes_none() -> None:
    assert instance_entry(body()).client_events_topic == "$SYS/mqtt-operator/client-events"
    moved = instance_entry(body(clientEvents={"topic": "fleet/lifecycle"}))
    assert moved.client_events_topic == "fleet/lifecycle"
    assert instance_entry(body(clientEvents={"enabled": False})).client_events_topic is None


def test_sessions_expiry_is_carried_in_seconds() -> None:
    assert instance_entry(body(sessions={"expiry": "3h"})).session_expiry_seconds == 10800
