"""kopf registration for FunctionTrigger: reconcile, periodic re-check, counters, cleanup on delete."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from mqtt_operator.api.kinds import FUNCTION_TRIGGER, GROUP, VERSION
from mqtt_operator.controllers.outcome import Outcome
from mqtt_operator.controllers.trigger import collect_counters, delete_trigger, reconcile_trigger
from mqtt_operator.handlers.connector import COUNTERS_PERIOD_SECONDS, instance_of
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.handlers.observe import is_paused, reconcile_with, record
from mqtt_operator.kube.events import record_event
from mqtt_operator.kube.status import write_status

log = logging.getLogger(__name__)


async def reconcile(body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]) -> Outcome:
    return await reconcile_trigger(body, ctx.client, ctx.settings, instance_of(body, indexes))


async def recheck(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Timer: the same reconcile, so that the function's reachability, a change of the instance or a
    worker object deleted by hand shows up."""
    ctx: OperatorContext = memo["ctx"]
    outcome = None if is_paused(body) else await reconcile(body, ctx, indexes)
    with contextlib.suppress(kopf.TemporaryError):  # the timer runs again anyway
        await record(ctx, body, outcome)


async def refresh_counters(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Timer: the workers' counters, replicas and ready replicas into status (only what changed), and a
    Warning Event when messages failed for good since the last report."""
    ctx: OperatorContext = memo["ctx"]
    meta = body["metadata"]
    try:
        fields, event = await collect_counters(body, ctx.client, ctx.settings, ctx.trigger_counters)
        await write_status(
            ctx.client, FUNCTION_TRIGGER, meta["namespace"], meta["name"], body.get("status"), fields
        )
        if event is not None:
            await record_event(ctx.client, body, "Warning", event[1], event[2])
    except ApiError as err:  # the next period tries again
        log.warning("could not update the counters: %s", err.status.message, extra={"trigger": meta["name"]})


async def cleanup(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Finalizer: the workers, their config and the trigger's broker identity go with it."""
    ctx: OperatorContext = memo["ctx"]
    await delete_trigger(body, ctx.client, ctx.settings, instance_of(body, indexes))
    meta = body["metadata"]
    ctx.trigger_counters.forget((meta["namespace"], meta["name"], meta.get("uid", "")))


def register(drift_period: float) -> None:
    plural = FUNCTION_TRIGGER.plural
    handler = reconcile_with(reconcile)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(GROUP, VERSION, plural, id="reconcile")(handler)
    kopf.timer(GROUP, VERSION, plural, interval=drift_period, initial_delay=drift_period, id="recheck")(
        recheck
    )
    kopf.timer(
        GROUP,
        VERSION,
        plural,
        interval=COUNTERS_PERIOD_SECONDS,
        initial_delay=min(5.0, COUNTERS_PERIOD_SECONDS),
        id="counters",
    )(refresh_counters)
    kopf.on.delete(GROUP, VERSION, plural, id="cleanup")(cleanup)
