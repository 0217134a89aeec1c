"""The Kafka sink's record batches built in C (bridge/_kafka_batch.c) against aiokafka's builder.

The sink hands its batches to aiokafka's producer, which sends them as they are: every byte must be
what aiokafka's own builder writes for the same records (Kafka checks the CRC and parses each record).
Here both build the same records, appended the same way, and must give the same answer to every
append, the same size and the same bytes, for random keys, values, headers (names in and out of ASCII,
values None or empty), timestamps before and after the first, batch limits that cut the batch, and
the producer state idempotence sets. The integration tests (tests/integration/test_bridge_uplink.py
and the others through the Kafka sink) send them to a real Kafka.
"""

from __future__ import annotations

import re
import sys

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_operator.bridge import kafka_batch
from mqtt_operator.bridge._kafka_batch import Batch, crc32c
from mqtt_operator.bridge.kafka_batch import CRecordBatch, new_batch

names = st.one_of(st.sampled_from(["mqtt.topic", "mqtt.publisherClientId", ""]), st.text(max_size=40))
fields = st.one_of(st.none(), st.binary(max_size=600))
headers = st.lists(st.tuples(names, fields), max_size=12)
records = st.lists(
    st.tuples(st.integers(-100_000, 100_000), fields, fields, headers), min_size=1, max_size=40
)
producer_states = st.tuples(
    st.integers(-1, 2**63 - 1), st.integers(-1, 2**15 - 1), st.integers(-1, 2**31 - 1)
)


@settings(max_examples=300, deadline=None)
@given(
    records=records,
    limit=st.sampled_from([64, 500, 4096, 512 * 1024]),
    first_ts=st.integers(0, 2**42),
    state=st.one_of(st.none(), producer_states),
)
def test_batches_are_the_bytes_aiokafkas_builder_writes(
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    limit: int,
    first_ts: int,
    state: tuple[int, int, int] | None,
) -> None:
    theirs = BatchBuilder(limit, 0)
    ours = CRecordBatch(limit)
    for delta, key, value, record_headers in records:
        if key is None and value is None:
            value = b""  # aiokafka refuses a record with neither
        taken = theirs.append(timestamp=first_ts + delta, key=key, value=value, headers=record_headers)
        assert ours.add(first_ts + delta, key, value, record_headers) is (taken is not None)
        if taken is None:
            break
        assert ours.size() == theirs.size()
    assert ours.record_count() == theirs.record_count()
    if state is not None:
        theirs._set_producer_state(*state)
        ours._set_producer_state(*state)
    built = ours._build()
    assert built == bytes(theirs._build())
    assert ours._build() is built  # a retried batch is sent again as it was
    with pytest.raises(RuntimeError, match="built batch"):
        ours._set_producer_state(1, 1, 1)
    assert ours.size() == len(built)
    parsed = DefaultRecordBatch(built)
    assert parsed.validate_crc()
    assert [r.headers for r in parsed] == [
        [(name, value) for name, value in h] for _, _, _, h in records[: ours.record_count()]
    ]


def test_a_full_batch_refuses_the_record_and_stays_closed() -> None:
    batch = CRecordBatch(200)
    assert batch.add(1, None, b"x" * 500, [])  # the first record is always taken, whatever its size
    assert not batch.add(2, None, b"y", [])
    assert batch.append(timestamp=3, key=None, value=b"z", headers=[]) is None
    assert batch.closed() and batch.record_count() == 1


@given(data=st.binary(max_size=5000))
def test_crc32c_is_kafkas_with_and_without_the_cpu_instruction(data: bytes) -> None:
    assert crc32c(data) == crc32c(data, True) == calc_crc32c(data)


def test_crc32c_of_the_standard_check_string() -> None:
    assert crc32c(b"123456789") == crc32c(b"123456789", True) == 0xE3069283  # RFC 3720, B.4


@pytest.mark.parametrize(
    ("key", "value", "record_headers", "error"),
    [
        ("text", b"v", [], "key must be bytes-like or None, not str"),
        (None, 5, [], "value must be bytes-like or None, not int"),
        (None, b"v", (("a", b"b"),), "headers must be a list, not tuple"),
        (None, b"v", [("a", b"b", b"c")], "a header must be a (name, value) tuple"),
        (None, b"v", [(b"a", b"b")], "a header name must be str, not bytes"),
        (None, b"v", [("a", "b")], "a header value must be bytes-like or None, not str"),
        (None, b"v", [("\ud800", b"b")], "surrogates not allowed"),
    ],
)
def test_a_bad_record_is_an_error_and_leaves_the_batch_as_it_was(
    key: object, value: object, record_headers: object, error: str
) -> None:
    batch = Batch(1 << 20)
    assert batch.append(7, None, b"first", [("h", b"v")])
    size = batch.size()
    with pytest.raises((TypeError, UnicodeEncodeError), match=re.escape(error)):
        batch.append(8, key, value, record_headers)  # type: ignore[arg-type]
    assert (batch.size(), batch.count) == (size, 1)


def test_many_headers_and_buffer_keys_and_values() -> None:
    many = [(f"h{i}", bytes([i])) for i in range(200)]  # past the C side's 64 on the stack
    theirs = BatchBuilder(1 << 20, 0)
    ours = CRecordBatch(1 << 20)
    theirs.append(timestamp=5, key=bytearray(b"k"), value=memoryview(b"v"), headers=many)
    assert ours.add(5, bytearray(b"k"), memoryview(b"v"), many)
    assert ours._build() == bytes(theirs._build())


def test_references_are_returned() -> None:
    key, value, name, header_value = b"key-" + b"1", b"value-" + b"1", "name-" + str(1), b"hv-" + b"1"
    counts = [sys.getrefcount(obj) for obj in (key, value, name, header_value)]
    batch = Batch(1 << 20)
    for _ in range(1000):
        batch.append(1, key, value, [(name, header_value)])
    del batch
    assert [sys.getrefcount(obj) for obj in (key, value, name, header_value)] == counts


def test_the_sink_builds_in_c_here() -> None:
    # make venv builds the extension on this machine: a sink here must not fall back silently.
    assert kafka_batch.builds_batches_in_c()
    assert isinstance(new_batch(1024), CRecordBatch)


def test_without_the_extension_the_sink_gets_aiokafkas_builder_with_the_same_add(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_batch, "_C_BATCHES", False)
    batch = new_batch(1024)
    assert not isinstance(batch, CRecordBatch) and isinstance(batch, BatchBuilder)
    assert batch.add(1, b"k", b"v", [("h", b"x")])
    ours = CRecordBatch(1024)
    ours.add(1, b"k", b"v", [("h", b"x")])
    assert bytes(batch._build()) == ours._build()
