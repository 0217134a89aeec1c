"""KafkaConnector: its own broker identity, a connection check before any worker starts, then the
workers' ConfigMap and StatefulSet; on deletion, what it created goes; counters from its workers.

One reconcile, in this order (each step's failure is the outcome, so the earliest cause is reported):

1. the spec parses and the MqttInstance exists (`InvalidSpec`, `InstanceNotFound`, `NoPlainListener`);
2. the Kafka Secrets exist (`SecretNotFound`, `SecretKeyNotFound`);
3. with authorization on, the AuthUser and AclPolicy `<name>-connector` are applied and Ready, and
   the generated password is there (`Pending`; `Conflict` when same-named objects are not the
   connector's); with it off, the connector's are removed;
4. running: Kafka answers a metadata request for the connector's topics and the broker accepts the
   connector's login (`ConnectionValid`; `KafkaUnreachable`, `AuthenticationFailed`, `TopicMissing`,
   `BrokerUnreachable`). A failed check applies nothing: new workers do not start, and running ones
   keep the configuration they have (an outage of Kafka never stops them);
5. the ConfigMap and the StatefulSet (replicas 0 unless running);
6. stopped: once no worker runs, each worker's MQTT session is ended (the messages queued for it go).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap
from pydantic import ValidationError

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.broker.errors import BrokerAuthFailed, BrokerError
from mqtt_operator.broker.probe import MqttLogin, check_login, end_sessions
from mqtt_operator.controllers.counters import CounterBook
from mqtt_operator.controllers.entries import InstanceEntry
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready
from mqtt_operator.controllers.workers import (
    broker_login,
    client_ids,
    existing_login,
    remove_identity,
    scale_down_gate,
    scaling_down,
    worker_fields,
    workers_left,
)
from mqtt_operator.controllers.workers import (
    collect_counters as collect_worker_counters,
)
from mqtt_operator.kafka.probe import KafkaAccess, KafkaCheck, check_kafka
from mqtt_operator.kube.apply import apply, delete, get
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.bridge_config import (
    BrokerTarget,
    bridge_config_map,
    consumer_group,
)
from mqtt_operator.resources.bridge_statefulset import bridge_statefulset, worker_replicas
from mqtt_operator.resources.broker_config import config_hash
from mqtt_operator.resources.connector_names import (
    bridge_name,
    check_name,
    connector_user_name,
    share_group,
)
from mqtt_operator.resources.connector_policy import connector_policy
from mqtt_operator.resources.identity import ConnectorIdentity
from mqtt_operator.resources.worker_names import connector_worker_names
from mqtt_operator.settings import OperatorSettings
from mqtt_operator.workers.scrape import METRICS

log = logging.getLogger(__name__)
CHECK_RETRY_SECONDS = 30


def _parse(body: Mapping[str, Any]) -> KafkaConnectorSpec | Outcome:
    try:
        check_name(body["metadata"]["name"])
        return KafkaConnectorSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return not_ready("InvalidSpec", f"spec.{where}: {first['msg']}" if where else first["msg"])
    except ValueError as err:
        return not_ready("InvalidSpec", str(err))


def _identity_fields(
    identity: ConnectorIdentity, spec: KafkaConnectorSpec, authorization: bool
) -> dict[str, Any]:
    # None clears a field in the merge patch (e.g. connectorUser after authorization was turned off).
    return {
        "shareGroup": share_group(identity.namespace, identity.name) if spec.mqtt_to_kafka else None,
        "connectorUser": connector_user_name(identity.name) if authorization else None,
        "consumerGroup": consumer_group(identity, spec),
    }


class _MissingSecret(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def _kafka_access(
    client: AsyncClient, namespace: str, spec: KafkaConnectorSpec
) -> KafkaAccess | Outcome:
    """The Kafka connection with the credentials and TLS material its Secrets hold."""
    read: dict[str, dict[str, str] | None] = {}

    async def value(what: str, name: str, key: str) -> str:
        if name not in read:
            found = await read_secret(client, namespace, name)
            read[name] = found.data if found else None
        data = read[name]
        if data is None:
            raise _MissingSecret(
                not_ready(
                    "SecretNotFound",
                    f"Secret {name!r} ({what}) does not exist in namespace {namespace!r}: create it",
                    retry_after=CHECK_RETRY_SECONDS,
                )
            )
        if not data.get(key):
            raise _MissingSecret(
                not_ready(
                    "SecretKeyNotFound",
                    f"Secret {name!r} ({what}) has no key {key!r}",
                    retry_after=CHECK_RETRY_SECONDS,
                )
            )
        return data[key]

    tls, sasl = spec.kafka.tls, spec.kafka.sasl
    access = KafkaAccess(
        bootstrap_servers=spec.kafka.bootstrap_servers,
        security_protocol=spec.kafka.security_protocol,
        sasl_mechanism=sasl.mechanism if sasl else None,
    )
    try:
        if sasl is not None:
            ref, what = sasl.secret_ref, "spec.kafka.sasl.secretRef"
            access = replace(
                access,
                username=await value(what, ref.name, ref.username_key),
                password=await value(what, ref.name, ref.password_key),
            )
        if tls is not None and tls.ca_secret_ref is not None:
            ca = tls.ca_secret_ref
            access = replace(access, ca_pem=await value("spec.kafka.tls.caSecretRef", ca.name, ca.key))
        if tls is not None and tls.cert_secret_ref is not None:
            name, what = tls.cert_secret_ref.name, "spec.kafka.tls.certSecretRef"
            access = replace(
                access,
                cert_pem=await value(what, name, "tls.crt"),
                key_pem=await value(what, name, "tls.key"),
            )
    except _MissingSecret as missing:
        return missing.outcome
    return access


async def check_connection(
    spec: KafkaConnectorSpec, kafka: KafkaAccess, login: MqttLogin
) -> tuple[str | None, str]:
    """(None, what was checked) when Kafka and the broker both accept the connector; else (reason, why)."""

    async def broker() -> KafkaCheck:
        try:
            await check_login(login)
        except BrokerAuthFailed as err:
            return KafkaCheck("AuthenticationFailed", str(err))
        except BrokerError as err:
            return KafkaCheck("BrokerUnreachable", str(err))
        who = f"user {login.username!r}" if login.username else "an anonymous login"
        return KafkaCheck(None, f"the broker at {login.address} accepted {who}")

    kafka_result, broker_result = await asyncio.gather(check_kafka(kafka, spec.kafka_topics()), broker())
    for result in (kafka_result, broker_result):
        if not result.ok:
            return result.reason, result.message
    return None, f"{kafka_result.message}; {broker_result.message}"


def _stopped_already(body: Mapping[str, Any]) -> bool:
    """This generation was already stopped (its sessions ended): no need to do it again."""
    status = body.get("status") or {}
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
    )
    return ready.get("reason") == "Stopped" and status.get("observedGeneration") == body["metadata"].get(
        "generation"
    )


async def reconcile_connector(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, instance: InstanceEntry | None
) -> Outcome:
    """`instance` is the MqttInstance named by spec.instanceRef (from the index), None if there is none."""
    parsed = _parse(body)
    if isinstance(parsed, Outcome):
        return parsed
    spec = parsed
    identity = ConnectorIdentity.from_body(body)
    namespace, name = identity.namespace, identity.name
    names = connector_worker_names(namespace, name)
    fields: dict[str, Any] = _identity_fields(identity, spec, bool(instance and instance.authorization))
    if instance is None or instance.deleting:
        return not_ready(
            "InstanceNotFound",
            f"MqttInstance {spec.instance_ref.name!r} does not exist in namespace {namespace!r}: "
            "create it or correct spec.instanceRef.name",
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
    try:
        kafka = await _kafka_access(client, namespace, spec)
        if isinstance(kafka, Outcome):
            return Outcome(kafka.conditions, {**fields, **kafka.fields}, kafka.retry_after, kafka.event)
        login = await broker_login(
            client, settings, identity, names, instance, connector_policy(identity, spec), fields
        )
        if isinstance(login, Outcome):
            return login
        previous = await get(client, StatefulSet, namespace, bridge_name(name))
        if spec.state == "running":
            reason, message = await check_connection(spec, kafka, login)
            if reason is not None:
                return not_ready(
                    reason,
                    f"{message} (checked before workers start; running workers are left as they are)",
                    retry_after=CHECK_RETRY_SECONDS,
                    extra=(ConditionUpdate("ConnectionValid", "False", reason, message),),
                    **{**fields, **worker_fields(previous)},
                )
            connection = ConditionUpdate("ConnectionValid", "True", "Connected", message)
        else:
            connection = ConditionUpdate(
                "ConnectionValid", "Unknown", spec.state.capitalize(), "not checked while no worker runs"
            )
        broker = BrokerTarget(
            host=f"{instance.name}.{namespace}.svc",
            port=instance.mqtt_port,
            session_expiry_seconds=instance.session_expiry_seconds,
        )
        config_map = bridge_config_map(identity, spec, broker, login.username)
        await apply(client, config_map)
        desired_sts = bridge_statefulset(
            identity,
            spec,
            image=settings.worker_image,
            config_hash=config_hash(config_map["data"]),
            authorization=instance.authorization,
        )
        replicas_now, waiting = await scale_down_gate(
            client, identity, names, previous, desired_sts["spec"]["replicas"], login
        )
        desired_sts["spec"]["replicas"] = replicas_now
        live_sts = await apply(client, desired_sts)
    except ApiError as err:
        return not_ready(
            "ApplyFailed",
            f"the API server refused an owned object: {err.status.message}",
            retry_after=30,
            **fields,
        )
    fields.update(worker_fields(live_sts))
    if waiting:
        return scaling_down(waiting, fields)
    replicas = worker_replicas(spec)
    if spec.state == "paused":
        return Outcome(
            conditions=(
                ConditionUpdate(
                    "Ready",
                    "False",
                    "Paused",
                    "state: paused: no worker runs; the workers' MQTT sessions stay in the broker, so "
                    f"messages published meanwhile wait for them (up to the instance's sessions.expiry, "
                    f"{instance.session_expiry_seconds} s)",
                ),
                connection,
            ),
            fields=fields,
        )
    if spec.state == "stopped":
        if not _stopped_already(body):
            left = workers_left(live_sts)
            if left:
                return not_ready(
                    "Stopping",
                    f"waiting for {left} worker(s) to stop before their MQTT sessions are removed",
                    retry_after=5,
                    warn=False,
                    extra=(connection,),
                    **fields,
                )
            previous_replicas = int(((previous or {}).get("spec") or {}).get("replicas") or 0)
            try:
                await end_sessions(login, client_ids(names, spec.replicas, previous_replicas))
            except BrokerError as err:
                return not_ready(
                    "BrokerUnreachable",
                    f"cannot remove the workers' MQTT sessions: {err}",
                    retry_after=15,
                    extra=(connection,),
                    **fields,
                )
        return Outcome(
            conditions=(
                ConditionUpdate(
                    "Ready",
                    "False",
                    "Stopped",
                    "state: stopped: no worker runs and their MQTT sessions were removed, with the messages "
                    "queued for them; state: running starts afresh",
                ),
                connection,
            ),
            fields=fields,
        )
    ordered = " (ordered: one worker keeps per-key order)" if replicas < spec.replicas else ""
    return Outcome(
        conditions=(
            ConditionUpdate(
                "Ready",
                "True",
                "Running",
                f"{replicas} worker(s){ordered}, {fields['readyReplicas']} ready",
            ),
            connection,
        ),
        fields=fields,
    )


async def delete_connector(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, instance: InstanceEntry | None
) -> None:
    """Remove the workers, their config, the connector's broker identity, and (best effort) its sessions.

    In a cluster the ownerReferences would let the garbage collector remove the objects too; doing it
    here does not depend on one running. Sessions left behind would keep a share of nothing (the share
    group is the connector's alone) but hold the broker's memory until they expire.
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    identity = ConnectorIdentity.from_body(body)
    names = connector_worker_names(namespace, name)
    live_sts = await get(client, StatefulSet, namespace, bridge_name(name))
    await delete(client, StatefulSet, namespace, bridge_name(name))
    await delete(client, ConfigMap, namespace, bridge_name(name))
    login = await existing_login(client, settings, names, instance)
    parsed = _parse(body)
    if login is not None and not isinstance(parsed, Outcome):
        previous = int(((live_sts or {}).get("spec") or {}).get("replicas") or 0)
        try:
            await end_sessions(login, client_ids(names, parsed.replicas, previous))
        except BrokerError as err:
            log.warning("could not remove the workers' MQTT sessions: %s", err, extra={"connector": name})
    await remove_identity(client, identity, names)


async def collect_counters(
    body: Mapping[str, Any], client: AsyncClient, settings: OperatorSettings, book: CounterBook
) -> dict[str, Any]:
    """The status fields the workers decide: their counters (summed since the connector was created),
    and how many of them exist and are ready. Only fields that should be written are returned."""
    meta = body["metadata"]
    names = connector_worker_names(meta["namespace"], meta["name"])
    fields, _ = await collect_worker_counters(body, client, settings, book, names, METRICS)
    return fields
