"""A paho-mqtt MQTT 5 device for tests: each call returns the broker's own reason code."""

from __future__ import annotations

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

NOT_AUTHORIZED = 0x87


class Device:
    def __init__(
        self, port: int, username: str | None, password: str | None, client_id: str | None = None
    ) -> None:
        self.port = port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"dev-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = threading.Event()
        self._acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self._ack(mid, rc)
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._ack(mid, rcs[0])
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))

    def _ack(self, mid: int, code: ReasonCode) -> None:
        with self._acked:
            self._acks[mid] = code
            self._acked.notify_all()

    def _wait_ack(self, mid: int | None) -> int:
        assert mid is not None
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, timeout=10), (
                "no acknowledgement from the broker"
            )
            return int(self._acks.pop(mid).value)

    def connect(self) -> int:
        """CONNACK's reason code (0 = accepted)."""
        self.client.connect("127.0.0.1", self.port, 30)
        self.client.loop_start()
        return int(self.connack.get(timeout=10).value)

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        """PUBACK's reason code for a QoS 1 publish."""
        return self._wait_ack(self.client.publish(topic, payload, qos=1).mid)

    def subscribe(self, topic_filter: str) -> int:
        """SUBACK's reason code (the granted QoS when accepted)."""
        return self._wait_ack(self.client.subscribe(topic_filter, qos=1)[1])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connects(port: int, username: str | None, password: str | None) -> bool:
    device = Device(port, username, password)
    try:
        return device.connect() == 0
    except OSError:
        return False
    finally:
        device.close()
