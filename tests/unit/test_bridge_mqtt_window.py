"""The worker's own receive window (`MqttConnection.max_unacked`, docs/bridge.md "Receive window").

Pure flow-control logic: PUBLISH bytes go in through `data_received`, the connection hands messages to
its consumer and pauses or resumes reading on a transport that only records what it was told (no
socket: nothing is sent anywhere).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mqtt_operator.bridge import mqtt5
from mqtt_operator.bridge.mqtt_client import MqttConnection
from mqtt_operator.bridge.records import Message


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def publishes(first: int, count: int) -> bytes:
    return b"".join(mqtt5.publish("cars/1", b"x", qos=1, packet_id=i) for i in range(first, first + count))


async def window(refill_at: int | None) -> tuple[MqttConnection, RecordingTransport, list[list[Message]]]:
    handed: list[list[Message]] = []
    conn = MqttConnection(lambda _conn, batch: handed.append(batch), max_unacked=10, refill_at=refill_at)
    transport = RecordingTransport()
    conn.connection_made(transport)
    return conn, transport, handed


def settle(conn: MqttConnection, batch: list[Message]) -> None:
    conn.ack([m.packet_id for m in batch], settled=len(batch))


def test_by_default_each_settled_batch_makes_room_for_as_many_held_messages() -> None:
    async def run() -> None:
        conn, transport, handed = await window(refill_at=None)
        conn.data_received(publishes(1, 25))
        assert [len(b) for b in handed] == [10] and not transport.reading
        settle(conn, handed[0][:3])
        assert [len(b) for b in handed] == [10, 3]  # a sliver, at once
        assert conn.unacked == 10

    asyncio.run(run())


def test_coalescing_holds_the_rest_until_half_the_window_is_free_then_hands_it_over_in_one_piece() -> None:
    async def run() -> None:
        conn, transport, handed = await window(refill_at=5)
        conn.data_received(publishes(1, 25))
        assert [len(b) for b in handed] == [10] and not transport.reading
        settle(conn, handed[0][:3])
        assert [len(b) for b in handed] == [10]  # 7 unsettled: more than half, nothing yet
        settle(conn, handed[0][3:5])
        assert [len(b) for b in handed] == [10, 5] and conn.unacked == 10
        settle(conn, handed[0][5:])
        assert [len(b) for b in handed] == [10, 5, 5]
        settle(conn, handed[1])
        assert [len(b) for b in handed] == [10, 5, 5, 5] and not transport.reading
        settle(conn, handed[2])
        # Nothing is held any more and half the window is free: reading resumes.
        assert conn.unacked == 5 and transport.reading
        assert [m.packet_id for b in handed for m in b] == list(range(1, 26))  # in order, none twice

    asyncio.run(run())


def test_a_socket_read_takes_up_to_a_mebibyte() -> None:
    # asyncio's selector transport reads `max_size` bytes a time (256 KiB); the connection raises it on
    # a real loopback connection. A Python whose transport no longer has the attribute fails here
    # rather than quietly reading in quarters.
    from asyncio import selector_events

    from mqtt_operator.bridge.mqtt_client import READ_SIZE

    assert selector_events._SelectorSocketTransport.max_size == 256 * 1024

    async def run() -> int:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _conn = await asyncio.get_running_loop().create_connection(
            MqttConnection, "127.0.0.1", port
        )
        size = transport.max_size  # type: ignore[attr-defined]
        transport.close()
        server.close()
        await server.wait_closed()
        return int(size)

    assert asyncio.run(run()) == READ_SIZE == 1 << 20
