"""The reconcile entry shared by all six kinds: pause handling, status, events, retries.

A kind's reconciler (in controllers/) returns an Outcome; this module turns it into
`status.observedGeneration` and conditions (through the one conditions helper), an Event when the
status changed, and a kopf retry when the outcome asks for one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from mqtt_operator import metrics
from mqtt_operator.api.conditions import Condition, parse_conditions, remove_condition, set_condition
from mqtt_operator.api.kinds import ALL_KINDS, PAUSE_ANNOTATION, Kind
from mqtt_operator.controllers.outcome import AT_REST, SPEC_ERRORS, Outcome
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.kube.events import record_event
from mqtt_operator.kube.status import status_changes, write_status

log = logging.getLogger(__name__)
Reconciler = Callable[[Mapping[str, Any], OperatorContext, Mapping[str, Any]], Awaitable[Outcome]]


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
    for update in outcome.conditions:
        conditions = set_condition(
            conditions, update.type, update.status, update.reason, update.message, generation
        )
    conditions = progress_conditions(conditions, generation)
    return {
        **outcome.fields,
        "observedGeneration": generation,
        "conditions": [c.to_api() for c in conditions],
    }


def progress_conditions(conditions: list[Condition], generation: int | None) -> list[Condition]:
    """Pure: `Reconciling` and `Stalled` from Ready, the "abnormal-true" pair kstatus (Flux, kpt, Argo CD's
    health checks in argocd/) reads. Ready=False for a spec error -> Stalled=True; for a cause the
    operator waits out or retries (a broker not up yet, workers rolling) -> Reconciling=True; Ready=True
    or a state the spec asks for (stopped, disabled, paused) -> neither."""
    ready = next((c for c in conditions if c.type == "Ready"), None)
    active: str | None = None
    if ready is not None and ready.status != "True" and ready.reason not in AT_REST:
        active = "Stalled" if ready.reason in SPEC_ERRORS else "Reconciling"
    for kind in ("Reconciling", "Stalled"):
        if kind != active:
            conditions = remove_condition(conditions, kind)
    if ready is None or active is None:
        return conditions
    # set_condition keeps lastTransitionTime while the status stays True: no write per reconcile.
    return set_condition(conditions, active, "True", ready.reason, ready.message, generation)


def kind_of(body: Mapping[str, Any]) -> Kind:
    return next(k for k in ALL_KINDS if k.kind == body["kind"])


async def record(ctx: OperatorContext, body: Mapping[str, Any], outcome: Outcome | None) -> None:
    """Write the status the outcome implies (if it differs), an Event if it changed, and ask for a retry."""
    desired = desired_status(body, outcome)
    changed = status_changes(body.get("status"), desired)
    if changed:
        await write_status(
            ctx.client,
            kind_of(body),
            body["metadata"]["namespace"],
            body["metadata"]["name"],
            body.get("status"),
            desired,
        )
        if outcome is not None and outcome.event is not None and "conditions" in changed:
            type_, reason, message = outcome.event
            try:
                await record_event(
                    ctx.client, body, "Warning" if type_ == "Warning" else "Normal", reason, message
                )
            except Exception:  # an Event is a courtesy: never fail a reconcile for it
                log.warning("could not record an Event", exc_info=True)
    if outcome is not None and outcome.retry_after is not None:
        ready = next((c for c in outcome.conditions if c.type == "Ready"), None)
        raise kopf.TemporaryError(ready.message if ready else "retrying", delay=outcome.retry_after)


def reconcile_with(reconciler: Reconciler) -> Callable[..., Awaitable[None]]:
    """A kopf handler that runs `reconciler` unless the object is paused, then records the outcome."""

    async def handler(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        outcome = await run_reconciler(reconciler, body, ctx, kwargs)
        await record(ctx, body, outcome)

    return handler


async def run_reconciler(
    reconciler: Reconciler, body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]
) -> Outcome | None:
    """The reconciler's outcome (None when paused), counted and timed in the operator's metrics."""
    kind = body["kind"]
    if is_paused(body):
        metrics.RECONCILES.labels(kind, "paused").inc()
        return None
    meta = body["metadata"]
    async with ctx.lock(kind, meta.get("namespace", ""), meta["name"]):
        with metrics.ReconcileTimer(kind) as timer:
            outcome = await reconciler(body, ctx, indexes)
            timer.result = metrics.reconcile_result(outcome.conditions)
    return outcome


async def count_object(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Watch events of every kind: the objects and their Ready status in the operator's metrics."""
    meta = body.get("metadata") or {}
    if type == "DELETED":
        metrics.OBJECTS.gone(body["kind"], meta.get("namespace", ""), meta.get("name", ""))
        ctx: OperatorContext | None = memo.get("ctx")
        if ctx is not None:
            ctx.forget(body["kind"], meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))
    else:
        metrics.OBJECTS.seen(
            body["kind"], meta.get("namespace", ""), meta.get("name", ""), metrics.ready_of(body)
        )
