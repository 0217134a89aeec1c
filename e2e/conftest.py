"""The cluster under test (session-wide) and a fresh namespace per test.

Run with `make e2e` (or as part of `make test`): the real node of `make dev` (localnode/), which needs
root (namespaces, cgroups). `make e2e-kind` runs the same tests on a kind cluster (e2e/kind/run.sh).
Every test runs on every target the session has (`targets.names()`), unless it is marked
`@pytest.mark.node_only("why")`: then it is skipped elsewhere, with that reason in the report.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import targets
from testenv.cluster import Namespace, restricted_namespace
from testenv.secret_scan import LeakScan, collect


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


@pytest.fixture(scope="session")
def leak_scan(cluster: Any) -> LeakScan:
    """What each test namespace held just before its objects were deleted: the passwords of its Secrets,
    its Events, objects and container logs (the Secrets and Pods go with the objects, and the kubelet
    removes a deleted Pod's logs). e2e/test_zz_no_secret_leaked.py searches it, with the whole cluster,
    at the end of the session."""
    return LeakScan()


@pytest.fixture
def namespace(cluster: Any, leak_scan: LeakScan) -> Iterator[Namespace]:
    """A fresh namespace enforcing the `restricted` Pod Security level, so any Pod the operator makes
    below it is refused; afterwards its integrations and brokers are deleted, so their Pods stop."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "-f", "-", input=json.dumps(restricted_namespace(name)))
    yield Namespace(cluster, name)  # any target will do: Namespace only calls its kubectl()
    try:
        collect(leak_scan, cluster.kubectl, name)
    except Exception as err:  # the last test reports it; the cleanup below must still run
        leak_scan.errors.append(f"namespace {name}: {type(err).__name__}: {err}")
    # The operator's finalizers clean the brokers up; the garbage collector takes the StatefulSets.
    cluster.kubectl("delete", "mqtt", "--all", "-n", name, "--wait=false", check=False)
    cluster.kubectl("delete", "statefulsets,deployments", "--all", "-n", name, "--wait=false", check=False)
