"""The cluster under test (session-wide) and a fresh namespace per test.

Run with `make e2e` (or as part of `make test`). The local cluster needs root (network namespaces).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import targets
from testenv.cluster import Namespace


@pytest.fixture(scope="session", params=targets.names())
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`local` (devcluster) always; `kind` too when E2E_KIND_KUBECONFIG names a prepared cluster."""
    target = targets.start(request.param)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def namespace(cluster: Any) -> Iterator[Namespace]:
    """A fresh namespace; afterwards its integrations and brokers are deleted, so their Pods stop."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield Namespace(cluster, name)  # type: ignore[arg-type]  # anything with kubectl() will do
    # The operator's finalizers clean the brokers up; the garbage collector takes the StatefulSets.
    cluster.kubectl("delete", "mqtt", "--all", "-n", name, "--wait=false", check=False)
    cluster.kubectl("delete", "statefulsets,deployments", "--all", "-n", name, "--wait=false", check=False)
