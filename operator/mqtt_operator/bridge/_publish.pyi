# The C PUBLISH reader (_publish.c); mqtt5.decode_stream is its only caller.
from mqtt_operator.bridge.records import Message, Stamps

def configure(
    message_type: type[Message], stamps_type: type[Stamps], no_stamps: Stamps, heads: tuple[bytes, ...], /
) -> None: ...
def read_publishes(buf: bytes, pos: int, received: float, messages: list[Message], /) -> int: ...
