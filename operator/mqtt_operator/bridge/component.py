"""The one protocol of the bridge program's parts (`Component`: start, readiness, probe, close).

Every client the program runs — MQTT source and publisher, Kafka producer and consumer, RocketMQ
producer and consumer, the HTTP function — is a `Component`: the program (`program.py`) starts
them in the order they were registered, asks each for its readiness (/readyz and the
`bridge_connected` gauge), probes each every few seconds and closes them all on the way out,
without knowing which integration a component belongs to.

What each integration registers (its components and pipelines) is `wiring.Wiring`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Readiness(NamedTuple):
    """One component's line on /readyz."""

    name: str  # also the `endpoint` label of `bridge_connected`
    ok: bool
    last_error: str | None
    # False: reported on /readyz, not required for it (the HTTP function: an unready worker would
    # not bring it back, and the messages wait in the broker meanwhile); it keeps its own gauge.
    required: bool = True


class Component(Protocol):
    async def start(self) -> None:
        """Begin connecting (in the background where that can take long); never raises for an
        endpoint that does not answer yet: the component retries and reports it in readiness()."""
        ...

    def readiness(self) -> Readiness: ...

    async def probe(self) -> None:
        """Check the endpoint while no message flows (called every few seconds); may do nothing."""
        ...

    async def close(self) -> None:
        """Let go of the connections normally (after the pipelines drained)."""
        ...
