"""AuthUser and AclPolicy: the typed specs of broker accounts and their access rules."""

from __future__ import annotations

from typing import Literal

from mqtt_operator.api.base import LocalObjectRef, Model, SecretKeyRef

Action = Literal["publish", "subscribe", "receive"]


class AuthUserSpec(Model):
    instance_ref: LocalObjectRef
    username: str | None = None
    password_secret_ref: SecretKeyRef | None = None
    client_id: str | None = None
    description: str = ""

    def effective_username(self, object_name: str) -> str:
        """The broker username: spec.username, or the object's name when unset."""
        return self.username or object_name


class AclRule(Model):
    effect: Literal["allow", "deny"]
    actions: tuple[Action, ...]
    topics: tuple[str, ...]


class AclPolicySpec(Model):
    instance_ref: LocalObjectRef
    users: tuple[str, ...]
    priority: int = 0
    rules: tuple[AclRule, ...]
    description: str = ""
