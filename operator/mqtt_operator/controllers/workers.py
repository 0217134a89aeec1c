"""What every kind that runs bridge workers reconciles the same way: its own broker identity (AuthUser +
AclPolicy, or none without authorization), the login its workers use, the workers' replica counts, and
where their metrics are scraped. KafkaConnector and FunctionTrigger build on it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from lightkube import AsyncClient
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap
from pydantic import BaseModel, ValidationError

from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.api.kinds import ACL_POLICY, AUTH_USER
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.broker.errors import BrokerError
from mqtt_operator.broker.probe import MqttLogin, end_sessions
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import Outcome, not_ready
from mqtt_operator.kube.apply import apply, delete, get
from mqtt_operator.kube.client import resource
from mqtt_operator.kube.pods import running_pod_ips
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.bridge_config import METRICS_PORT, BrokerTarget, worker_config_map
from mqtt_operator.resources.bridge_statefulset import WorkerPod, worker_statefulset
from mqtt_operator.resources.broker_config import config_hash
from mqtt_operator.resources.connector_names import BRIDGE_COMPONENT
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.worker_access import worker_user
from mqtt_operator.resources.worker_names import WorkerNames
from mqtt_operator.settings import OperatorSettings
from mqtt_operator.workers.scrape import Counters, Series, scrape_all

log = logging.getLogger(__name__)
RETRY_SECONDS = 30
# Counters are written when they change, and at least this often while workers answer.
COUNTERS_REFRESH = timedelta(seconds=60)
PROBE_TIMEOUT = 3.0
SpecT = TypeVar("SpecT", bound=BaseModel)


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


def parse_spec(body: Mapping[str, Any], model: type[SpecT], names: WorkerNames) -> SpecT | Outcome:
    """The typed spec, or `InvalidSpec` naming the field (the CRD refuses most of this already)."""
    try:
        names.check()
        return model.model_validate(body.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return not_ready("InvalidSpec", f"spec.{where}: {first['msg']}" if where else first["msg"])
    except ValueError as err:
        return not_ready("InvalidSpec", str(err))


def instance_problem(
    name: str, namespace: str, instance: InstanceEntry | None, fields: Mapping[str, Any]
) -> Outcome | None:
    """Why the MqttInstance `name` cannot serve workers (`InstanceNotFound`, `NoPlainListener`), if so."""
    if instance is None or instance.deleting:
        return not_ready(
            "InstanceNotFound",
            f"MqttInstance {name!r} does not exist in namespace {namespace!r}: create it or correct its "
            "instanceRef.name",
            retry_after=10,
            **fields,
        )
    if instance.mqtt_port is None:
        return not_ready(
            "NoPlainListener",
            f"MqttInstance {instance.name!r} has no mqtt listener, which the workers use: "
            "add spec.listeners.mqtt",
            **fields,
        )
    return None


def broker_target(instance: InstanceEntry) -> BrokerTarget:
    """The instance's broker as the workers reach it from inside the cluster."""
    assert instance.mqtt_port is not None
    return BrokerTarget(
        host=f"{instance.name}.{instance.namespace}.svc",
        port=instance.mqtt_port,
        session_expiry_seconds=instance.session_expiry_seconds,
    )


async def apply_workers(
    client: AsyncClient,
    settings: OperatorSettings,
    identity: OwnerIdentity,
    pod: WorkerPod,
    config: BridgeConfig,
    login: MqttLogin,
    authorization: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Apply the workers' ConfigMap, then their StatefulSet (rolled when the config changes; shrunk only
    through scale_down_gate). Returns the live StatefulSet and the workers a scale-down waits for."""
    config_map = worker_config_map(identity, pod.names.workload, config)
    await apply(client, config_map)
    live = await live_workers(client, pod.names)
    replicas, waiting = await scale_down_gate(client, identity, pod.names, live, pod.replicas, login)
    live_sts = await apply(
        client,
        worker_statefulset(
            identity,
            dataclasses.replace(pod, replicas=replicas),
            image=settings.worker_image,
            config_hash=config_hash(config_map["data"]),
            authorization=authorization,
        ),
    )
    return live_sts, waiting


async def delete_workers(
    client: AsyncClient,
    settings: OperatorSettings,
    identity: OwnerIdentity,
    names: WorkerNames,
    instance: InstanceEntry | None,
    replicas: int | None,
) -> None:
    """Remove the workers, their config, the integration's broker identity and (best effort) its sessions
    with the messages still queued for them. `replicas` is the spec's, None when it did not parse."""
    live_sts = await get(client, StatefulSet, names.namespace, names.workload)
    await delete(client, StatefulSet, names.namespace, names.workload)
    await delete(client, ConfigMap, names.namespace, names.workload)
    login = await existing_login(client, settings, names, instance)
    if login is not None and replicas is not None:
        previous = int(((live_sts or {}).get("spec") or {}).get("replicas") or 0)
        try:
            await end_sessions(login, client_ids(names, replicas, previous))
        except BrokerError as err:
            log.warning("could not remove the workers' MQTT sessions: %s", err, extra={"owner": names.name})
    await remove_identity(client, identity, names)


def _stale(counters: Mapping[str, Any], now: datetime) -> bool:
    text = counters.get("lastUpdateTime")
    if not text:
        return True
    try:
        return now - datetime.fromisoformat(str(text)) >= COUNTERS_REFRESH
    except ValueError:
        return True


async def collect_counters(
    body: Mapping[str, Any],
    client: AsyncClient,
    settings: OperatorSettings,
    book: CounterBook,
    names: WorkerNames,
    metrics: Mapping[str, Series],
) -> tuple[dict[str, Any], Counters]:
    """The status fields the workers decide: `status.counters` (each of `metrics` summed over the workers
    since the object was created, written when a value changes and at least every COUNTERS_REFRESH while
    workers answer), replicas and ready replicas; only fields that should be written. Also the totals."""
    identity = OwnerIdentity.from_body(body)
    scraped = await scrape_all(await metrics_targets(client, settings, identity), metrics)
    status = body.get("status") or {}
    shown: Mapping[str, Any] | None = status.get("counters")
    totals = book.update((names.namespace, names.name, identity.uid), shown, scraped)
    fields: dict[str, Any] = dict(worker_fields(await live_workers(client, names)))
    if shown is None:
        fields["counters"] = {**totals, **({"lastUpdateTime": now_rfc3339()} if scraped else {})}
    elif scraped and (any(totals[k] != shown.get(k) for k in metrics) or _stale(shown, datetime.now(UTC))):
        fields["counters"] = {**totals, "lastUpdateTime": now_rfc3339()}
    return fields, totals


async def tcp_probe(url: str) -> str | None:
    """None when a TCP connection to the URL's (or `host:port`'s) host and port opens; else why not.
    Sends nothing, so it calls no function and produces no message."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except (OSError, TimeoutError) as err:
        return f"cannot connect to {host}:{port}: {err or type(err).__name__}"
    writer.close()
    return None


RETIRE_TIMEOUT = aiohttp.ClientTimeout(total=5)


async def _retire(session: aiohttp.ClientSession, ip: str) -> bool:
    """POST /retire to a worker: whether it has retired (False while retiring or not answering)."""
    try:
        async with session.post(f"http://{ip}:{METRICS_PORT}/retire") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError) as err:
        log.debug("worker did not answer /retire: %s", err, extra={"worker": ip})
        return False


async def scale_down_gate(
    client: AsyncClient,
    identity: OwnerIdentity,
    names: WorkerNames,
    live_sts: Mapping[str, Any] | None,
    desired: int,
    login: MqttLogin,
) -> tuple[int, list[str]]:
    """The replicas to apply now, and the workers a scale-down still waits for.

    Mosquitto keeps routing a share of a `$share` group to an offline persistent session, so a replica
    removed with its session left behind would swallow messages until the session expires. Before
    the StatefulSet shrinks, each surplus worker is asked to retire (POST /retire: unsubscribe, process
    what was queued for it, end its session); once all running ones have, the StatefulSet shrinks and
    the sessions of surplus workers that were not running are ended (losing only what they had queued,
    instead of everything routed to them until they expire). Scaling to 0 (paused, disabled) keeps every
    session on purpose: the messages wait there for the same workers to come back.
    """
    current = int(((live_sts or {}).get("spec") or {}).get("replicas") or 0)
    if desired == 0 or desired >= current:
        return desired, []
    pods = await running_pod_ips(client, identity.namespace, identity.selector_labels(BRIDGE_COMPONENT))
    surplus = [f"{names.workload}-{ordinal}" for ordinal in range(desired, current)]
    running = [pod for pod in surplus if pod in pods]
    async with aiohttp.ClientSession(timeout=RETIRE_TIMEOUT) as session:
        retired = await asyncio.gather(*(_retire(session, pods[pod]) for pod in running))
    waiting = [pod for pod, done in zip(running, retired, strict=True) if not done]
    if waiting:
        return current, waiting
    not_running = [pod for pod in surplus if pod not in pods]
    if not_running:
        log.warning(
            "ending the sessions of surplus workers that were not running: what was queued for them is lost",
            extra={"workers": not_running},
        )
    try:
        await end_sessions(login, [names.replica_client_id(o) for o in range(desired, current)])
    except BrokerError as err:
        log.warning("could not end the surplus workers' sessions: %s", err, extra={"owner": names.name})
    return desired, []


def scaling_down(waiting: list[str], fields: Mapping[str, Any]) -> Outcome:
    return not_ready(
        "ScalingDown",
        f"waiting for {', '.join(waiting)} to hand their share of the subscription back (POST /retire) "
        "before the workers are scaled down",
        retry_after=3,
        warn=False,
        **fields,
    )
