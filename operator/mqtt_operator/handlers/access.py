"""kopf registration for MqttInstance, AuthUser and AclPolicy, and the indexes their syncs read."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from mqtt_operator.api.kinds import ACL_POLICY, AUTH_USER, GROUP, MQTT_INSTANCE, VERSION
from mqtt_operator.controllers.access import AccessSnapshot, SyncReport
from mqtt_operator.controllers.entries import (
    InstanceEntry,
    PolicyEntry,
    UserEntry,
    instance_entry,
    policy_entry,
    user_entry,
)
from mqtt_operator.controllers.instance import reconcile_instance
from mqtt_operator.controllers.outcome import Outcome, not_ready
from mqtt_operator.handlers.context import OperatorContext
from mqtt_operator.handlers.reconcile import is_paused, reconcile_with, record, run_reconciler
from mqtt_operator.kube.apply import get
from mqtt_operator.kube.client import resource
from mqtt_operator.kube.status import write_status
from mqtt_operator.resources.identity import BROKER_COMPONENT
from mqtt_operator.resources.meta import MANAGED_BY

log = logging.getLogger(__name__)
# Failures that mean there is nothing left in a broker to clean up: deletion goes ahead.
NOTHING_TO_CLEAN = frozenset({"InstanceNotFound", "AuthorizationDisabled", "NoPlainListener"})


# -- indexes: kopf fills them before any handler runs, so a sync never mistakes "not loaded yet" for
# "deleted" and prunes a broker by accident.


def mqtt_instances(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Any, InstanceEntry]:
    try:
        entry = instance_entry(body)
    except (ValidationError, ValueError):
        return {}
    return {(entry.namespace, name): entry}


def auth_users(body: kopf.Body, **_: Any) -> dict[Any, UserEntry]:
    entry = user_entry(body)
    return {(entry.namespace, entry.instance): entry}


def password_secrets(body: kopf.Body, **_: Any) -> dict[Any, UserEntry]:
    """AuthUsers by the Secret their password comes from: a Secret event finds its users at once."""
    entry = user_entry(body)
    return {(entry.namespace, entry.secret_name): entry}


def acl_policies(body: kopf.Body, **_: Any) -> dict[Any, PolicyEntry]:
    entry = policy_entry(body)
    return {(entry.namespace, entry.instance): entry}


def secret_versions(
    namespace: str | None, name: str, meta: kopf.Meta, **_: Any
) -> dict[Any, tuple[str, str]]:
    # Only names and versions: the data is read when a password must really be set.
    return {namespace: (name, str(meta.get("resourceVersion", "")))}


def snapshot(indexes: Mapping[str, Any], namespace: str, instance: str) -> AccessSnapshot:
    key = (namespace, instance)
    instances = list(indexes["mqtt_instances"].get(key, []))
    return AccessSnapshot(
        instance=instances[0] if instances else None,
        users=tuple(indexes["auth_users"].get(key, [])),
        policies=tuple(indexes["acl_policies"].get(key, [])),
        secret_versions=dict(indexes["secret_versions"].get(namespace, [])),
    )


async def _sync(
    ctx: OperatorContext, indexes: Mapping[str, Any], namespace: str, instance: str
) -> SyncReport:
    return await ctx.access.sync(namespace, instance, lambda: snapshot(indexes, namespace, instance))


def _pending(kind: str) -> Outcome:
    return not_ready("Pending", f"the {kind} was not part of the last sync yet", retry_after=5, warn=False)


# -- reconcilers


async def reconcile_user(
    body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]
) -> Outcome:
    entry = user_entry(body)
    report = await _sync(ctx, indexes, entry.namespace, entry.instance)
    return report.user(entry.name) or _pending("AuthUser")


async def reconcile_policy(
    body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]
) -> Outcome:
    entry = policy_entry(body)
    report = await _sync(ctx, indexes, entry.namespace, entry.instance)
    return report.policy(entry.name) or _pending("AclPolicy")


async def reconcile_mqtt_instance(
    body: Mapping[str, Any], ctx: OperatorContext, indexes: Mapping[str, Any]
) -> Outcome:
    return await reconcile_instance(body, ctx.client, ctx.pool, ctx.settings)


async def delete_access_object(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Finalizer: remove the account or roles from the broker (the sync no longer desires them)."""
    ctx: OperatorContext = memo["ctx"]
    instance = (body.get("spec", {}).get("instanceRef") or {}).get("name", "")
    report = await _sync(ctx, indexes, body["metadata"]["namespace"], instance)
    if report.failure is not None:
        reason = report.failure.conditions[0].reason
        if reason not in NOTHING_TO_CLEAN:
            raise kopf.TemporaryError(
                f"cannot clean up in the broker yet: {report.failure.conditions[0].message}",
                delay=report.failure.retry_after or 15,
            )


async def drift_repair(body: kopf.Body, memo: kopf.Memo, **indexes: Any) -> None:
    """Timer: re-check the broker and compare it in full with the declared users and policies."""
    ctx: OperatorContext = memo["ctx"]
    meta = body["metadata"]
    # The same entry as the change handlers: a paused instance gets only its paused condition (this
    # timer used to overwrite it with a fresh Ready) and its broker is left alone.
    outcome = await run_reconciler(reconcile_mqtt_instance, body, ctx, indexes)
    if outcome is None:
        with contextlib.suppress(kopf.TemporaryError):
            await record(ctx, body, None)
        return
    report = await _sync(ctx, indexes, meta["namespace"], meta["name"])
    if report.failure is None and report.finished_at:
        outcome = Outcome(
            conditions=outcome.conditions,
            fields={**outcome.fields, "lastDriftRepairTime": report.finished_at},
            event=outcome.event,
        )
    with contextlib.suppress(kopf.TemporaryError):  # the timer runs again anyway
        await record(ctx, body, outcome)


async def forget_broker(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo["ctx"]
    await ctx.pool.forget((body["metadata"]["namespace"], body["metadata"]["name"]))


async def secret_changed(
    namespace: str | None, name: str, meta: kopf.Meta, memo: kopf.Memo, **indexes: Any
) -> None:
    """A Secret an AuthUser takes its password from changed: sync its broker (password rotation)."""
    ctx: OperatorContext = memo["ctx"]
    if namespace is None:
        return
    version = str(meta.get("resourceVersion", ""))
    instances = {
        entry.instance
        for entry in indexes["password_secrets"].get((namespace, name), [])
        if not entry.deleting
        and ctx.access.password_outdated(namespace, entry.instance, entry.username, version)
    }
    for instance in sorted(instances):
        await _sync(ctx, indexes, namespace, instance)


BROKER_LABELS = {"app.kubernetes.io/component": BROKER_COMPONENT, "app.kubernetes.io/managed-by": MANAGED_BY}


async def broker_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Watch events of the brokers' StatefulSets: an MqttInstance's `status.readyReplicas` follows its
    broker Pods at once rather than at the next drift repair."""
    meta = body.get("metadata") or {}
    name = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
    if type == "DELETED" or not name:
        return
    ctx: OperatorContext = memo["ctx"]
    owner = await get(ctx.client, resource(MQTT_INSTANCE), meta["namespace"], name)
    if owner is None or owner["metadata"].get("deletionTimestamp") or is_paused(owner):
        return
    ready = int((body.get("status") or {}).get("readyReplicas") or 0)
    await write_status(
        ctx.client, MQTT_INSTANCE, meta["namespace"], name, owner.get("status"), {"readyReplicas": ready}
    )


def register(drift_period: float) -> None:
    for kind, reconciler in (
        (MQTT_INSTANCE, reconcile_mqtt_instance),
        (AUTH_USER, reconcile_user),
        (ACL_POLICY, reconcile_policy),
    ):
        handler = reconcile_with(reconciler)
        for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
            decorator(GROUP, VERSION, kind.plural, id="reconcile")(handler)
    kopf.index(GROUP, VERSION, MQTT_INSTANCE.plural)(mqtt_instances)
    kopf.index(GROUP, VERSION, AUTH_USER.plural)(auth_users)
    kopf.index(GROUP, VERSION, AUTH_USER.plural)(password_secrets)
    kopf.index(GROUP, VERSION, ACL_POLICY.plural)(acl_policies)
    kopf.index("", "v1", "secrets")(secret_versions)
    for kind in (AUTH_USER, ACL_POLICY):
        kopf.on.delete(GROUP, VERSION, kind.plural, id="cleanup")(delete_access_object)
    kopf.timer(
        GROUP,
        VERSION,
        MQTT_INSTANCE.plural,
        interval=drift_period,
        initial_delay=drift_period,
        id="drift-repair",
    )(drift_repair)
    kopf.on.delete(GROUP, VERSION, MQTT_INSTANCE.plural, id="forget", optional=True)(forget_broker)
    kopf.on.event("", "v1", "secrets", id="password-rotation")(secret_changed)
    kopf.on.event("apps", "v1", "statefulsets", labels=BROKER_LABELS, id="broker-pods")(broker_changed)
