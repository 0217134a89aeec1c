"""The few facts the access sync needs about each object, taken from kopf's indexes. Pure.

A body is parsed once into its typed spec here; an object whose spec cannot be parsed still gets
an entry (with `error`), so its handler can report why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mqtt_operator.api.access import AclPolicySpec, AuthUserSpec
from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.admin_secret import admin_secret_name
from mqtt_operator.resources.credentials_secret import generated_secret_name
from mqtt_operator.resources.services import endpoints


@dataclass(frozen=True)
class InstanceEntry:
    namespace: str
    name: str
    authorization: bool
    mqtt_port: int | None
    endpoint: str
    admin_secret: str
    deleting: bool
    # sessions.expiry: how long the broker keeps an offline client's session and its messages.
    session_expiry_seconds: int = 7200
    # Where the broker plugin publishes client events (spec.clientEvents), None when it publishes none.
    client_events_topic: str | None = None


@dataclass(frozen=True)
class UserEntry:
    namespace: str
    name: str
    uid: str
    instance: str
    spec: AuthUserSpec | None
    deleting: bool
    synced_secret_version: str | None
    error: str | None = None
    # metadata.creationTimestamp (RFC 3339 sorts as text): of two AuthUsers claiming one username, the
    # older keeps it.
    created: str = ""

    @property
    def username(self) -> str:
        return self.spec.effective_username(self.name) if self.spec else self.name

    @property
    def secret_name(self) -> str:
        if self.spec and self.spec.password_secret_ref:
            return self.spec.password_secret_ref.name
        return generated_secret_name(self.name)

    @property
    def secret_key(self) -> str:
        if self.spec and self.spec.password_secret_ref:
            return self.spec.password_secret_ref.key
        return "password"

    @property
    def generates_password(self) -> bool:
        return self.spec is not None and self.spec.password_secret_ref is None


@dataclass(frozen=True)
class PolicyEntry:
    namespace: str
    name: str
    instance: str
    spec: AclPolicySpec | None
    deleting: bool
    error: str | None = None


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = body["metadata"]
    return meta


def _error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"spec.{where}: {first['msg']}"


def instance_entry(body: Mapping[str, Any]) -> InstanceEntry:
    meta = _meta(body)
    spec = MqttInstanceSpec.model_validate(body.get("spec") or {})
    mqtt = spec.listeners.mqtt
    urls = endpoints(meta["name"], meta["namespace"], spec.listeners)
    return InstanceEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        authorization=spec.authorization.enabled,
        mqtt_port=mqtt.port if mqtt else None,
        endpoint=urls.get("mqtt") or next(iter(urls.values()), ""),
        admin_secret=admin_secret_name(meta["name"]),
        deleting=bool(meta.get("deletionTimestamp")),
        session_expiry_seconds=spec.sessions.expiry_seconds,
        client_events_topic=spec.client_events.topic if spec.client_events.enabled else None,
    )


def user_entry(body: Mapping[str, Any]) -> UserEntry:
    meta = _meta(body)
    raw = body.get("spec") or {}
    spec, error = None, None
    try:
        spec = AuthUserSpec.model_validate(raw)
    except ValidationError as err:
        error = _error(err)
    status = body.get("status") or {}
    return UserEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        instance=(raw.get("instanceRef") or {}).get("name", ""),
        spec=spec,
        deleting=bool(meta.get("deletionTimestamp")),
        synced_secret_version=status.get("passwordSecretResourceVersion"),
        error=error,
        created=str(meta.get("creationTimestamp") or ""),
    )


def policy_entry(body: Mapping[str, Any]) -> PolicyEntry:
    meta = _meta(body)
    raw = body.get("spec") or {}
    spec, error = None, None
    try:
        spec = AclPolicySpec.model_validate(raw)
    except ValidationError as err:
        error = _error(err)
    return PolicyEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        instance=(raw.get("instanceRef") or {}).get("name", ""),
        spec=spec,
        deleting=bool(meta.get("deletionTimestamp")),
        error=error,
    )
