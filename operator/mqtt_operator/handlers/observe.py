"""The reconcile entry shared by all six kinds: pause handling, observedGeneration, conditions.

The per-kind behaviour plugs in as a `Reconciler`; kinds without one yet report that honestly in
their Ready condition instead of pretending to be reconciled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from mqtt_operator.api.conditions import Condition, parse_conditions, remove_condition, set_condition
from mqtt_operator.api.kinds import ALL_KINDS, GROUP, PAUSE_ANNOTATION, VERSION, Kind
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.kube.status import write_status


@dataclass(frozen=True)
class Outcome:
    """What a reconciler found: the conditions to set and any other status fields."""

    conditions: tuple[tuple[str, Any, str, str], ...] = ()  # (type, status, reason, message)
    fields: Mapping[str, Any] = field(default_factory=dict)


Reconciler = Callable[[Mapping[str, Any], OperatorContext], Awaitable[Outcome]]
_reconcilers: dict[str, Reconciler] = {}


def register(kind: Kind, reconciler: Reconciler) -> None:
    _reconcilers[kind.kind] = reconciler


def is_paused(body: Mapping[str, Any]) -> bool:
    annotations = body.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true"


def desired_status(body: Mapping[str, Any], outcome: Outcome | None) -> dict[str, Any]:
    """Pure: the status to write for `body` given the reconciler's outcome (None when paused)."""
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    conditions: list[Condition] = parse_conditions(status.get("conditions"))
    if outcome is None:
        conditions = set_condition(
            conditions,
            "ReconciliationPaused",
            "True",
            "AnnotationSet",
            f"reconciliation is paused by the annotation {PAUSE_ANNOTATION}=true",
            generation,
        )
        return {"conditions": [c.to_api() for c in conditions]}
    conditions = remove_condition(conditions, "ReconciliationPaused")
    for type_, cond_status, reason, message in outcome.conditions:
        conditions = set_condition(conditions, type_, cond_status, reason, message, generation)
    return {
        **outcome.fields,
        "observedGeneration": generation,
        "conditions": [c.to_api() for c in conditions],
    }


async def not_yet_reconciled(body: Mapping[str, Any], ctx: OperatorContext) -> Outcome:
    return Outcome(
        conditions=(
            (
                "Ready",
                "False",
                "NotImplemented",
                f"this version of mqtt-operator accepts {body['kind']} objects "
                "but does not reconcile them yet",
            ),
        )
    )


async def observe(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo["ctx"]
    reconciler = _reconcilers.get(body["kind"], not_yet_reconciled)
    outcome = None if is_paused(body) else await reconciler(body, ctx)
    kind = next(k for k in ALL_KINDS if k.kind == body["kind"])
    await write_status(
        ctx.client,
        kind,
        body["metadata"]["namespace"],
        body["metadata"]["name"],
        body.get("status"),
        desired_status(body, outcome),
    )


def register_handlers() -> None:
    """Watch every kind: create, spec/annotation update, and resume after an operator restart."""
    for kind in ALL_KINDS:
        for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
            decorator(GROUP, VERSION, kind.plural, id="observe")(observe)
