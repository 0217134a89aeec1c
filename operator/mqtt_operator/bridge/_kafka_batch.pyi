# Kafka record batches in C (_kafka_batch.c); kafka_batch.py is its only caller.
from typing_extensions import Buffer

class Batch:
    count: int
    def __init__(self, limit: int) -> None: ...
    def append(
        self,
        timestamp_ms: int,
        key: Buffer | None,
        value: Buffer | None,
        headers: list[tuple[str, bytes]],
        /,
    ) -> bool: ...
    def build(
        self, producer_id: int, producer_epoch: int, base_sequence: int, transactional: bool, /
    ) -> bytes: ...
    def size(self) -> int: ...

def crc32c(data: Buffer, tables: bool = False, /) -> int: ...
