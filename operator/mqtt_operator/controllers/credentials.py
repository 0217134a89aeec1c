"""Generated passwords: created once into the AuthUser's credentials Secret, never regenerated."""

from __future__ import annotations

from lightkube import ApiError, AsyncClient

from mqtt_operator.controllers.entries import InstanceEntry, UserEntry
from mqtt_operator.kube.apply import apply, create
from mqtt_operator.kube.secrets import SecretData, read_secret
from mqtt_operator.logs import register_secret
from mqtt_operator.resources.admin_secret import generate_password
from mqtt_operator.resources.credentials_secret import credentials_secret


async def ensure_generated_secret(
    client: AsyncClient, user: UserEntry, instance: InstanceEntry | None, known_to_exist: bool
) -> SecretData:
    """The existing Secret when it has a password (a restart mid-way never regenerates); else a new one.

    `known_to_exist` comes from the Secret index: when the index has never seen the Secret, the
    read is skipped (a burst of 1,000 new users saves 1,000 requests); a Secret created meanwhile
    still wins, because creating over it fails and it is then read.
    """
    if known_to_exist:
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
    try:
        live = await create(client, manifest)
    except ApiError as err:
        if err.status.code != 409:
            raise
        existing = await read_secret(client, user.namespace, user.secret_name)
        if existing is not None and existing.data.get("password"):
            return existing
        live = await apply(client, manifest)  # it exists without a password: fill it in
    return SecretData(
        name=user.secret_name,
        resource_version=live["metadata"]["resourceVersion"],
        data={"username": user.username, "password": password},
    )
