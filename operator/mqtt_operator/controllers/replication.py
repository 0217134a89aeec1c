"""ReplicationTask: one MQTT <-> RocketMQ route. Its own broker identity, the RocketMQ credentials, the
workers' ConfigMap and StatefulSet; paused keeps every position; status as the cloud service shows it.

One reconcile, in this order (each step's failure is the outcome, so the earliest cause is reported):

1. the spec parses and the MqttInstance exists (`InvalidSpec`, `InstanceNotFound`, `NoPlainListener`);
2. the RocketMQ credentials Secret, when named, exists with both keys (`SecretNotFound`,
   `SecretKeyNotFound`);
3. with authorization on, the AuthUser and AclPolicy `<name>-replication` are applied and Ready
   (`Pending`, `Conflict`); with it off, the task's are removed;
4. the ConfigMap and the StatefulSet: no replica while paused, so the MQTT sessions (and the messages
   queued in them) and the consumer group's position stay for `state: running`;
5. running: the RocketMQ proxy accepts a TCP connection (`RocketMQUnreachable` otherwise; the workers
   still run and retry, holding the messages, so the route recovers by itself).

The source and target can be edited only while paused: the CRD's transition rule refuses other edits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient

from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.api.replication import ReplicationTaskSpec
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.latency import LatencyWindows
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready
from mqtt_operator.controllers.workers import (
    RETRY_SECONDS,
    apply_workers,
    broker_login,
    broker_target,
    delete_workers,
    instance_problem,
    live_workers,
    metrics_targets,
    parse_spec,
    scaling_down,
    tcp_probe,
    worker_fields,
)
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.identity import OwnerIdentity
from mqtt_operator.resources.replication_config import (
    replication_config,
    replication_pod,
    replication_rules,
    worker_count,
)
from mqtt_operator.resources.worker_access import worker_policy
from mqtt_operator.resources.worker_names import WorkerNames, replication_worker_names
from mqtt_operator.settings import OperatorSettings
from mqtt_operator.workers.scrape import REPLICATION_METRICS, parse_counters, parse_histogram, scrape_texts


def names_of(body: Mapping[str, Any]) -> WorkerNames:
    meta = body["metadata"]
    return replication_worker_names(meta["namespace"], meta["name"])


async def _credentials_problem(
    client: AsyncClient, namespace: str, spec: ReplicationTaskSpec
) -> Outcome | None:
    ref = spec.rocketmq.credentials_secret_ref
    if ref is None:
        return None
    side = "source" if spec.source.rocketmq is not None else "target"
    where = f"spec.{side}.rocketmq.credentialsSecretRef"
    secret = await read_secret(client, namespace, ref.name)
    if secret is None:
        return not_ready(
            "SecretNotFound",
            f"Secret {ref.name!r} ({where}) does not exist in namespace {namespace!r}: create it",
            retry_after=RETRY_SECONDS,
        )
    for key in (ref.access_key_key, ref.secret_key_key):
        if not secret.data.get(key):
            return not_ready(
                "SecretKeyNotFound",
                f"Secret {ref.name!r} ({where}) has no key {key!r}",
                retry_after=RETRY_SECONDS,
            )
    return None


async def reconcile_replication(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, instance: InstanceEntry | None
) -> Outcome:
    """`instance` is the MqttInstance of the task's MQTT side (from the index), None if there is none."""
    names = names_of(body)
    parsed = parse_spec(body, ReplicationTaskSpec, names)
    if isinstance(parsed, Outcome):
        return parsed
    spec = parsed
    identity = OwnerIdentity.from_body(body)
    namespace = identity.namespace
    authorization = bool(instance and instance.authorization)
    fields: dict[str, Any] = {
        "displayName": spec.display_name or names.name,
        "shareGroup": names.share_group if spec.to_rocketmq else None,
        "connectorUser": names.user if authorization else None,
    }
    problem = instance_problem(spec.instance_name, namespace, instance, fields)
    if problem is not None or instance is None:
        return problem or Outcome()
    try:
        missing = await _credentials_problem(client, namespace, spec)
        if missing is not None:
            return Outcome(missing.conditions, fields, missing.retry_after, missing.event)
        policy = worker_policy(identity, names, instance.name, replication_rules(spec))
        login = await broker_login(client, settings, identity, names, instance, policy, fields)
        if isinstance(login, Outcome):
            return login
        config = replication_config(names, spec, broker_target(instance), login.username)
        live_sts, waiting = await apply_workers(
            client, settings, identity, replication_pod(names, spec), config, login, instance.authorization
        )
    except ApiError as err:
        return not_ready(
            "ApplyFailed",
            f"the API server refused an owned object: {err.status.message}",
            retry_after=RETRY_SECONDS,
            **fields,
        )
    fields.update(worker_fields(live_sts))
    if waiting:
        return scaling_down(waiting, fields)
    if spec.state == "paused":
        return Outcome(
            conditions=(
                ConditionUpdate(
                    "Ready",
                    "False",
                    "Paused",
                    "state: paused: no worker runs; the MQTT sessions and the RocketMQ consumer group keep "
                    "their place, so messages wait; source and target may be edited now",
                ),
            ),
            fields=fields,
        )
    endpoint = spec.rocketmq.endpoints.split(";")[0]
    why = await tcp_probe(endpoint)
    if why is not None:
        return not_ready(
            "RocketMQUnreachable",
            f"RocketMQ proxy {endpoint}: {why}; the workers keep retrying and hold the messages meanwhile",
            retry_after=RETRY_SECONDS,
            **fields,
        )
    workers = worker_count(spec)
    ordered = " (ordered: one worker)" if spec.ordered else ""
    direction = "MQTT -> RocketMQ" if spec.to_rocketmq else "RocketMQ -> MQTT"
    return Outcome(
        conditions=(
            ConditionUpdate(
                "Ready",
                "True",
                "Running",
                f"{direction}: {workers} worker(s){ordered}, {fields['readyReplicas']} ready",
            ),
        ),
        fields=fields,
    )


async def delete_replication(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, instance: InstanceEntry | None
) -> None:
    names = names_of(body)
    parsed = parse_spec(body, ReplicationTaskSpec, names)
    replicas = None if isinstance(parsed, Outcome) else parsed.replicas
    await delete_workers(client, settings, OwnerIdentity.from_body(body), names, instance, replicas)


async def collect_figures(
    body: Mapping[str, Any],
    client: AsyncClient,
    settings: OperatorSettings,
    book: CounterBook,
    windows: LatencyWindows,
) -> dict[str, Any]:
    """consumed / delivered / failed / deadLettered (summed since the task was created), the latency of
    the messages delivered since the last collection, lastSyncTime when messages were delivered
    meanwhile, replicas. Only fields that should be written."""
    identity = OwnerIdentity.from_body(body)
    names = names_of(body)
    key = (names.namespace, names.name, identity.uid)
    texts = await scrape_texts(await metrics_targets(client, settings, identity))
    status: Mapping[str, Any] = body.get("status") or {}
    shown = {name: status[name] for name in REPLICATION_METRICS if name in status} or None
    totals = book.update(key, shown, {w: parse_counters(t, REPLICATION_METRICS) for w, t in texts.items()})
    fields: dict[str, Any] = dict(worker_fields(await live_workers(client, names)))
    if not texts:
        return fields
    fields.update({name: value for name, value in totals.items() if status.get(name) != value})
    if shown is not None and totals["delivered"] > int(shown.get("delivered", 0)):
        fields["lastSyncTime"] = now_rfc3339()
    merged: dict[float, float] = {}
    for text in texts.values():
        for bound, count in parse_histogram(text).items():
            merged[bound] = merged.get(bound, 0.0) + count
    latency = windows.update(key, merged, time.monotonic())
    if latency is not None:
        fields["latency"] = latency.to_status()
    return fields
