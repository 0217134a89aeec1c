"""Typed `status` of each custom resource, with the CRD's camelCase names (the CRDs in crds/ are the truth;
tests/unit/test_api_models.py checks every status field has its model field).

A reconcile fills the fields it decides and hands them on as `fields()`: only the fields it set, so a
merge patch leaves the others alone; a field set to None is cleared (authorization turned off clears
`connectorUser`). `observedGeneration` and `conditions` are written by handlers/reconcile.py alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from mqtt_operator.api.conditions import Condition


class Part(BaseModel):
    """A status object or a part of one: camelCase names, no field the CRD does not have."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    def fields(self) -> dict[str, Any]:
        """The fields set on this object, camelCase, for the status merge patch."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Status(Part):
    observed_generation: int | None = None
    conditions: list[Condition] | None = None


class Endpoints(Part):
    mqtt: str | None = None
    mqtts: str | None = None
    websocket: str | None = None


class MqttInstanceStatus(Status):
    endpoints: Endpoints | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    admin_secret_name: str | None = None
    image: str | None = None
    drift_repair_period_seconds: int | None = None
    last_drift_repair_time: str | None = None


class AuthUserStatus(Status):
    username: str | None = None
    secret_name: str | None = None
    password_secret_resource_version: str | None = None
    last_password_sync_time: str | None = None


class AclPolicyStatus(Status):
    role_name: str | None = None
    granted_users: list[str] | None = None
    pending_users: list[str] | None = None
    acl_count: int | None = None


class WorkerStatus(Status):
    """What every integration that runs workers shows about its workers and its broker identity."""

    share_group: str | None = None
    connector_user: str | None = None  # the integration's own broker account (with authorization on)
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = None  # the workers' label selector, for the scale subresource


class ConnectorCounters(Part):
    received: int | None = None
    delivered: int | None = None
    failed: int | None = None
    dead_lettered: int | None = None
    skipped: int | None = None
    last_update_time: str | None = None


class KafkaConnectorStatus(WorkerStatus):
    consumer_group: str | None = None
    counters: ConnectorCounters | None = None


class TriggerCounters(Part):
    invoked: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    retried: int | None = None
    timed_out: int | None = None
    dead_lettered: int | None = None
    last_update_time: str | None = None


class FunctionTriggerStatus(WorkerStatus):
    function_url: str | None = None
    counters: TriggerCounters | None = None


class Latency(Part):
    p50_ms: float | None = None
    p99_ms: float | None = None
    window_seconds: int | None = None


class ReplicationTaskStatus(WorkerStatus):
    display_name: str | None = None
    consumed: int | None = None
    delivered: int | None = None
    failed: int | None = None
    dead_lettered: int | None = None
    latency: Latency | None = None
    last_sync_time: str | None = None
