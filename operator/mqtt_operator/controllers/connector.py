"""KafkaConnector's own part of the integration reconcile (integration.py): its Kafka Secrets, a
connection check before any worker starts, its workers' shape, and its states.

The steps KafkaConnector adds to the shared ones, in order:

- before the login: the Kafka Secrets exist (`SecretNotFound`, `SecretKeyNotFound`);
- before the workers change, when running: Kafka answers a metadata request for the connector's
  topics and the broker accepts the connector's login (`ConnectionValid`; `KafkaUnreachable`,
  `AuthenticationFailed`, `TopicMissing`, `BrokerUnreachable`). A failed check applies nothing: new
  workers do not start, and running ones keep the configuration they have (an outage of Kafka never
  stops them);
- the verdict: running (Ready), paused (no worker; the sessions keep the messages), stopped (once no
  worker runs, each worker's MQTT session is ended with the messages queued for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from lightkube import AsyncClient

from mqtt_operator.api.connector import KafkaConnectorSpec
from mqtt_operator.api.kinds import KAFKA_CONNECTOR
from mqtt_operator.api.status import KafkaConnectorStatus
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.broker.errors import BrokerAuthFailed, BrokerError
from mqtt_operator.broker.probe import MqttLogin, check_login
from mqtt_operator.controllers.integration import Integration, Step, WorkerShape
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready, ready
from mqtt_operator.kafka.probe import KafkaAccess, KafkaCheck, check_kafka
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.connector_config import (
    connector_config,
    connector_pod,
    connector_rules,
    consumer_group,
    worker_count,
)
from mqtt_operator.resources.worker_config import BrokerTarget
from mqtt_operator.workers.scrape import METRICS

log = logging.getLogger(__name__)
CHECK_RETRY_SECONDS = 30


class _MissingSecret(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def kafka_access(
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


class KafkaConnector(Integration[KafkaConnectorSpec, KafkaConnectorStatus]):
    kind = KAFKA_CONNECTOR
    status_model = KafkaConnectorStatus
    shape = WorkerShape(worker_count, connector_rules, connector_pod)
    metrics = METRICS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kafka: KafkaAccess | None = None
        self.connection: ConditionUpdate | None = None

    def parse_spec(self, raw: Mapping[str, Any]) -> KafkaConnectorSpec:
        return KafkaConnectorSpec.model_validate(raw)

    def new_status(self) -> KafkaConnectorStatus:
        spec = self.spec
        return KafkaConnectorStatus(
            # None clears a field in the merge patch.
            share_group=self.names.share_group if spec.mqtt_to_kafka else None,
            consumer_group=consumer_group(self.names, spec),
        )

    def config(self, broker: BrokerTarget, username: str | None) -> BridgeConfig:
        return connector_config(self.names, self.spec, broker, username)

    def worker_rules(self) -> list[dict[str, Any]]:
        # deviceEvents also reads the broker plugin's client events, wherever the instance puts them.
        return connector_rules(self.spec, self.instance.client_events_topic)

    def checks_before_login(self) -> Sequence[Step]:
        return (self.read_kafka_secrets,)

    def checks_before_workers(self) -> Sequence[Step]:
        return (self.check_connection,)

    async def read_kafka_secrets(self) -> Outcome | None:
        found = await kafka_access(self.client, self.names.namespace, self.spec)
        if isinstance(found, Outcome):
            return found
        self.kafka = found
        return None

    async def check_connection(self) -> Outcome | None:
        if self.spec.state != "running":
            self.connection = ConditionUpdate(
                "ConnectionValid", "Unknown", self.spec.state.capitalize(), "not checked while no worker runs"
            )
            return None
        assert self.kafka is not None and self.login is not None
        reason, message = await check_connection(self.spec, self.kafka, self.login)
        if reason is not None:
            self.show_workers(self.previous())
            return not_ready(
                reason,
                f"{message} (checked before workers start; running workers are left as they are)",
                retry_after=CHECK_RETRY_SECONDS,
                extra=(ConditionUpdate("ConnectionValid", "False", reason, message),),
            )
        self.connection = ConditionUpdate("ConnectionValid", "True", "Connected", message)
        return None

    async def verdict(self) -> Outcome:
        assert self.connection is not None
        spec, connection = self.spec, self.connection
        if spec.state == "paused":
            return not_ready(
                "Paused",
                "state: paused: no worker runs; the workers' MQTT sessions stay in the broker, so messages "
                "published meanwhile wait for them (up to the instance's sessions.expiry, "
                f"{self.instance.session_expiry_seconds} s)",
                warn=False,
                extra=(connection,),
            )
        if spec.state == "stopped":
            stopping = await self.end_all_sessions()
            if stopping is not None:
                return replace(stopping, conditions=(*stopping.conditions, connection))
            return not_ready(
                "Stopped",
                "state: stopped: no worker runs and their MQTT sessions were removed, with the messages "
                "queued for them; state: running starts afresh",
                warn=False,
                extra=(connection,),
            )
        workers = self.worker_count()
        ordered = " (ordered: one worker keeps per-key order)" if workers < spec.replicas else ""
        return ready(
            "Running",
            f"{workers} worker(s){ordered}, {self.status.ready_replicas} ready",
            extra=(connection,),
        )
