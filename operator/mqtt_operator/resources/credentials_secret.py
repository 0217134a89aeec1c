"""The `<AuthUser>-credentials` Secret of a generated password, ready for an application to mount."""

from __future__ import annotations

import base64
from typing import Any

from mqtt_operator.api.kinds import AUTH_USER
from mqtt_operator.resources.meta import labels


def generated_secret_name(user_name: str) -> str:
    """Where an AuthUser without passwordSecretRef gets its generated password."""
    return f"{user_name}-credentials"


def credentials_secret(
    user_name: str, namespace: str, uid: str, secret_name: str, username: str, password: str, endpoint: str
) -> dict[str, Any]:
    """Owned by the AuthUser, so it goes when the account goes (in a cluster, by garbage collection)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name,
            "namespace": namespace,
            "labels": labels(AUTH_USER.kind, user_name, "credentials"),
            "ownerReferences": [
                {
                    "apiVersion": AUTH_USER.api_version,
                    "kind": AUTH_USER.kind,
                    "name": user_name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"username": b64(username), "password": b64(password), "endpoint": b64(endpoint)},
    }
