"""One lightkube client per process, and the generic resource classes of our six kinds."""

from __future__ import annotations

from functools import cache

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from mqtt_operator.api.kinds import GROUP, VERSION, Kind

# Connections to the API server kept open between requests. httpx keeps 20 by default: a burst of
# reconciles (a thousand accounts applied at once) goes over that, and each request past it paid a new
# TLS handshake (3.5 % of the operator's CPU in that benchmark).
KEEPALIVE_CONNECTIONS = 64


def make_client(field_manager: str) -> AsyncClient:
    """In a pod the service account, elsewhere $KUBECONFIG (or ~/.kube/config)."""
    config = KubeConfig.from_env()
    single = config.get()
    assert single is not None and single.user is not None, "the kubeconfig names no context or user"
    # lightkube builds the TLS context (CA, client certificate) itself only without a transport of ours.
    tls = verify_cluster(single.cluster, single.user, single.abs_file)
    transport = httpx2.AsyncHTTPTransport(
        verify=tls,
        limits=httpx2.Limits(max_connections=100, max_keepalive_connections=KEEPALIVE_CONNECTIONS),
    )
    return AsyncClient(config=config, field_manager=field_manager, transport=transport)


@cache
def resource(kind: Kind) -> type[GenericNamespacedResource]:
    return create_namespaced_resource(GROUP, VERSION, kind.kind, kind.plural)
