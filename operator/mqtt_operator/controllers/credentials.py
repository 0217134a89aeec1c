"""Generated passwords: created once into the AuthUser's credentials Secret, never regenerated."""

from __future__ import annotations

from lightkube import AsyncClient

from mqtt_operator.controllers.entries import InstanceEntry, UserEntry
from mqtt_operator.kube.apply import apply
from mqtt_operator.kube.secrets import SecretData, read_secret
from mqtt_operator.logs import register_secret
from mqtt_operator.resources.admin_secret import generate_password
from mqtt_operator.resources.credentials_secret import credentials_secret


async def ensure_generated_secret(
    client: AsyncClient, user: UserEntry, instance: InstanceEntry | None
) -> SecretData:
    """The existing Secret when it has a password (a restart mid-way never regenerates); else a new one."""
    existing = await read_secret(client, user.namespace, user.secret_name)
    if existing is not None and existing.data.get("password"):
        return existing
    password = generate_password()
    register_secret(password)
    manifest = credentials_secret(
        user.name,
        user.namespace,
        user.uid,
        user.secret_name,
        user.username,
        password,
        instance.endpoint if instance else "",
    )
    live = await apply(client, manifest)
    return SecretData(
        name=user.secret_name,
        resource_version=live["metadata"]["resourceVersion"],
        data={"username": user.username, "password": password},
    )
