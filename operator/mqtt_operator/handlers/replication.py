"""kopf registration for ReplicationTask: reconcile, periodic re-check, figures, cleanup on delete."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from mqtt_operator.api.kinds import GROUP, REPLICATION_TASK, VERSION
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import Outcome
from mqtt_operator.controllers.replication import collect_figures, delete_replication, reconcile_replication
from mqtt_operator.handlers.connector import COUNTERS_PERIOD_SECONDS
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.handlers.observe import is_paused, reconcile_with, record
from mqtt_operator.kube.status import write_status

log = logging.getLogger(__name__)


def instance_of(body: Mapping[str, Any], indexes: Mapping[str, Any]) -> InstanceEntry | None:
    """The MqttInstance of the task's MQTT side (source.mqtt or target.mqtt), from the instance index."""
    spec = body.get("spec") or {}
    side = (spec.get("source") or {}).get("mqtt") or (spec.get("target") or {}).get("mqtt") or {}
    name = (side.get("instanceRef") or {}).get("name", "")
    found = list(indexes["mqtt_instances"].get((body["metadata"]["namespace"], name), []))
    return found[0] if found else None


async def reconcile(body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]) -> Outcome:
    return await reconcile_replication(body, ctx.client, ctx.settings, instance_of(body, indexes))


async def recheck(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Timer: the same reconcile, so that RocketMQ's reachability, a change of the instance or a worker
    object deleted by hand shows up."""
    ctx: OperatorContext = memo["ctx"]
    outcome = None if is_paused(body) else await reconcile(body, ctx, indexes)
    with contextlib.suppress(kopf.TemporaryError):  # the timer runs again anyway
        await record(ctx, body, outcome)


async def refresh_figures(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Timer: consumed, failed, latency, last sync time and replicas into status (only what changed)."""
    ctx: OperatorContext = memo["ctx"]
    meta = body["metadata"]
    try:
        fields = await collect_figures(body, ctx.client, ctx.settings, ctx.replication_counters, ctx.latency)
        await write_status(
            ctx.client, REPLICATION_TASK, meta["namespace"], meta["name"], body.get("status"), fields
        )
    except ApiError as err:  # the next period tries again
        log.warning("could not update the figures: %s", err.status.message, extra={"task": meta["name"]})


async def cleanup(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Finalizer: the workers, their config and the task's broker identity go with it."""
    ctx: OperatorContext = memo["ctx"]
    await delete_replication(body, ctx.client, ctx.settings, instance_of(body, indexes))
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"], meta.get("uid", ""))
    ctx.replication_counters.forget(key)
    ctx.latency.forget(key)


def register(drift_period: float) -> None:
    plural = REPLICATION_TASK.plural
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
        id="figures",
    )(refresh_figures)
    kopf.on.delete(GROUP, VERSION, plural, id="cleanup")(cleanup)
