"""The planner: the fewest dynamic-security commands that turn the broker's state into the desired one.

Pure: it reads values and returns commands. Why "fewest" matters: Mosquitto 2.0 disconnects every
client holding a role when one of that role's ACLs is added or removed, and disconnects a client
whose roles, password or texts change. So an unchanged object must produce no command at all, a
changed role is edited ACL by ACL rather than recreated, and nothing the operator does not own is
ever touched.

Order of the commands (the broker runs them in order, and one message's commands as one step):
default ACL access, then roles (created before the clients that use them), then clients (created
bare, then granted their roles one by one: see `commands.create_client` for why), then deletions:
clients, then roles (deleting a role takes it from every holder, so no removeClientRole is sent
for it).

`plan(desired, state after applying plan(desired, state)) == no commands`: that is tested.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TypeVar

from mqtt_operator.broker import commands as cmd
from mqtt_operator.broker.commands import Command
from mqtt_operator.broker.model import (
    Acl,
    BrokerClient,
    BrokerRole,
    DefaultAclAccess,
    DesiredClient,
    DesiredRole,
    Ownership,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Conflict:
    """A desired object left alone because the broker already has one of that name we do not own."""

    kind: str  # "client": role names carry the operator's prefix, so only clients can collide
    name: str

    @property
    def message(self) -> str:
        return (
            f"the broker already has a {self.kind} named {self.name!r} that the operator did not create; "
            f"delete it from the broker or choose another name"
        )


@dataclass(frozen=True)
class Plan:
    commands: tuple[Command, ...]
    conflicts: tuple[Conflict, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.commands)


def plan(
    desired_clients: Iterable[DesiredClient],
    desired_roles: Iterable[DesiredRole],
    actual_clients: Iterable[BrokerClient],
    actual_roles: Iterable[BrokerRole],
    *,
    ownership: Ownership,
    password_changes: Collection[str] = frozenset(),
    prune: bool = True,
    desired_defaults: DefaultAclAccess | None = None,
    actual_defaults: DefaultAclAccess | None = None,
) -> Plan:
    """Commands that make the broker hold exactly the desired clients and roles.

    Each desired object is complete (a client's `roles` are all the roles it should hold from us).
    With `prune`, the desired lists are complete for the whole broker too, and owned objects not
    in them are deleted; without it nothing is deleted (for reconciling one object at a time).
    `password_changes` names the existing clients whose password must be set again (the broker
    never reveals a password, so only the caller knows it was rotated); new clients always get theirs.
    Default ACL access is compared only when both `desired_defaults` and `actual_defaults` are given.
    """
    wanted_clients = _by_name([(c.username, c) for c in desired_clients], "client")
    wanted_roles = _by_name([(r.rolename, r) for r in desired_roles], "role")
    for rolename in wanted_roles:
        if not ownership.owns_role(rolename):
            raise ValueError(
                f"role {rolename!r} does not start with the operator's prefix {ownership.role_prefix!r}"
            )
    for username, client in wanted_clients.items():
        if username in ownership.protected_clients:
            raise ValueError(f"client {username!r} is reserved for the operator's admin account")
        for grant in client.roles:
            # With prune such a role would be deleted right after being granted: the inputs disagree.
            if prune and ownership.owns_role(grant.rolename) and grant.rolename not in wanted_roles:
                raise ValueError(
                    f"client {username!r} is granted {grant.rolename!r}, which is not a desired role"
                )
    have_clients = {c.username: c for c in actual_clients}
    have_roles = {r.rolename: r for r in actual_roles}

    out: list[Command] = []
    conflicts: list[Conflict] = []

    if desired_defaults is not None and actual_defaults is not None and desired_defaults != actual_defaults:
        out.append(cmd.set_default_acl_access(desired_defaults))

    for role in wanted_roles.values():
        out.extend(_role_commands(role, have_roles.get(role.rolename)))

    doomed_roles = (
        {name for name in have_roles if ownership.owns_role(name) and name not in wanted_roles}
        if prune
        else set()
    )
    for client in wanted_clients.values():
        have = have_clients.get(client.username)
        if have is not None and not ownership.owns_client(have):
            conflicts.append(Conflict("client", client.username))
            continue
        out.extend(
            _client_commands(client, have, ownership, client.username in password_changes, doomed_roles)
        )

    if prune:
        for username, have in have_clients.items():
            if username not in wanted_clients and ownership.owns_client(have):
                out.append(cmd.delete_client(username))
        # Deleting a role also takes it away from every client holding it (and kicks them once).
        out.extend(cmd.delete_role(name) for name in sorted(doomed_roles))

    return Plan(tuple(out), tuple(conflicts))


def _by_name(items: list[tuple[str, _T]], kind: str) -> dict[str, _T]:
    by_name = dict(items)
    if len(by_name) != len(items):
        # Two desired objects of one name mean the caller merged its inputs wrongly: refuse, do not guess.
        twice = sorted(name for name, count in Counter(name for name, _ in items).items() if count > 1)
        raise ValueError(f"the desired {kind}s name {', '.join(map(repr, twice))} more than once")
    return by_name


def _role_commands(role: DesiredRole, have: BrokerRole | None) -> list[Command]:
    if have is None:
        return [cmd.create_role(role.rolename, role.acls, textdescription=role.description or None)]
    out: list[Command] = []
    if (have.textdescription or "") != role.description:
        # modifyRole without `acls` changes only the text and disconnects no one.
        out.append(cmd.modify_role_text(role.rolename, textdescription=role.description))
    to_add, to_remove = acl_diff(role.acls, have.acls)
    # Removals first: a changed priority or effect of one (type, topic) is a remove then an add.
    out.extend(cmd.remove_role_acl(role.rolename, acl.acltype, acl.topic) for acl in to_remove)
    out.extend(cmd.add_role_acl(role.rolename, acl) for acl in to_add)
    return out


def _client_commands(
    client: DesiredClient,
    have: BrokerClient | None,
    ownership: Ownership,
    password_changed: bool,
    doomed_roles: Collection[str],
) -> list[Command]:
    textname = ownership.client_textname(client.owner)
    if have is None:
        created = cmd.create_client(
            client.username,
            client.password,
            clientid=client.clientid,
            textname=textname,
            textdescription=client.description or None,
        )
        # One addClientRole per grant, not createClient's `roles` field: see commands.create_client.
        return [
            created,
            *(cmd.add_client_role(client.username, g.rolename, g.priority) for g in sorted(client.roles)),
        ]
    out: list[Command] = []
    if have.disabled:
        out.append(cmd.enable_client(client.username))
    changed_texts: dict[str, str] = {}
    if (have.textname or "") != textname:
        changed_texts["textname"] = textname
    if (have.textdescription or "") != client.description:
        changed_texts["textdescription"] = client.description
    if (have.clientid or "") != (client.clientid or ""):
        changed_texts["clientid"] = client.clientid or ""
    if changed_texts:
        out.append(cmd.modify_client(client.username, **changed_texts))
    if password_changed:
        out.append(cmd.set_client_password(client.username, client.password))

    want = {grant.rolename: grant for grant in client.roles}
    current = {grant.rolename: grant for grant in have.roles}
    for name, grant in sorted(current.items()):
        if name in want:
            stale = want[name] != grant  # a new priority: the broker only adds, so remove first
        else:
            # Roles we do not own (given by hand) stay; roles about to be deleted leave with the deletion.
            stale = ownership.owns_role(name) and name not in doomed_roles
        if stale:
            out.append(cmd.remove_client_role(client.username, name))
    for name, grant in sorted(want.items()):
        if current.get(name) != grant:
            out.append(cmd.add_client_role(client.username, name, grant.priority))
    return out


def acl_diff(want: Iterable[Acl], have: Iterable[Acl]) -> tuple[list[Acl], list[Acl]]:
    """(to add, to remove): a role holds one entry per (type, topic), so entries are matched by that key."""
    wanted = {acl.key: acl for acl in want}
    current = {acl.key: acl for acl in have}
    return (
        [acl for key, acl in sorted(wanted.items()) if current.get(key) != acl],
        [acl for key, acl in sorted(current.items()) if wanted.get(key) != acl],
    )
