"""Keeping one broker's accounts and roles equal to its AuthUsers and AclPolicies.

Every trigger (an AuthUser or AclPolicy changed or deleted, a referenced Secret rotated, the
periodic drift check) runs the same full sync of the instance, coalesced: read the broker's
clients and roles, compute the desired ones from the objects, apply the fewest commands
(broker.plan), and report an outcome per object. One path for create, update, delete, rotation
and drift repair means a broker that restarted empty is refilled by the same code that filled it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lightkube import AsyncClient

from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.broker import acl
from mqtt_operator.broker.errors import BrokerError
from mqtt_operator.broker.model import DENY_BY_DEFAULT, BrokerClient, DesiredClient, Ownership
from mqtt_operator.broker.plan import plan
from mqtt_operator.broker.pool import BrokerAddress, BrokerPool
from mqtt_operator.controllers.coalesce import Coalescer
from mqtt_operator.controllers.credentials import ensure_generated_secret
from mqtt_operator.controllers.entries import InstanceEntry, PolicyEntry, UserEntry
from mqtt_operator.controllers.outcome import ConditionUpdate, Outcome, not_ready
from mqtt_operator.kube.secrets import SecretData, read_secret
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from mqtt_operator.settings import OperatorSettings

log = logging.getLogger(__name__)
OWNERSHIP = Ownership(protected_clients=frozenset({ADMIN_USERNAME, "admin"}))
SECRET_READS_IN_PARALLEL = 32


@dataclass(frozen=True)
class AccessSnapshot:
    """What the indexes hold for one instance when a sync starts."""

    instance: InstanceEntry | None
    users: tuple[UserEntry, ...]
    policies: tuple[PolicyEntry, ...]
    secret_versions: Mapping[str, str]  # Secret name -> resourceVersion, in the instance's namespace


@dataclass
class SyncReport:
    users: dict[str, Outcome] = field(default_factory=dict)
    policies: dict[str, Outcome] = field(default_factory=dict)
    commands: int = 0
    # Set when the whole instance failed (not found, unreachable); then it is every object's outcome.
    failure: Outcome | None = None
    finished_at: str = ""

    def user(self, name: str) -> Outcome | None:
        return self.failure or self.users.get(name)

    def policy(self, name: str) -> Outcome | None:
        return self.failure or self.policies.get(name)


@dataclass
class _UserPlan:
    entry: UserEntry
    password: str | None = None  # None: keep what the broker has
    version: str | None = None
    outcome: Outcome | None = None


class AccessSync:
    def __init__(self, client: AsyncClient, pool: BrokerPool, settings: OperatorSettings) -> None:
        self.client = client
        self.pool = pool
        self.settings = settings
        self._coalescer: Coalescer[SyncReport] = Coalescer()
        # (namespace, instance, username) -> the Secret version whose password the broker holds.
        self._password_versions: dict[tuple[str, str, str], str] = {}

    async def sync(self, namespace: str, instance: str, snapshot: Callable[[], AccessSnapshot]) -> SyncReport:
        """A full sync of the instance that started after this call (shared with concurrent callers)."""
        return await self._coalescer.run(
            (namespace, instance), lambda: self._sync(namespace, instance, snapshot())
        )

    def password_outdated(self, namespace: str, instance: str, username: str, secret_version: str) -> bool:
        """Whether the broker may hold another Secret version's password than `secret_version`."""
        return self._password_versions.get((namespace, instance, username)) != secret_version

    async def _sync(self, namespace: str, instance_name: str, snap: AccessSnapshot) -> SyncReport:
        inst = snap.instance
        if inst is None or inst.deleting:
            return SyncReport(
                failure=not_ready(
                    "InstanceNotFound",
                    f"MqttInstance {instance_name!r} does not exist in namespace {namespace!r}: "
                    "create it or correct spec.instanceRef.name",
                    retry_after=10,
                )
            )
        if not inst.authorization:
            return SyncReport(
                failure=not_ready(
                    "AuthorizationDisabled",
                    f"MqttInstance {instance_name!r} has spec.authorization.enabled=false: "
                    "any username and password connect and nothing is enforced",
                    warn=False,
                )
            )
        if inst.mqtt_port is None:
            return SyncReport(
                failure=not_ready(
                    "NoPlainListener",
                    f"MqttInstance {instance_name!r} has no mqtt listener, which the operator "
                    "uses to manage accounts: add spec.listeners.mqtt",
                )
            )
        admin = await read_secret(self.client, namespace, inst.admin_secret)
        if admin is None or not admin.data.get("password"):
            return SyncReport(
                failure=not_ready(
                    "InstanceNotReady",
                    f"the admin Secret {inst.admin_secret!r} of MqttInstance {instance_name!r} "
                    "does not exist yet",
                    retry_after=10,
                    warn=False,
                )
            )
        host, port = self.settings.broker_address(
            namespace, instance_name, f"{instance_name}.{namespace}.svc", inst.mqtt_port
        )
        address = BrokerAddress(
            host, port, admin.data.get("username", ADMIN_USERNAME), admin.data["password"]
        )
        try:
            broker = await self.pool.client((namespace, instance_name), address)
            actual_clients = await broker.list_clients()
            actual_roles = await broker.list_roles()
            actual_defaults = await broker.get_default_acl_access()
        except BrokerError as err:
            return SyncReport(failure=not_ready("BrokerUnreachable", str(err), retry_after=15))

        started = time.monotonic()
        report = SyncReport()
        live_users = [u for u in snap.users if not u.deleting and u.spec is not None]
        subjects = {
            u.username: acl.Subject(u.username, u.spec.client_id if u.spec else None) for u in live_users
        }
        policy_results = self._policies(snap.policies, subjects, report)
        grants = acl.merge_grants(policy_results)
        have = {c.username: c for c in actual_clients}
        user_plans = await self._user_plans(namespace, instance_name, snap, have, report)
        secrets_done = time.monotonic()

        desired_clients, password_changes = [], set()
        for up in user_plans:
            username = up.entry.username
            if up.password is None and username not in have:
                continue  # cannot be created without a password; its outcome says why
            desired_clients.append(
                DesiredClient(
                    username=username,
                    password=up.password or "",
                    roles=grants.get(username, ()),
                    description=up.entry.spec.description if up.entry.spec else "",
                    clientid=up.entry.spec.client_id if up.entry.spec else None,
                    owner=f"{namespace}/{up.entry.name}",
                )
            )
            if up.password is not None and username in have:
                password_changes.add(username)
        desired_roles = [role for result in policy_results for role in result.roles]
        result = plan(
            desired_clients,
            desired_roles,
            actual_clients,
            actual_roles,
            ownership=OWNERSHIP,
            password_changes=password_changes,
            prune=True,
            desired_defaults=DENY_BY_DEFAULT,
            actual_defaults=actual_defaults,
        )
        failed: dict[str, str] = {}
        broker_started = time.monotonic()
        if result.commands:
            try:
                results = await broker.execute(result.commands)
            except BrokerError as err:
                return SyncReport(failure=not_ready("BrokerUnreachable", str(err), retry_after=15))
            for res in results:
                if not res.ok:
                    failed.setdefault(res.command.subject, str(res.error))
        report.commands = len(result.commands)
        conflicts = {c.name: c.message for c in result.conflicts}
        now = now_rfc3339()
        for up in user_plans:
            name, username = up.entry.name, up.entry.username
            if up.outcome is not None:
                report.users[name] = up.outcome
            elif username in conflicts:
                report.users[name] = not_ready("Conflict", conflicts[username])
            elif username in failed:
                report.users[name] = not_ready(
                    "BrokerRejected",
                    f"the broker refused account {username!r}: {failed[username]}",
                    retry_after=30,
                )
            else:
                if up.password is not None and up.version is not None:
                    self._password_versions[(namespace, instance_name, username)] = up.version
                fields: dict[str, object] = {"username": username, "secretName": up.entry.secret_name}
                if up.password is not None:
                    fields.update(passwordSecretResourceVersion=up.version, lastPasswordSyncTime=now)
                report.users[name] = Outcome(
                    conditions=(
                        ConditionUpdate("Ready", "True", "Synced", f"account {username!r} is in the broker"),
                        ConditionUpdate(
                            "PasswordSynced",
                            "True",
                            "PasswordSet",
                            f"the broker holds the password of Secret {up.entry.secret_name!r}",
                        ),
                    ),
                    fields=fields,
                )
        for pol in snap.policies:
            if pol.name in report.policies:
                continue
            role_failures = [
                f"{s}: {m}"
                for s, m in failed.items()
                if s.startswith(OWNERSHIP.role_prefix)
                and acl.is_policy_role(s, _policy_key(pol), OWNERSHIP.role_prefix)
            ]
            if role_failures:
                report.policies[pol.name] = not_ready(
                    "BrokerRejected", "; ".join(role_failures), retry_after=30
                )
        report.finished_at = now
        if result.commands:
            log.info(
                "broker synced",
                extra={
                    "instance": f"{namespace}/{instance_name}",
                    "commands": len(result.commands),
                    "failed": len(failed),
                    "secrets_s": round(secrets_done - started, 3),
                    "broker_s": round(time.monotonic() - broker_started, 3),
                },
            )
        return report

    def _policies(
        self, policies: tuple[PolicyEntry, ...], subjects: Mapping[str, acl.Subject], report: SyncReport
    ) -> list[acl.PolicyRoles]:
        results = []
        for pol in policies:
            if pol.deleting:
                continue
            if pol.spec is None:
                report.policies[pol.name] = not_ready("InvalidSpec", pol.error or "the spec cannot be read")
                continue
            named = [subjects[u] for u in pol.spec.users if u in subjects]
            pending = sorted(u for u in pol.spec.users if u not in subjects)
            rules = [acl.Rule(r.effect, r.actions, r.topics) for r in pol.spec.rules]
            try:
                roles = acl.policy_roles(
                    _policy_key(pol),
                    rules,
                    pol.spec.priority,
                    named,
                    role_prefix=OWNERSHIP.role_prefix,
                    description=pol.spec.description,
                )
            except acl.AclPolicyError as err:
                report.policies[pol.name] = not_ready("InvalidPolicy", str(err))
                continue
            results.append(roles)
            message = (
                f"granted to {len(named)} user(s)"
                + (f"; waiting for AuthUsers {pending}" if pending else "")
                + "".join(f"; {w}" for w in roles.warnings)
            )
            report.policies[pol.name] = Outcome(
                conditions=(ConditionUpdate("Ready", "True", "Applied", message),),
                fields={
                    "roleName": roles.role_name,
                    "grantedUsers": sorted(s.username for s in named),
                    "pendingUsers": pending,
                    "aclCount": roles.acl_count,
                },
            )
        return results

    async def _user_plans(
        self,
        namespace: str,
        instance: str,
        snap: AccessSnapshot,
        have: Mapping[str, BrokerClient],
        report: SyncReport,
    ) -> list[_UserPlan]:
        gate = asyncio.Semaphore(SECRET_READS_IN_PARALLEL)

        async def one(entry: UserEntry) -> _UserPlan:
            up = _UserPlan(entry)
            if entry.spec is None:
                up.outcome = not_ready("InvalidSpec", entry.error or "the spec cannot be read")
                return up
            known = (
                self._password_versions.get((namespace, instance, entry.username))
                or entry.synced_secret_version
            )
            current = snap.secret_versions.get(entry.secret_name)
            if entry.username in have and current is not None and current == known:
                return up  # the broker already holds this Secret version's password
            secret: SecretData | None
            async with gate:
                if entry.generates_password:
                    secret = await ensure_generated_secret(
                        self.client, entry, snap.instance, current is not None
                    )
                else:
                    secret = await read_secret(self.client, namespace, entry.secret_name)
            if secret is None:
                up.outcome = not_ready(
                    "SecretNotFound",
                    f"Secret {entry.secret_name!r} (spec.passwordSecretRef) does not exist "
                    f"in namespace {namespace!r}",
                    retry_after=30,
                    extra=(ConditionUpdate("PasswordSynced", "False", "SecretNotFound", ""),),
                )
                return up
            password = secret.data.get(entry.secret_key)
            if not password:
                up.outcome = not_ready(
                    "SecretKeyNotFound",
                    f"Secret {entry.secret_name!r} has no key {entry.secret_key!r} "
                    "(spec.passwordSecretRef.key)",
                    retry_after=30,
                    extra=(ConditionUpdate("PasswordSynced", "False", "SecretKeyNotFound", ""),),
                )
                return up
            if entry.username in have and secret.resource_version == known:
                return up
            up.password, up.version = password, secret.resource_version
            return up

        live = [u for u in snap.users if not u.deleting]
        return list(await asyncio.gather(*(one(u) for u in live)))


def _policy_key(pol: PolicyEntry) -> str:
    return f"{pol.namespace}.{pol.name}"
