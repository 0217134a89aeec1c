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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lightkube import AsyncClient

from mqtt_operator.api.conditions import now_rfc3339
from mqtt_operator.api.status import AclPolicyStatus, AuthUserStatus
from mqtt_operator.broker import acl
from mqtt_operator.broker.client import DynsecClient
from mqtt_operator.broker.errors import BrokerError
from mqtt_operator.broker.model import (
    DENY_BY_DEFAULT,
    BrokerClient,
    BrokerRole,
    DefaultAclAccess,
    DesiredClient,
    Ownership,
)
from mqtt_operator.broker.plan import Plan, plan
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


def username_claims(users: Iterable[UserEntry]) -> dict[str, str]:
    """Pure: AuthUser name -> why it cannot have its username: the operator's own admin account's, or
    one an older AuthUser of the same broker already has (creation time, then name, decides)."""
    refused: dict[str, str] = {}
    holder: dict[str, UserEntry] = {}
    live = sorted(
        (u for u in users if not u.deleting and u.spec is not None), key=lambda u: (u.created, u.name)
    )
    for entry in live:
        username = entry.username
        if username in OWNERSHIP.protected_clients:
            refused[entry.name] = (
                f"username {username!r} is reserved for the broker's admin account: set another spec.username"
            )
        elif username in holder:
            refused[entry.name] = (
                f"username {username!r} is already AuthUser {holder[username].name!r}'s in this broker: "
                "set another spec.username"
            )
        else:
            holder[username] = entry
    return refused


@dataclass(frozen=True)
class _PasswordSet:
    """A password this process set in a broker: the Secret's version it came from, and when."""

    version: str
    at: str


@dataclass
class _UserPlan:
    entry: UserEntry
    password: str | None = None  # None: keep what the broker has
    version: str | None = None
    # The broker already holds the password, and this process set it: the status says so too, whichever
    # sync's report the AuthUser's handler gets (else the next operator would set it again).
    held: _PasswordSet | None = None
    outcome: Outcome | None = None
    # Another AuthUser (or the admin account) has this username: never desired in the broker.
    username_refused: bool = False


@dataclass
class _Run:
    """One sync's context: what the steps learn, in order."""

    namespace: str
    instance_name: str
    snap: AccessSnapshot
    report: SyncReport = field(default_factory=SyncReport)
    broker: DynsecClient | None = None
    actual_clients: list[BrokerClient] = field(default_factory=list)
    actual_roles: list[BrokerRole] = field(default_factory=list)
    actual_defaults: DefaultAclAccess | None = None
    user_plans: list[_UserPlan] = field(default_factory=list)
    plan: Plan = field(default_factory=lambda: Plan(commands=()))
    refused: dict[str, str] = field(default_factory=dict)  # subject -> why the broker refused it
    secrets_seconds: float = 0.0

    @property
    def instance(self) -> InstanceEntry:
        assert self.snap.instance is not None
        return self.snap.instance


def _failed(reason: str, message: str, *, retry_after: float | None = None, warn: bool = True) -> SyncReport:
    """The whole instance failed: the outcome of every object in it."""
    return SyncReport(failure=not_ready(reason, message, retry_after=retry_after, warn=warn))


def _synced(up: _UserPlan, now: str) -> Outcome:
    status = AuthUserStatus(username=up.entry.username, secret_name=up.entry.secret_name)
    if up.password is not None:
        status.password_secret_resource_version = up.version
        status.last_password_sync_time = now
    elif up.held is not None:
        status.password_secret_resource_version = up.held.version
        status.last_password_sync_time = up.held.at
    return Outcome(
        conditions=(
            ConditionUpdate("Ready", "True", "Synced", f"account {up.entry.username!r} is in the broker"),
            ConditionUpdate(
                "PasswordSynced",
                "True",
                "PasswordSet",
                f"the broker holds the password of Secret {up.entry.secret_name!r}",
            ),
        ),
        fields=status.fields(),
    )


class AccessSync:
    def __init__(self, client: AsyncClient, pool: BrokerPool, settings: OperatorSettings) -> None:
        self.client = client
        self.pool = pool
        self.settings = settings
        self._coalescer: Coalescer[SyncReport] = Coalescer()
        # (namespace, instance, username) -> the Secret version whose password the broker holds.
        self._passwords: dict[tuple[str, str, str], _PasswordSet] = {}

    async def sync(self, namespace: str, instance: str, snapshot: Callable[[], AccessSnapshot]) -> SyncReport:
        """A full sync of the instance that started after this call (shared with concurrent callers)."""
        return await self._coalescer.run(
            (namespace, instance), lambda: self._sync(namespace, instance, snapshot())
        )

    def password_outdated(self, namespace: str, instance: str, username: str, secret_version: str) -> bool:
        """Whether the broker may hold another Secret version's password than `secret_version`."""
        held = self._passwords.get((namespace, instance, username))
        return held is None or held.version != secret_version

    async def _sync(self, namespace: str, instance_name: str, snap: AccessSnapshot) -> SyncReport:
        """The ordered steps of one sync over one context; the first that returns a report ends it."""
        run = _Run(namespace, instance_name, snap)
        for step in (self._check_instance, self._read_broker, self._desire, self._apply):
            failure = await step(run)
            if failure is not None:
                return failure
        return self._report(run)

    async def _check_instance(self, run: _Run) -> SyncReport | None:
        """The instance exists, enforces authorization and has the listener the operator manages it by."""
        inst, name, namespace = run.snap.instance, run.instance_name, run.namespace
        if inst is None or inst.deleting:
            return _failed(
                "InstanceNotFound",
                f"MqttInstance {name!r} does not exist in namespace {namespace!r}: "
                "create it or correct spec.instanceRef.name",
                retry_after=10,
            )
        if not inst.authorization:
            return _failed(
                "AuthorizationDisabled",
                f"MqttInstance {name!r} has spec.authorization.enabled=false: "
                "any username and password connect and nothing is enforced",
                warn=False,
            )
        if inst.mqtt_port is None:
            return _failed(
                "NoPlainListener",
                f"MqttInstance {name!r} has no mqtt listener, which the operator "
                "uses to manage accounts: add spec.listeners.mqtt",
            )
        return None

    async def _read_broker(self, run: _Run) -> SyncReport | None:
        """Log in as the instance's admin and read the accounts, roles and default access it has."""
        inst, name, namespace = run.instance, run.instance_name, run.namespace
        assert inst.mqtt_port is not None
        admin = await read_secret(self.client, namespace, inst.admin_secret)
        if admin is None or not admin.data.get("password"):
            return _failed(
                "InstanceNotReady",
                f"the admin Secret {inst.admin_secret!r} of MqttInstance {name!r} does not exist yet",
                retry_after=10,
                warn=False,
            )
        host, port = self.settings.broker_address(namespace, name, f"{name}.{namespace}.svc", inst.mqtt_port)
        address = BrokerAddress(
            host, port, admin.data.get("username", ADMIN_USERNAME), admin.data["password"]
        )
        try:
            run.broker = await self.pool.client((namespace, name), address)
            run.actual_clients = await run.broker.list_clients()
            run.actual_roles = await run.broker.list_roles()
            run.actual_defaults = await run.broker.get_default_acl_access()
        except BrokerError as err:
            return _failed("BrokerUnreachable", str(err), retry_after=15)
        return None

    async def _desire(self, run: _Run) -> SyncReport | None:
        """The roles the AclPolicies ask for, and each AuthUser's account (with its password when the
        broker does not hold that Secret version's yet); then the fewest commands to get there."""
        started = time.monotonic()
        live_users = [u for u in run.snap.users if not u.deleting and u.spec is not None]
        subjects = {
            u.username: acl.Subject(u.username, u.spec.client_id if u.spec else None) for u in live_users
        }
        policy_results = self._policies(run.snap.policies, subjects, run.report)
        grants = acl.merge_grants(policy_results)
        have = {c.username: c for c in run.actual_clients}
        run.user_plans = await self._user_plans(run.namespace, run.instance_name, run.snap, have, run.report)
        run.secrets_seconds = time.monotonic() - started
        desired_clients, password_changes = [], set()
        for up in run.user_plans:
            username = up.entry.username
            if up.username_refused:
                continue
            if up.password is None and username not in have:
                continue  # cannot be created without a password; its outcome says why
            desired_clients.append(
                DesiredClient(
                    username=username,
                    password=up.password or "",
                    roles=grants.get(username, ()),
                    description=up.entry.spec.description if up.entry.spec else "",
                    clientid=up.entry.spec.client_id if up.entry.spec else None,
                    owner=f"{run.namespace}/{up.entry.name}",
                )
            )
            if up.password is not None and username in have:
                password_changes.add(username)
        run.plan = plan(
            desired_clients,
            [role for result in policy_results for role in result.roles],
            run.actual_clients,
            run.actual_roles,
            ownership=OWNERSHIP,
            password_changes=password_changes,
            prune=True,
            desired_defaults=DENY_BY_DEFAULT,
            actual_defaults=run.actual_defaults,
        )
        return None

    async def _apply(self, run: _Run) -> SyncReport | None:
        """Send the planned commands; a command the broker refuses is its subject's outcome."""
        if not run.plan.commands:
            return None
        assert run.broker is not None
        started = time.monotonic()
        try:
            results = await run.broker.execute(run.plan.commands)
        except BrokerError as err:
            return _failed("BrokerUnreachable", str(err), retry_after=15)
        for res in results:
            if not res.ok:
                run.refused.setdefault(res.command.subject, str(res.error))
        log.info(
            "broker synced",
            extra={
                "instance": f"{run.namespace}/{run.instance_name}",
                "commands": len(run.plan.commands),
                "failed": len(run.refused),
                "secrets_s": round(run.secrets_seconds, 3),
                "broker_s": round(time.monotonic() - started, 3),
            },
        )
        return None

    def _report(self, run: _Run) -> SyncReport:
        """Each AuthUser's and AclPolicy's outcome (those decided earlier stay)."""
        report, refused = run.report, run.refused
        report.commands = len(run.plan.commands)
        conflicts = {c.name: c.message for c in run.plan.conflicts}
        now = now_rfc3339()
        for up in run.user_plans:
            name, username = up.entry.name, up.entry.username
            if up.outcome is not None:
                report.users[name] = up.outcome
            elif username in conflicts:
                report.users[name] = not_ready("Conflict", conflicts[username])
            elif username in refused:
                report.users[name] = not_ready(
                    "BrokerRejected",
                    f"the broker refused account {username!r}: {refused[username]}",
                    retry_after=30,
                )
            else:
                if up.password is not None and up.version is not None:
                    key = (run.namespace, run.instance_name, username)
                    self._passwords[key] = _PasswordSet(up.version, now)
                report.users[name] = _synced(up, now)
        for pol in run.snap.policies:
            if pol.name in report.policies:
                continue
            role_failures = [
                f"{s}: {m}"
                for s, m in refused.items()
                if s.startswith(OWNERSHIP.role_prefix)
                and acl.is_policy_role(s, _policy_key(pol), OWNERSHIP.role_prefix)
            ]
            if role_failures:
                report.policies[pol.name] = not_ready(
                    "BrokerRejected", "; ".join(role_failures), retry_after=30
                )
        report.finished_at = now
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
                fields=AclPolicyStatus(
                    role_name=roles.role_name,
                    granted_users=sorted(s.username for s in named),
                    pending_users=pending,
                    acl_count=roles.acl_count,
                ).fields(),
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
        claims = username_claims(snap.users)

        async def one(entry: UserEntry) -> _UserPlan:
            up = _UserPlan(entry)
            if entry.spec is None:
                up.outcome = not_ready("InvalidSpec", entry.error or "the spec cannot be read")
                return up
            refusal = claims.get(entry.name)
            if refusal is not None:
                # One bad AuthUser gets the error; the other accounts of the broker still sync.
                up.outcome = not_ready("Conflict", refusal)
                up.username_refused = True
                return up
            held = self._passwords.get((namespace, instance, entry.username))
            known = held.version if held else entry.synced_secret_version
            current = snap.secret_versions.get(entry.secret_name)
            if entry.username in have and current is not None and current == known:
                up.held = held
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
                up.held = held
                return up
            up.password, up.version = password, secret.resource_version
            return up

        live = [u for u in snap.users if not u.deleting]
        return list(await asyncio.gather(*(one(u) for u in live)))


def _policy_key(pol: PolicyEntry) -> str:
    return f"{pol.namespace}.{pol.name}"
