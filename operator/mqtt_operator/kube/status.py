"""Writing `status` of our objects: only the fields that differ, and nothing when nothing differs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.types import PatchType

from mqtt_operator.api.kinds import Kind
from mqtt_operator.kube.client import resource


def status_changes(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields whose desired value differs from the current one (a merge patch)."""
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}


async def write_status(
    client: AsyncClient,
    kind: Kind,
    namespace: str,
    name: str,
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
) -> bool:
    """Merge-patch the status subresource with what changed; returns whether a write happened.

    Lists (conditions) are replaced whole by a merge patch, which is what we want: `desired` always
    carries the complete list built by the conditions helper.
    """
    changes = status_changes(current, desired)
    if not changes:
        return False
    await client.patch(
        resource(kind).Status, name, {"status": changes}, namespace=namespace, patch_type=PatchType.MERGE
    )
    return True
