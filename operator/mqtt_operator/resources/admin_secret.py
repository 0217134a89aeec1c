"""The broker admin Secret (`<name>-admin`): the account the operator manages the broker with, made once."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from mqtt_operator.api.instance import MqttInstanceSpec
from mqtt_operator.resources.config_lines import one_line
from mqtt_operator.resources.identity import InstanceIdentity

ADMIN_USERNAME = "mqtt-operator-admin"
USERNAME_KEY = "username"
PASSWORD_KEY = "password"  # noqa: S105 - the name of a Secret key, not a password
COMPONENT = "admin-credentials"

PasswordGenerator = Callable[[], str]


def generate_password() -> str:
    return secrets.token_urlsafe(32)


def admin_secret_name(instance_name: str) -> str:
    return f"{instance_name}-admin"


def existing_password(secret: Mapping[str, Any] | None) -> str | None:
    """The password kept in a live admin Secret, or None when there is none to keep.

    Reading it back is what makes the password permanent: the broker's dynamic-security file was
    initialised with it, and a new one would lock the operator out.
    """
    if not secret:
        return None
    data = secret.get("data") or {}
    encoded = data.get(PASSWORD_KEY)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(
            f"Secret {secret.get('metadata', {}).get('name', '?')} has a password that is not valid base64 "
            f"UTF-8: restore the original password or delete the Secret together with the broker's data"
        ) from None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def admin_secret(
    identity: InstanceIdentity,
    spec: MqttInstanceSpec,
    current_password: str | None,
    generate: PasswordGenerator = generate_password,
) -> dict[str, Any]:
    """The Secret with `current_password` kept; `generate` is called only when there is none yet."""
    password = generate() if current_password is None else current_password
    # The password reaches the init container's shell as an argument: it must be one non-empty line.
    one_line(f"Secret {admin_secret_name(identity.name)} key {PASSWORD_KEY}", password, secret=True)
    if not password:
        raise ValueError(
            f"Secret {admin_secret_name(identity.name)} has an empty password: restore it, "
            f"or delete the Secret together with the broker's data to start afresh"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        # Without an ownerReference, garbage collection leaves the Secret behind with deletionPolicy
        # retain, and a new MqttInstance of the same name finds the password its data was made with.
        "metadata": identity.metadata(
            admin_secret_name(identity.name), COMPONENT, owned=spec.deletion_policy == "delete"
        ),
        "data": {USERNAME_KEY: _b64(ADMIN_USERNAME), PASSWORD_KEY: _b64(password)},
    }
