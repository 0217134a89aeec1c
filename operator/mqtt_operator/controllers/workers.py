"""What every kind that runs bridge workers reconciles the same way: its own broker identity (AuthUser +
AclPolicy, or none without authorization), the login its workers use, the workers' replica counts, and
where their metrics are scraped. KafkaConnector and FunctionTrigger build on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.apps_v1 import StatefulSet

from mqtt_operator.api.kinds import ACL_POLICY, AUTH_USER
from mqtt_operator.broker.probe import MqttLogin
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import Outcome, not_ready
from mqtt_operator.kube.apply import apply, delete, get
from mqtt_operator.kube.client import resource
from mqtt_operator.kube.pods import running_pod_ips
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.bridge_config import METRICS_PORT
from mqtt_operator.resources.connector_names import BRIDGE_COMPONENT
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_access import worker_user
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.settings import OperatorSettings

RETRY_SECONDS = 30


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or ())


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return None  # not reconciled since the last change
    return next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)


def worker_fields(live_sts: Mapping[str, Any] | None) -> dict[str, int]:
    status = (live_sts or {}).get("status") or {}
    return {
        "replicas": int(status.get("replicas") or 0),
        "readyReplicas": int(status.get("readyReplicas") or 0),
    }


def workers_left(live_sts: Mapping[str, Any]) -> int:
    """Worker Pods that may still hold their sessions (0 when the controller saw the scale-down done)."""
    status = live_sts.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed < live_sts["metadata"].get("generation", 0):
        return max(1, int(status.get("replicas") or 0))  # the scale-down was not seen yet
    return int(status.get("replicas") or 0)


def client_ids(names: WorkerNames, replicas: int, previous_replicas: int) -> list[str]:
    """Every client id a worker of this integration may have used."""
    return [names.replica_client_id(i) for i in range(max(replicas, previous_replicas, 1))]


async def foreign_identity(client: AsyncClient, identity: OwnerIdentity, names: WorkerNames) -> str | None:
    """The AuthUser or AclPolicy named for the workers that exists but is not this integration's, if any:
    applying over it would take it over, and deleting the integration would delete it."""
    for kind in (AUTH_USER, ACL_POLICY):
        live = await get(client, resource(kind), identity.namespace, names.user)
        if live is not None and not owned_by(live, identity.uid):
            return f"{kind.kind} {names.user}"
    return None


async def remove_identity(client: AsyncClient, identity: OwnerIdentity, names: WorkerNames) -> None:
    """Delete the integration's AuthUser and AclPolicy; ones it does not own are left alone."""
    for kind in (ACL_POLICY, AUTH_USER):
        live = await get(client, resource(kind), identity.namespace, names.user)
        if live is not None and owned_by(live, identity.uid):
            await delete(client, resource(kind), identity.namespace, names.user)


def broker_address(settings: OperatorSettings, instance: InstanceEntry) -> tuple[str, int]:
    """Where the operator reaches the instance's mqtt listener (the workers use its Service)."""
    assert instance.mqtt_port is not None
    ns = instance.namespace
    return settings.broker_address(ns, instance.name, f"{instance.name}.{ns}.svc", instance.mqtt_port)


async def broker_login(
    client: AsyncClient,
    settings: OperatorSettings,
    identity: OwnerIdentity,
    names: WorkerNames,
    instance: InstanceEntry,
    policy: dict[str, Any],
    fields: Mapping[str, Any],
) -> MqttLogin | Outcome:
    """The login the workers use: the integration's own account (its AuthUser and `policy` applied here),
    or anonymous when the instance enforces no authorization (then its own objects are removed)."""
    host, port = broker_address(settings, instance)
    if not instance.authorization:
        await remove_identity(client, identity, names)
        return MqttLogin(host, port, None, None)
    foreign = await foreign_identity(client, identity, names)
    if foreign is not None:
        return not_ready(
            "Conflict",
            f"{foreign} exists and does not belong to this {identity.kind}; its workers need that name "
            "for their own broker account: rename or delete the existing object",
            retry_after=RETRY_SECONDS,
            **fields,
        )
    user = await apply(client, worker_user(identity, names, instance.name))
    applied_policy = await apply(client, policy)
    waiting = []
    for obj in (user, applied_policy):
        cond = ready_condition(obj)
        if cond is None or cond.get("status") != "True":
            why = f" ({cond.get('reason')}: {cond.get('message')})" if cond else ""
            waiting.append(f"{obj['kind']} {obj['metadata']['name']}{why}")
    if waiting:
        return not_ready(
            "Pending",
            f"waiting for the workers' own broker identity to be Ready: {'; '.join(waiting)}",
            retry_after=5,
            warn=False,
            **fields,
        )
    secret = await read_secret(client, identity.namespace, names.credentials)
    password = secret.data.get("password") if secret else None
    if not password:
        return not_ready(
            "Pending",
            f"waiting for the generated password in Secret {names.credentials!r}",
            retry_after=5,
            warn=False,
            **fields,
        )
    return MqttLogin(host, port, names.user, password)


async def existing_login(
    client: AsyncClient, settings: OperatorSettings, names: WorkerNames, instance: InstanceEntry | None
) -> MqttLogin | None:
    """The workers' login as it stands, without applying anything (for cleanup); None if there is none."""
    if instance is None or instance.deleting or instance.mqtt_port is None:
        return None
    host, port = broker_address(settings, instance)
    if not instance.authorization:
        return MqttLogin(host, port, None, None)
    secret = await read_secret(client, names.namespace, names.credentials)
    if secret is None or not secret.data.get("password"):
        return None
    return MqttLogin(host, port, names.user, secret.data["password"])


async def metrics_targets(
    client: AsyncClient, settings: OperatorSettings, identity: OwnerIdentity
) -> dict[str, str]:
    """worker name -> host:port of its /metrics: the running worker Pods, or the operator's override."""
    override = settings.worker_metrics_addresses.get(f"{identity.namespace}/{identity.name}")
    if override is not None:
        return {address: address for address in override}
    selector = identity.selector_labels(BRIDGE_COMPONENT)
    pods = await running_pod_ips(client, identity.namespace, selector)
    return {pod: f"{ip}:{METRICS_PORT}" for pod, ip in pods.items()}


async def live_workers(client: AsyncClient, names: WorkerNames) -> dict[str, Any] | None:
    return await get(client, StatefulSet, names.namespace, names.workload)
