"""The cluster under test (session-wide) and a fresh namespace per test.

Run with `make e2e` (or as part of `make test`): the real node of `make dev` (localnode/), which needs
root (namespaces, cgroups). `make e2e-kind` runs the same tests on a kind cluster (e2e/kind/run.sh).
Every test runs on every target the session has (`targets.names()`), unless it is marked
`@pytest.mark.node_only("why")`: then it is skipped elsewhere, with that reason in the report.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import targets
from testenv.cluster import Namespace


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "node_only(reason): checks what only the node of make dev has; skipped on other targets",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Skipped at collection, so a node-only test never starts a cluster it cannot use.
    for item in items:
        marker = item.get_closest_marker("node_only")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or callspec.params.get("cluster", "node") == "node":
            continue
        if not marker.args:
            raise pytest.UsageError(f"{item.nodeid}: node_only needs a reason")
        item.add_marker(pytest.mark.skip(reason=f"node only: {marker.args[0]}"))


@pytest.fixture(scope="session", params=targets.names())
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`node` (localnode) and/or `kind`, as E2E_TARGETS and E2E_KIND_KUBECONFIG say (targets.py)."""
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
    yield Namespace(cluster, name)  # any target will do: Namespace only calls its kubectl()
    # The operator's finalizers clean the brokers up; the garbage collector takes the StatefulSets.
    cluster.kubectl("delete", "mqtt", "--all", "-n", name, "--wait=false", check=False)
    cluster.kubectl("delete", "statefulsets,deployments", "--all", "-n", name, "--wait=false", check=False)
