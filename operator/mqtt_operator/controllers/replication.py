"""ReplicationTask's own part of the integration reconcile (integration.py): one MQTT <-> RocketMQ
route. The RocketMQ credentials, its workers' shape, whether RocketMQ answers; figures as the cloud
service shows them (consumed, delivered, failed, latency, last sync time).

The steps ReplicationTask adds to the shared ones, in order:

- before the login: the RocketMQ credentials Secret, when named, exists with both keys
  (`SecretNotFound`, `SecretKeyNotFound`);
- the verdict: paused (no worker; the MQTT sessions, with the messages queued in them, and the
  consumer group's position stay for `state: running`; source and target may be edited now), or
  running once the RocketMQ proxy accepts a TCP connection (`RocketMQUnreachable` otherwise; the
  workers still run and retry, holding the messages, so the route recovers by itself).

The source and target can be edited only while paused: the CRD's transition rule refuses other edits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from lightkube import AsyncClient

from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.api.kinds import REPLICATION_TASK
from mqtt_operator.api.replication import ReplicationTaskSpec
from mqtt_operator.api.status import ReplicationTaskStatus
from mqtt_operator.bridge.config import BridgeConfig
from mqtt_operator.controllers.integration import (
    RETRY_SECONDS,
    Event,
    Integration,
    Step,
    WorkerShape,
    tcp_probe,
)
from mqtt_operator.controllers.outcome import Outcome, not_ready, ready
from mqtt_operator.kube.secrets import read_secret
from mqtt_operator.resources.replication_config import (
    replication_config,
    replication_pod,
    replication_rules,
    worker_count,
)
from mqtt_operator.resources.worker_config import BrokerTarget
from mqtt_operator.workers.scrape import REPLICATION_METRICS, parse_counters, parse_histogram, scrape_texts


async def credentials_problem(
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


class ReplicationTask(Integration[ReplicationTaskSpec, ReplicationTaskStatus]):
    kind = REPLICATION_TASK
    status_model = ReplicationTaskStatus
    shape = WorkerShape(worker_count, replication_rules, replication_pod)
    metrics = REPLICATION_METRICS

    @staticmethod
    def instance_ref(body: Mapping[str, Any]) -> str:
        """The MqttInstance of the task's MQTT side (source.mqtt or target.mqtt)."""
        spec = body.get("spec") or {}
        side = (spec.get("source") or {}).get("mqtt") or (spec.get("target") or {}).get("mqtt") or {}
        return str((side.get("instanceRef") or {}).get("name", ""))

    def parse_spec(self, raw: Mapping[str, Any]) -> ReplicationTaskSpec:
        return ReplicationTaskSpec.model_validate(raw)

    def new_status(self) -> ReplicationTaskStatus:
        spec = self.spec
        return ReplicationTaskStatus(
            display_name=spec.display_name or self.names.name,
            share_group=self.names.share_group if spec.to_rocketmq else None,
        )

    def config(self, broker: BrokerTarget, username: str | None) -> BridgeConfig:
        return replication_config(self.names, self.spec, broker, username)

    def checks_before_login(self) -> Sequence[Step]:
        return (self.check_credentials,)

    async def check_credentials(self) -> Outcome | None:
        return await credentials_problem(self.client, self.names.namespace, self.spec)

    async def verdict(self) -> Outcome:
        spec = self.spec
        if spec.state == "paused":
            return not_ready(
                "Paused",
                "state: paused: no worker runs; the MQTT sessions and the RocketMQ consumer group keep "
                "their place, so messages wait; source and target may be edited now",
                warn=False,
            )
        endpoint = spec.rocketmq.endpoints.split(";")[0]
        why = await tcp_probe(endpoint)
        if why is not None:
            return not_ready(
                "RocketMQUnreachable",
                f"RocketMQ proxy {endpoint}: {why}; the workers keep retrying and hold the messages "
                "meanwhile",
                retry_after=RETRY_SECONDS,
            )
        ordered = " (ordered: one worker)" if spec.ordered else ""
        direction = "MQTT -> RocketMQ" if spec.to_rocketmq else "RocketMQ -> MQTT"
        workers = f"{self.worker_count()} worker(s){ordered}, {self.status.ready_replicas} ready"
        return ready("Running", f"{direction}: {workers}")

    async def figures(self) -> tuple[dict[str, Any], Event | None]:
        """consumed / delivered / failed / deadLettered (summed since the task was created), the latency
        of the messages delivered since the last collection, lastSyncTime when messages were delivered
        meanwhile, replicas. Only fields that should be written."""
        texts = await scrape_texts(self.kind.kind, self.metrics_targets())
        status: Mapping[str, Any] = self.body.get("status") or {}
        shown = {name: status[name] for name in self.metrics if name in status} or None
        book = self.memory.book(self.kind.kind, self.metrics)
        totals = book.update(self.key, shown, {w: parse_counters(t, self.metrics) for w, t in texts.items()})
        fields = self.worker_fields()
        if not texts:
            return fields, None
        fields.update({name: value for name, value in totals.items() if status.get(name) != value})
        if shown is not None and totals["delivered"] > int(shown.get("delivered", 0)):
            fields["lastSyncTime"] = now_rfc3339()
        merged: dict[float, float] = {}
        for text in texts.values():
            for bound, count in parse_histogram(text).items():
                merged[bound] = merged.get(bound, 0.0) + count
        latency = self.memory.latency.update(self.key, merged, time.monotonic())
        if latency is not None:
            fields["latency"] = latency.to_status()
        return fields, None
