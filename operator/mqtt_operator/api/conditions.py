"""The one helper that sets a status condition; every condition the operator writes goes through it.

As in cert-manager's conditions helper: `lastTransitionTime` changes only when the condition's
status really changes, and every condition carries the generation it was computed from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    """One entry of `status.conditions`, shaped like metav1.Condition."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: str = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_conditions(raw: Iterable[Mapping[str, Any]] | None) -> list[Condition]:
    return [Condition.model_validate(item) for item in raw or ()]


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """Return `conditions` with `type` set; the order of the others is kept, a new type is appended."""
    previous = next((c for c in conditions if c.type == type), None)
    if previous is not None and previous.status == status:
        transition = previous.last_transition_time
    else:
        transition = now or now_rfc3339()
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type else c for c in conditions]


def remove_condition(conditions: Sequence[Condition], type: str) -> list[Condition]:
    return [c for c in conditions if c.type != type]
