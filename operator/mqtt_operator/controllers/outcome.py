"""What a reconcile reports back to its handler: conditions and status fields, or a failure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mqtt_operator.api.conditions import ConditionStatus

# Ready=False reasons that only a change of the spec (or of what it names) can clear: the status says
# Stalled=True, which kstatus (Flux, kpt) reads as Failed and Argo CD as Degraded.
SPEC_ERRORS: frozenset[str] = frozenset({"InvalidSpec", "InvalidPolicy", "Conflict", "NoPlainListener"})
# Ready=False reasons that are what the spec asks for (spec.replicas 0, disabled, paused): nothing is
# in progress, so neither Reconciling nor Stalled is set and `kubectl wait`/Flux do not wait on them.
AT_REST: frozenset[str] = frozenset({"Stopped", "Disabled", "Paused"})


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Outcome:
    """The conditions to set and the other status fields to write.

    `retry_after` asks the handler to run again after that many seconds (a cause that may fix
    itself: a broker not reachable yet); `event` is a (type, reason, message) to record.
    """

    conditions: tuple[ConditionUpdate, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    retry_after: float | None = None
    event: tuple[str, str, str] | None = None


def ready(
    reason: str, message: str = "", *, extra: tuple[ConditionUpdate, ...] = (), **fields: Any
) -> Outcome:
    """Ready=True; `extra` are further conditions decided with it."""
    return Outcome(conditions=(ConditionUpdate("Ready", "True", reason, message), *extra), fields=fields)


def not_ready(
    reason: str,
    message: str,
    *,
    retry_after: float | None = None,
    warn: bool = True,
    extra: tuple[ConditionUpdate, ...] = (),
    **fields: Any,
) -> Outcome:
    """Ready=False with a reason a user can act on; a Warning Event unless `warn` is false."""
    return Outcome(
        conditions=(ConditionUpdate("Ready", "False", reason, message), *extra),
        fields=fields,
        retry_after=retry_after,
        event=("Warning", reason, message) if warn else None,
    )
