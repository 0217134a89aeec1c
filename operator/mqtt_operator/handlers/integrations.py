"""kopf registration of the three integration kinds (KafkaConnector, FunctionTrigger, ReplicationTask),
one call per kind: reconcile, periodic re-check, figures from the workers, cleanup on delete; and the
two indexes of their worker objects (workers/index.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from mqtt_operator.api.kinds import GROUP, VERSION
from mqtt_operator.controllers.connector import KafkaConnector
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.integration import Integration
from mqtt_operator.controllers.outcome import Outcome
from mqtt_operator.controllers.replication import ReplicationTask
from mqtt_operator.controllers.trigger import FunctionTrigger
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.handlers.reconcile import Reconciler, is_paused, reconcile_with, record, run_reconciler
from mqtt_operator.kube.apply import get
from mqtt_operator.kube.client import resource
from mqtt_operator.kube.events import record_event
from mqtt_operator.kube.status import write_status
from mqtt_operator.workers.index import (
    INSTANCE_LABEL,
    KIND_LABEL,
    WORKER_LABELS,
    WorkerIndex,
    pod_entry,
    statefulset_entry,
)

log = logging.getLogger(__name__)
# The workers' figures reach the status within this period (plus one scrape).
FIGURES_PERIOD_SECONDS = 15.0
KINDS: tuple[type[Integration[Any, Any]], ...] = (KafkaConnector, FunctionTrigger, ReplicationTask)


def _instance(
    kind: type[Integration[Any, Any]], body: Mapping[str, Any], indexes: Mapping[str, Any]
) -> InstanceEntry | None:
    """The MqttInstance the workers use, from the index of handlers/access.py (filled before any
    handler runs)."""
    key = (body["metadata"]["namespace"], kind.instance_ref(body))
    found = list(indexes["mqtt_instances"].get(key, []))
    return found[0] if found else None


def _integration(
    kind: type[Integration[Any, Any]],
    body: Mapping[str, Any],
    ctx: OperatorContext,
    indexes: Mapping[str, Any],
) -> Integration[Any, Any]:
    return kind(
        body,
        ctx.client,
        ctx.settings,
        _instance(kind, body, indexes),
        WorkerIndex.of(indexes),
        ctx.integrations,
    )


def reconciler_of(kind: type[Integration[Any, Any]]) -> Reconciler:
    async def reconcile(body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]) -> Outcome:
        return await _integration(kind, body, ctx, indexes).reconcile()

    return reconcile


def register(kind: type[Integration[Any, Any]], drift_period: float) -> None:
    plural = kind.kind.plural
    reconcile = reconciler_of(kind)

    async def recheck(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
        """Timer: the same reconcile, so that a change of the instance (authorization turned off, a broker
        gone), of what the integration reaches (Kafka, the function, RocketMQ) shows up, and a worker
        object deleted by hand comes back."""
        ctx: OperatorContext = memo["ctx"]
        outcome = await run_reconciler(reconcile, body, ctx, indexes)
        with contextlib.suppress(kopf.TemporaryError):  # the timer runs again anyway
            await record(ctx, body, outcome)

    async def refresh_figures(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
        """Timer: what the workers report (counters, replicas ...) into status, only what changed, and an
        Event when the kind has one to tell."""
        ctx: OperatorContext = memo["ctx"]
        meta = body["metadata"]
        try:
            fields, event = await _integration(kind, body, ctx, indexes).collect_figures()
            await write_status(
                ctx.client, kind.kind, meta["namespace"], meta["name"], body.get("status"), fields
            )
            if event is not None:
                await record_event(ctx.client, body, event[0], event[1], event[2])
        except ApiError as err:  # the next period tries again
            log.warning(
                "could not update the figures: %s",
                err.status.message,
                extra={"owner": f"{plural}/{meta['name']}"},
            )

    async def cleanup(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
        """Finalizer: the workers, their config and the integration's broker identity go with it."""
        ctx: OperatorContext = memo["ctx"]
        await _integration(kind, body, ctx, indexes).cleanup()

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
        interval=FIGURES_PERIOD_SECONDS,
        initial_delay=min(5.0, FIGURES_PERIOD_SECONDS),
        id="counters",
    )(refresh_figures)
    kopf.on.delete(GROUP, VERSION, plural, id="cleanup")(cleanup)


def worker_statefulsets(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return statefulset_entry(namespace or "", name, body)


def worker_pods(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return pod_entry(namespace or "", name, body)


async def workers_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Watch events of the workers' StatefulSets: when the replicas or ready replicas they report differ
    from what their owner's status shows, reconcile the owner now, so `status.readyReplicas` and the
    Ready message that counts the workers follow the Pods at once rather than at the next timer."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    kind = next((k for k in KINDS if k.kind.kind.lower() == labels.get(KIND_LABEL)), None)
    owner_name = labels.get(INSTANCE_LABEL)
    if type == "DELETED" or kind is None or not owner_name:
        return
    ctx: OperatorContext = memo["ctx"]
    owner = await get(ctx.client, resource(kind.kind), meta["namespace"], owner_name)
    if owner is None or owner["metadata"].get("deletionTimestamp") or is_paused(owner):
        return
    shown = owner.get("status") or {}
    workers = body.get("status") or {}
    if all(int(workers.get(f) or 0) == int(shown.get(f) or 0) for f in ("replicas", "readyReplicas")):
        return  # what the owner shows is still true
    outcome = await run_reconciler(reconciler_of(kind), owner, ctx, indexes)
    with contextlib.suppress(kopf.TemporaryError):  # its own handler retries
        await record(ctx, owner, outcome)


def register_all(drift_period: float) -> None:
    kopf.on.event("apps", "v1", "statefulsets", labels=WORKER_LABELS)(workers_changed)
    kopf.index("apps", "v1", "statefulsets", labels=WORKER_LABELS)(worker_statefulsets)
    kopf.index("", "v1", "pods", labels=WORKER_LABELS)(worker_pods)
    for kind in KINDS:
        register(kind, drift_period)
