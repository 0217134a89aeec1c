"""The runner's only access to the API server: list, create, delete, status, and Secret/ConfigMap data.

Objects are handled as plain manifests (dicts), as the operator's builders produce them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import async_load_in_cluster_generic_resources
from lightkube.resources.core_v1 import ConfigMap, Secret
from lightkube.types import PatchType

FIELD_MANAGER = "devcluster"
ALL = "*"


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = obj["metadata"]
    return result


class Api:
    def __init__(self, client: AsyncClient, namespaces: Iterable[str] | None) -> None:
        self.client = client
        # None: every namespace
        self.namespaces = tuple(namespaces) if namespaces is not None else None

    async def list(self, res: type[NamespacedResource], everywhere: bool = False) -> list[dict[str, Any]]:
        """Every object of `res` in the runner's namespaces (or in all of them)."""
        scopes = (ALL,) if everywhere or self.namespaces is None else self.namespaces
        result = []
        for ns in scopes:
            async for obj in self.client.list(res, namespace=ns):
                result.append(obj.to_dict())  # type: ignore[attr-defined]
        return result

    async def get(self, res: type[NamespacedResource], namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self.client.get(res, name, namespace=namespace)
        except ApiError as err:
            if err.status.code == 404:
                return None
            raise
        result: dict[str, Any] = obj.to_dict()  # type: ignore[attr-defined]
        return result

    async def create(self, manifest: dict[str, Any]) -> None:
        """Create; an object of that name already there (a pass that raced a watch event) is fine."""
        try:
            await self.client.create(codecs.from_dict(manifest), field_manager=FIELD_MANAGER)
        except ApiError as err:
            if err.status.code != 409:
                raise

    async def delete(
        self, res: type[NamespacedResource], namespace: str, name: str, grace: int | None = None
    ) -> None:
        try:
            await self.client.delete(res, name, namespace=namespace, grace_period=grace)
        except ApiError as err:
            if err.status.code != 404:
                raise

    async def patch_status(
        self, res: type[NamespacedResource], namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        try:
            await self.client.patch(
                res.Status,  # type: ignore[attr-defined]
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=FIELD_MANAGER,
            )
        except ApiError as err:
            if err.status.code != 404:  # deleted meanwhile
                raise

    async def data(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        """A ConfigMap's data and binaryData, or a Secret's data, decoded; None if it does not exist."""
        res = Secret if kind == "Secret" else ConfigMap
        obj = await self.get(res, namespace, name)
        if obj is None:
            return None
        result: dict[str, bytes] = {}
        if kind == "Secret":
            for key, value in (obj.get("data") or {}).items():
                result[key] = base64.b64decode(value)
        else:
            for key, text in (obj.get("data") or {}).items():
                result[key] = text.encode()
            for key, value in (obj.get("binaryData") or {}).items():
                result[key] = base64.b64decode(value)
        return result

    async def load_custom_kinds(self) -> None:
        """Make the cluster's custom kinds known to lightkube (owners the garbage collector looks up)."""
        await async_load_in_cluster_generic_resources(self.client)
