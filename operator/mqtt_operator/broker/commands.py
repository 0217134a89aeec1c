"""The dynamic-security command vocabulary: building commands and reading their answers, without I/O.

Each builder returns a `Command` exactly as Mosquitto 2.0's `$CONTROL/dynamic-security/v1` expects
it (see plugins/dynamic-security/README.md in Mosquitto's source); parsers turn the `data` of an
answer into the values of `model`. A `Command` prints its password as "***", so commands can be
logged and compared in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mqtt_operator.broker.errors import CommandError, command_error
from mqtt_operator.broker.model import (
    DEFAULT_GRANT_PRIORITY,
    Acl,
    AclType,
    BrokerClient,
    BrokerRole,
    DefaultAclAccess,
    RoleGrant,
)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

_SECRET_FIELDS = frozenset({"password"})


@dataclass(frozen=True, eq=True)
class Command:
    """One dynamic-security command: its name and its fields (everything but `correlationData`)."""

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        """The client or role the command is about, for messages."""
        for key in ("username", "rolename", "groupname"):
            value = self.fields.get(key)
            if isinstance(value, str):
                return value
        return ""

    @property
    def secrets(self) -> list[str]:
        return [str(self.fields[key]) for key in _SECRET_FIELDS if self.fields.get(key)]

    def to_json(self, correlation_data: str) -> dict[str, Any]:
        return {"command": self.name, **self.fields, "correlationData": correlation_data}

    def __repr__(self) -> str:
        shown = {key: ("***" if key in _SECRET_FIELDS else value) for key, value in self.fields.items()}
        return f"Command({self.name!r}, {shown!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class Result:
    """The broker's answer to one command: `data` when it succeeded, `error` when it did not."""

    command: Command
    data: Mapping[str, Any] = field(default_factory=dict)
    error: CommandError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> Mapping[str, Any]:
        if self.error is not None:
            raise self.error
        return self.data


def result_from_response(command: Command, response: Mapping[str, Any]) -> Result:
    error = response.get("error")
    if error is not None:
        return Result(command, error=command_error(command.name, command.subject, str(error)))
    data = response.get("data")
    return Result(command, data=data if isinstance(data, dict) else {})


# -- builders ---------------------------------------------------------------------------------------


def _acl(acl: Acl) -> dict[str, Any]:
    return {"acltype": acl.acltype, "topic": acl.topic, "priority": acl.priority, "allow": acl.allow}


def _optional(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value is not None}


def list_clients(verbose: bool = True) -> Command:
    return Command("listClients", {"verbose": verbose, "count": -1, "offset": 0})


def get_client(username: str) -> Command:
    return Command("getClient", {"username": username})


def create_client(
    username: str,
    password: str,
    *,
    clientid: str | None = None,
    textname: str | None = None,
    textdescription: str | None = None,
) -> Command:
    """A new client without roles: give it roles with `add_client_role`, never with a `roles` field.

    Mosquitto 2.0.11 (and every 2.0.x up to 2.0.20 by its source) links roles passed to
    createClient or modifyClient to the client only, not the client to the role. Changing such a
    role's ACLs then disconnects nobody, and deleting it leaves the client pointing at freed memory:
    the broker crashed (SIGBUS) on that client's next PUBLISH when we tried. addClientRole links both.
    """
    fields: dict[str, Any] = {"username": username, "password": password}
    fields.update(_optional(clientid=clientid, textname=textname, textdescription=textdescription))
    return Command("createClient", fields)


def modify_client(
    username: str,
    *,
    clientid: str | None = None,
    textname: str | None = None,
    textdescription: str | None = None,
) -> Command:
    """Change text fields or the pinned client id ("" removes the pin); Mosquitto kicks the client."""
    return Command(
        "modifyClient",
        {
            "username": username,
            **_optional(clientid=clientid, textname=textname, textdescription=textdescription),
        },
    )


def delete_client(username: str) -> Command:
    return Command("deleteClient", {"username": username})


def enable_client(username: str) -> Command:
    return Command("enableClient", {"username": username})


def set_client_password(username: str, password: str) -> Command:
    return Command("setClientPassword", {"username": username, "password": password})


def add_client_role(username: str, rolename: str, priority: int = DEFAULT_GRANT_PRIORITY) -> Command:
    return Command("addClientRole", {"username": username, "rolename": rolename, "priority": priority})


def remove_client_role(username: str, rolename: str) -> Command:
    return Command("removeClientRole", {"username": username, "rolename": rolename})


def list_roles(verbose: bool = True) -> Command:
    return Command("listRoles", {"verbose": verbose, "count": -1, "offset": 0})


def get_role(rolename: str) -> Command:
    return Command("getRole", {"rolename": rolename})


def create_role(
    rolename: str,
    acls: Iterable[Acl] = (),
    *,
    textname: str | None = None,
    textdescription: str | None = None,
) -> Command:
    fields: dict[str, Any] = {"rolename": rolename}
    fields.update(_optional(textname=textname, textdescription=textdescription))
    entries = [_acl(acl) for acl in acls]
    if entries:
        fields["acls"] = entries
    return Command("createRole", fields)


def modify_role_text(
    rolename: str, *, textname: str | None = None, textdescription: str | None = None
) -> Command:
    """Change only a role's texts; without `acls`, modifyRole leaves ACLs and connected clients alone."""
    return Command(
        "modifyRole", {"rolename": rolename, **_optional(textname=textname, textdescription=textdescription)}
    )


def delete_role(rolename: str) -> Command:
    return Command("deleteRole", {"rolename": rolename})


def add_role_acl(rolename: str, acl: Acl) -> Command:
    return Command("addRoleACL", {"rolename": rolename, **_acl(acl)})


def remove_role_acl(rolename: str, acltype: AclType, topic: str) -> Command:
    return Command("removeRoleACL", {"rolename": rolename, "acltype": acltype, "topic": topic})


def set_default_acl_access(access: DefaultAclAccess) -> Command:
    return Command("setDefaultACLAccess", {"acls": access.as_acls()})


def get_default_acl_access() -> Command:
    return Command("getDefaultACLAccess", {})


# -- parsers ----------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_grants(items: Any) -> tuple[RoleGrant, ...]:
    grants = [
        RoleGrant(str(item["rolename"]), int(item.get("priority", DEFAULT_GRANT_PRIORITY)))
        for item in items or ()
        if isinstance(item, dict) and "rolename" in item
    ]
    return tuple(sorted(grants))


def parse_acls(items: Any) -> tuple[Acl, ...]:
    acls = [
        Acl(item["acltype"], str(item["topic"]), int(item.get("priority", 0)), bool(item.get("allow", False)))
        for item in items or ()
        if isinstance(item, dict)
    ]
    return tuple(sorted(acls))


def parse_client(item: Mapping[str, Any]) -> BrokerClient:
    return BrokerClient(
        username=str(item["username"]),
        clientid=_text(item.get("clientid")),
        textname=_text(item.get("textname")),
        textdescription=_text(item.get("textdescription")),
        roles=parse_grants(item.get("roles")),
        disabled=bool(item.get("disabled", False)),
    )


def parse_role(item: Mapping[str, Any]) -> BrokerRole:
    return BrokerRole(
        rolename=str(item["rolename"]),
        textname=_text(item.get("textname")),
        textdescription=_text(item.get("textdescription")),
        acls=parse_acls(item.get("acls")),
    )


def parse_default_acl_access(data: Mapping[str, Any]) -> DefaultAclAccess:
    allowed = {
        str(item.get("acltype")): bool(item.get("allow"))
        for item in data.get("acls", ())
        if isinstance(item, dict)
    }
    defaults = DefaultAclAccess()
    return DefaultAclAccess(
        publish_client_send=allowed.get("publishClientSend", defaults.publish_client_send),
        publish_client_receive=allowed.get("publishClientReceive", defaults.publish_client_receive),
        subscribe=allowed.get("subscribe", defaults.subscribe),
        unsubscribe=allowed.get("unsubscribe", defaults.unsubscribe),
    )
