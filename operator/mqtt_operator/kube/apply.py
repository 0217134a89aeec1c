"""Server-side apply of the objects the builders produce, with one field manager."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.resource import NamespacedResource


async def apply(client: AsyncClient, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Create or update `obj` (a plain manifest) by server-side apply; returns the live object.

    `force` takes over fields another manager set: the operator owns what its builders declare.
    """
    resource = codecs.from_dict(dict(obj))
    live = await client.apply(resource, force=True)
    result: dict[str, Any] = live.to_dict()  # type: ignore[no-untyped-call]
    return result


async def create(client: AsyncClient, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Create `obj`; raises ApiError 409 when it exists (for objects that must never be overwritten)."""
    live = await client.create(codecs.from_dict(dict(obj)))
    result: dict[str, Any] = live.to_dict()  # type: ignore[no-untyped-call]
    return result


async def get(
    client: AsyncClient, res: type[NamespacedResource], namespace: str, name: str
) -> dict[str, Any] | None:
    """The live object as a manifest, or None when it does not exist."""
    try:
        live = await client.get(res, name, namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return None
        raise
    result: dict[str, Any] = live.to_dict()  # type: ignore[attr-defined]
    return result


async def delete(client: AsyncClient, res: type[NamespacedResource], namespace: str, name: str) -> bool:
    """Delete if present; returns whether something was deleted."""
    try:
        await client.delete(res, name, namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return False
        raise
    return True
