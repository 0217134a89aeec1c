"""The broker's security objects as plain values: what Mosquitto's dynamic security holds, and what we want.

`BrokerClient`/`BrokerRole` are what the broker reports (it never reports passwords);
`DesiredClient`/`DesiredRole` are what the operator wants there. Both sides share `Acl` and
`RoleGrant`, so the planner compares like with like. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

AclType = Literal[
    "publishClientSend",
    "publishClientReceive",
    "subscribeLiteral",
    "subscribePattern",
    "unsubscribeLiteral",
    "unsubscribePattern",
]
ACL_TYPES: frozenset[str] = frozenset(get_args(AclType))

# Mosquitto stores a role grant made without a priority as -1 and then omits the field.
DEFAULT_GRANT_PRIORITY = -1


@dataclass(frozen=True, order=True)
class Acl:
    """One ACL entry of a role. A role holds at most one entry per (acltype, topic): that pair is its key."""

    acltype: AclType
    topic: str
    priority: int = 0
    allow: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.acltype, self.topic)

    def __post_init__(self) -> None:
        if self.acltype not in ACL_TYPES:
            raise ValueError(f"unknown ACL type {self.acltype!r}: use one of {sorted(ACL_TYPES)}")


@dataclass(frozen=True, order=True)
class RoleGrant:
    """A role given to a client, with the priority that orders it among the client's roles (higher first)."""

    rolename: str
    priority: int = DEFAULT_GRANT_PRIORITY


@dataclass(frozen=True)
class DefaultAclAccess:
    """What the broker decides when no ACL of a client's roles matches."""

    publish_client_send: bool = False
    publish_client_receive: bool = False
    subscribe: bool = False
    unsubscribe: bool = True

    def as_acls(self) -> list[dict[str, str | bool]]:
        return [
            {"acltype": "publishClientSend", "allow": self.publish_client_send},
            {"acltype": "publishClientReceive", "allow": self.publish_client_receive},
            {"acltype": "subscribe", "allow": self.subscribe},
            {"acltype": "unsubscribe", "allow": self.unsubscribe},
        ]


# Deny by default, except unsubscribing: refusing an UNSUBSCRIBE protects nothing (the client was
# allowed to subscribe) and only keeps messages flowing to a client that asked to stop them.
DENY_BY_DEFAULT = DefaultAclAccess()


@dataclass(frozen=True)
class BrokerClient:
    """A client (account) as the broker reports it."""

    username: str
    clientid: str | None = None
    textname: str | None = None
    textdescription: str | None = None
    roles: tuple[RoleGrant, ...] = ()
    disabled: bool = False


@dataclass(frozen=True)
class BrokerRole:
    """A role as the broker reports it."""

    rolename: str
    textname: str | None = None
    textdescription: str | None = None
    acls: tuple[Acl, ...] = ()


@dataclass(frozen=True)
class DesiredClient:
    """An account the operator wants on the broker.

    `password` is plaintext because the dynamic-security API of Mosquitto 2.0 takes nothing else;
    it is left out of repr so the object can be logged. `clientid`, when set, is the only client id
    the broker accepts for this username (and what `%c` in ACL topics stands for). `owner` names the
    resource that declared the account (e.g. "namespace/name"); it is written next to the ownership
    marker so a person reading the broker's state can tell where an account comes from.
    """

    username: str
    password: str = field(repr=False)
    roles: tuple[RoleGrant, ...] = ()
    description: str = ""
    clientid: str | None = None
    owner: str = ""


@dataclass(frozen=True)
class DesiredRole:
    """A role the operator wants on the broker; its name must carry the operator's role prefix."""

    rolename: str
    acls: tuple[Acl, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        keys = [acl.key for acl in self.acls]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            # Mosquitto keeps one entry per (type, topic); two would leave the outcome to chance.
            listed = ", ".join(f"{acltype} {topic}" for acltype, topic in duplicates)
            raise ValueError(f"role {self.rolename!r} has more than one ACL for: {listed}")


@dataclass(frozen=True)
class Ownership:
    """Which broker objects the operator owns, and may therefore change or delete.

    Roles are owned by name: every role the operator creates starts with `role_prefix`. Clients
    cannot be (their usernames are the user's choice), so an owned client carries `client_marker`
    as its textname, optionally followed by a space and the owner. Names in `protected_clients`
    and `protected_roles` (the operator's own admin account) are never touched.
    """

    role_prefix: str = "mqop:"
    client_marker: str = "managed-by=mqtt-operator"
    protected_clients: frozenset[str] = frozenset({"admin"})
    protected_roles: frozenset[str] = frozenset({"admin"})

    def owns_role(self, rolename: str) -> bool:
        return rolename.startswith(self.role_prefix) and rolename not in self.protected_roles

    def owns_client(self, client: BrokerClient) -> bool:
        if client.username in self.protected_clients:
            return False
        name = client.textname or ""
        return name == self.client_marker or name.startswith(self.client_marker + " ")

    def client_textname(self, owner: str) -> str:
        return f"{self.client_marker} {owner}" if owner else self.client_marker
