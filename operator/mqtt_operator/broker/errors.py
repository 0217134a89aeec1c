"""The errors of talking to a broker: unreachable, refused, too slow, or a command the broker turned down.

Messages name the broker, the command and the client or role, never a password: they end up in
status conditions and Events.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Anything that went wrong talking to a broker."""


class BrokerUnreachable(BrokerError):
    """No working connection: refused, unknown host, TLS failure, lost, or no answer in time."""


class BrokerAuthFailed(BrokerUnreachable):
    """The broker refused the admin credentials, or refused the admin account the $CONTROL topics."""


class BrokerTimeout(BrokerUnreachable):
    """The broker stopped answering commands on a connection that looked alive."""


class CommandError(BrokerError):
    """The broker answered a command with an error; `error` is the broker's own words."""

    def __init__(self, command: str, subject: str, error: str) -> None:
        self.command = command
        self.subject = subject
        self.error = error
        about = f" for {subject!r}" if subject else ""
        super().__init__(f"{command}{about} failed: {error}")


class NotFound(CommandError):
    """The client, role or ACL the command names does not exist."""


class ClientNotFound(NotFound):
    pass


class RoleNotFound(NotFound):
    pass


class GroupNotFound(NotFound):
    pass


class AclNotFound(NotFound):
    pass


class AlreadyExists(CommandError):
    """The command would create something that is already there."""


class ClientAlreadyExists(AlreadyExists):
    pass


class RoleAlreadyExists(AlreadyExists):
    pass


class AclAlreadyExists(AlreadyExists):
    pass


class InvalidCommand(CommandError):
    """The broker found the command malformed (missing field, bad UTF-8, invalid ACL topic ...)."""


# The exact strings of Mosquitto 2.0's plugins/dynamic-security; anything else is a plain CommandError.
_BY_MESSAGE: dict[str, type[CommandError]] = {
    "Client not found": ClientNotFound,
    "Role not found": RoleNotFound,
    "Role does not exist": RoleNotFound,
    "Group not found": GroupNotFound,
    "ACL not found": AclNotFound,
    "Client already exists": ClientAlreadyExists,
    "Role already exists": RoleAlreadyExists,
    "ACL with this topic already exists": AclAlreadyExists,
    "Invalid ACL topic": InvalidCommand,
    "Unknown acltype": InvalidCommand,
    "Unknown command": InvalidCommand,
    "Empty password is not allowed": InvalidCommand,
}


def command_error(command: str, subject: str, error: str) -> CommandError:
    """The typed exception for the broker's error string `error` answering `command`."""
    cls = _BY_MESSAGE.get(error)
    if cls is None and (error.startswith("Invalid") or "not valid UTF-8" in error or "not an array" in error):
        cls = InvalidCommand
    return (cls or CommandError)(command, subject, error)
