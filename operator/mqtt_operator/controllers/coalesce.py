"""Coalescing: many callers asking for the same work share one run that started after they asked.

A burst of 1,000 AuthUsers for one broker becomes a handful of full syncs, not 1,000: each caller
waits for a run that began after its request (so it sees its own object), and every caller queued
behind a running sync is served by the single next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Slot(Generic[T]):
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requested: int = 0
    completed: int = 0
    result: T | None = None


class Coalescer(Generic[T]):
    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        slot = self._slots.setdefault(key, _Slot())
        slot.requested += 1
        ticket = slot.requested
        async with slot.lock:
            if slot.completed >= ticket and slot.result is not None:
                return slot.result
            covers = slot.requested  # everyone who asked before this run starts
            result = await work()
            slot.completed, slot.result = covers, result
            return result
