"""Values written into one line of a configuration file (mosquitto.conf, the dynsec init script's
environment): the check that they cannot end that line early."""

from __future__ import annotations


def one_line(field: str, value: str, *, secret: bool = False) -> str:
    """`value` if it cannot end a line of the file early; otherwise a ValueError naming `field`.

    `secret` keeps the value out of the message, which ends up in status and Events.
    """
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, not {type(value).__name__}")
    if any(ch in value for ch in "\n\r\0"):
        shown = "" if secret else f" from {value!r}"
        raise ValueError(f"{field} must be a single line: remove the line break or NUL character{shown}")
    return value
