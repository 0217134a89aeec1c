"""Reading Secrets: every value read is registered for redaction before anyone can log it."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Secret

from mqtt_operator.logs import register_secret


@dataclass(frozen=True)
class SecretData:
    name: str
    resource_version: str
    data: dict[str, str]


async def read_secret(client: AsyncClient, namespace: str, name: str) -> SecretData | None:
    """The decoded Secret, or None when it does not exist."""
    try:
        secret = await client.get(Secret, name, namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return None
        raise
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    data.update(secret.stringData or {})
    for value in data.values():
        register_secret(value)
    meta = secret.metadata
    return SecretData(name=name, resource_version=(meta.resourceVersion if meta else None) or "", data=data)
