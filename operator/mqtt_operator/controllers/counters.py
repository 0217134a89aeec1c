"""Turning the workers' per-process counters into the integration's counters since its creation. Pure.

A worker's counters start at 0 with each process; the connector's must not go back when a worker
restarts or goes away. So, per connector, the last value seen of each worker is kept, and when a
worker's counter falls (a new process) its last values move into a carry, as Prometheus' increase()
treats counter resets. A worker that stops answering keeps its last values in the sum.

After an operator restart nothing is remembered: the carry is rebuilt as what the status already
shows minus what the workers report now, so the status never goes back either (messages moved while
the operator was down and by a worker that restarted meanwhile are not counted twice, at worst not at
all).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from mqtt_operator.workers.scrape import METRICS, Counters


def _add(names: Collection[str], a: Mapping[str, int], b: Mapping[str, int]) -> Counters:
    return {name: int(a.get(name, 0)) + int(b.get(name, 0)) for name in names}


@dataclass
class _Track:
    names: Collection[str]
    carry: Counters = field(default_factory=dict)
    last: dict[str, Counters] = field(default_factory=dict)

    def total(self) -> Counters:
        result = _add(self.names, self.carry, {})
        for values in self.last.values():
            result = _add(self.names, result, values)
        return result


class CounterBook:
    """The counters of every integration of one kind this operator collects, keyed by (namespace, name,
    uid); `names` are its status.counters fields."""

    def __init__(self, names: Collection[str] = tuple(METRICS)) -> None:
        self.names = tuple(names)
        self._tracks: dict[tuple[str, str, str], _Track] = {}

    def update(
        self, key: tuple[str, str, str], shown: Mapping[str, int] | None, scraped: Mapping[str, Counters]
    ) -> Counters:
        """The connector's counters after a scrape; `shown` is what its status holds now."""
        track = self._tracks.get(key)
        if track is None:
            names = self.names
            track = _Track(names)
            now = _add(names, {}, {})
            for values in scraped.values():
                now = _add(names, now, values)
            track.carry = {name: max(0, int((shown or {}).get(name, 0)) - now[name]) for name in names}
            track.last = {worker: dict(values) for worker, values in scraped.items()}
            self._tracks[key] = track
            return track.total()
        for worker, values in scraped.items():
            before = track.last.get(worker)
            if before is not None and any(values.get(n, 0) < before.get(n, 0) for n in self.names):
                track.carry = _add(
                    self.names, track.carry, before
                )  # a new process: its predecessor's counts stay
            track.last[worker] = dict(values)
        return track.total()

    def forget(self, key: tuple[str, str, str]) -> None:
        self._tracks.pop(key, None)
