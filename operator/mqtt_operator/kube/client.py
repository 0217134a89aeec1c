"""One lightkube client per process, and the generic resource classes of our six kinds."""

from __future__ import annotations

from functools import cache

from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from mqtt_operator.api.kinds import GROUP, VERSION, Kind


def make_client(field_manager: str) -> AsyncClient:
    """In a pod the service account, elsewhere $KUBECONFIG (or ~/.kube/config)."""
    return AsyncClient(config=KubeConfig.from_env(), field_manager=field_manager)


@cache
def resource(kind: Kind) -> type[GenericNamespacedResource]:
    return create_namespaced_resource(GROUP, VERSION, kind.kind, kind.plural)
