"""Finding Pods: the running bridge workers of a connector and their addresses."""

from __future__ import annotations

from collections.abc import Mapping

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod


async def running_pod_ips(client: AsyncClient, namespace: str, labels: Mapping[str, str]) -> dict[str, str]:
    """Pod name -> Pod IP of the running Pods matching `labels`."""
    result: dict[str, str] = {}
    async for pod in client.list(Pod, namespace=namespace, labels=dict(labels)):
        status, meta = pod.status, pod.metadata
        if status is None or meta is None or meta.name is None:
            continue
        if status.phase == "Running" and status.podIP and meta.deletionTimestamp is None:
            result[meta.name] = status.podIP
    return result
