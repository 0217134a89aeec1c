"""The C allocator's thresholds in a worker process (glibc's `mallopt`).

A worker allocates the same large buffers again and again: a read of up to a mebibyte from the
broker (`mqtt_client.READ_SIZE`), a Kafka batch of up to 512 KiB, the produce request around it. With
glibc's defaults such a buffer is either its own `mmap` (given back on free) or sits at the top of
the heap, which is trimmed as soon as a few mebibytes there are free. Either way the next batch's
buffer is faulted in again, page by page: 0.13 minor faults a message without the stamps, 0.19 with
them. The worker's kernel time was 0.3-0.5 µs a message, and is 0.1-0.2 with the thresholds below
(docs/bridge.md, "Memory kept for the next batch").

So the worker keeps what it freed: buffers under `MMAP_THRESHOLD_BYTES` come from the heap, and the
heap is trimmed only beyond `TRIM_THRESHOLD_BYTES` free at its top. Larger buffers (a payload of
several mebibytes) are still mapped alone and given back when freed, so one burst of them does not
keep the worker's memory up.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3

MMAP_THRESHOLD_BYTES: Final = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES: Final = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set the thresholds above; False where the C library has no `mallopt` (not glibc) or refuses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: its allocator keeps its own thresholds")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Setting either turns glibc's sliding thresholds off, so both are set (mallopt returns 1 on success).
    mapped: bool = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return mapped and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
