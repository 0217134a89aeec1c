"""The worker's allocator thresholds (bridge/allocator.py), in a fresh interpreter each: a batch's large
buffers are kept for the next batch instead of being faulted in again, page by page."""

from __future__ import annotations

import subprocess
import sys

from mqtt_operator.bridge.allocator import MMAP_THRESHOLD_BYTES

# A worker's pattern: a batch's large buffers (a read of a mebibyte, the Kafka batch, the request
# around it) live together and are freed together, then the next batch's.
PROGRAM = """
import resource, sys
from mqtt_operator.bridge.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():
    buffers = [bytearray(1 << 20) for _ in range(3)]  # zero-filled: every page touched
    del buffers
for _ in range(3):  # warm up: the heap grows once
    batch()
before = faults()
for _ in range(100):
    batch()
print(faults() - before)
"""


def minor_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_a_freed_mebibyte_is_reused_without_faulting_its_pages_in_again() -> None:
    assert MMAP_THRESHOLD_BYTES > 1 << 20  # a read of READ_SIZE stays on the heap
    default, kept = minor_faults("default"), minor_faults("kept")
    # glibc's defaults: the free mebibytes at the heap's top are given back after each batch, and the
    # next batch faults their pages (256 a mebibyte) in again.
    assert default > 100 * 256, default
    assert kept < 100, kept
