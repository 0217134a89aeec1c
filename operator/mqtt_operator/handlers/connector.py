"""kopf registration for KafkaConnector: reconcile, periodic re-check, counters, cleanup on delete."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from mqtt_operator.api.kinds import GROUP, KAFKA_CONNECTOR, VERSION
from mqtt_operator.controllers.connector import collect_counters, delete_connector, reconcile_connector
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import Outcome
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.handlers.observe import is_paused, reconcile_with, record
from mqtt_operator.kube.status import write_status

log = logging.getLogger(__name__)
# The workers' counters reach the status within this period (plus one scrape).
COUNTERS_PERIOD_SECONDS = 15.0


def instance_of(body: Mapping[str, Any], indexes: Mapping[str, Any]) -> InstanceEntry | None:
    """The MqttInstance named by spec.instanceRef, from the index of handlers/access.py (filled before any
    handler runs)."""
    ref = (body.get("spec") or {}).get("instanceRef") or {}
    found = list(indexes["mqtt_instances"].get((body["metadata"]["namespace"], ref.get("name", "")), []))
    return found[0] if found else None


async def reconcile(body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]) -> Outcome:
    return await reconcile_connector(body, ctx.client, ctx.settings, instance_of(body, indexes))


async def recheck(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Timer: the same reconcile, so that a change of the instance (authorization turned off, a broker
    gone) or of Kafka shows up, and a worker object deleted by hand comes back."""
    ctx: OperatorContext = memo["ctx"]
    outcome = None if is_paused(body) else await reconcile(body, ctx, indexes)
    with contextlib.suppress(kopf.TemporaryError):  # the timer runs again anyway
        await record(ctx, body, outcome)


async def refresh_counters(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Timer: the workers' counters, replicas and ready replicas into status (only what changed)."""
    ctx: OperatorContext = memo["ctx"]
    meta = body["metadata"]
    try:
        fields = await collect_counters(body, ctx.client, ctx.settings, ctx.counters)
        await write_status(
            ctx.client, KAFKA_CONNECTOR, meta["namespace"], meta["name"], body.get("status"), fields
        )
    except ApiError as err:  # the next period tries again
        log.warning(
            "could not update the counters: %s", err.status.message, extra={"connector": meta["name"]}
        )


async def cleanup(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Finalizer: the workers, their config and the connector's broker identity go with it."""
    ctx: OperatorContext = memo["ctx"]
    await delete_connector(body, ctx.client, ctx.settings, instance_of(body, indexes))
    meta = body["metadata"]
    ctx.counters.forget((meta["namespace"], meta["name"], meta.get("uid", "")))


def register(drift_period: float) -> None:
    handler = reconcile_with(reconcile)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(GROUP, VERSION, KAFKA_CONNECTOR.plural, id="reconcile")(handler)
    kopf.timer(
        GROUP,
        VERSION,
        KAFKA_CONNECTOR.plural,
        interval=drift_period,
        initial_delay=drift_period,
        id="recheck",
    )(recheck)
    kopf.timer(
        GROUP,
        VERSION,
        KAFKA_CONNECTOR.plural,
        interval=COUNTERS_PERIOD_SECONDS,
        initial_delay=min(5.0, COUNTERS_PERIOD_SECONDS),
        id="counters",
    )(refresh_counters)
    kopf.on.delete(GROUP, VERSION, KAFKA_CONNECTOR.plural, id="cleanup")(cleanup)
