"""`helm upgrade` of the operator from the previous release to this tree, under traffic.

The previous release is a commit (e2e/previous-release, or E2E_PREVIOUS_RELEASE): its chart and images
(localnode/release.py). The session's operator is moved back to it, the example connector set up under
numbered traffic, and the operator upgraded to the working tree's chart and image. docs/upgrading.md says
what an upgrade restarts and why.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.traffic import WORKERS, car_through_the_example, none_lost
from localnode import release
from localnode.system import OPERATOR_NAMESPACE, RELEASE
from testenv.cluster import Namespace, wait_for

PINNED = Path(__file__).resolve().parent / "previous-release"


def previous_commit() -> str:
    pinned = [line for line in PINNED.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return os.environ.get("E2E_PREVIOUS_RELEASE") or pinned[0].strip()


def _operator_images(cluster: Any) -> set[str]:
    found = cluster.kubectl(
        "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
    )
    return {c["image"] for p in json.loads(found.stdout)["items"] for c in p["spec"]["containers"]}


def _pods(ns: Namespace, names: list[str]) -> dict[str, tuple[str, int]]:
    """Each Pod's uid and its containers' restarts: either changes when the Pod is restarted."""
    found = {}
    for name in names:
        pod = ns.get("pod", name) or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        found[name] = (
            (pod.get("metadata") or {}).get("uid", ""),
            sum(int(s["restartCount"]) for s in statuses),
        )
    return found


def _generations(ns: Namespace, names: list[str]) -> dict[str, int]:
    """Each StatefulSet's generation: it changes only when its spec (the Pod template) does."""
    return {
        name: int(((ns.get("statefulset", name) or {}).get("metadata") or {}).get("generation", 0))
        for name in names
    }


def _not_ready(ns: Namespace) -> list[str]:
    found = json.loads(ns.cp.kubectl("get", "mqtt", "-n", ns.namespace, "-o", "json").stdout)["items"]
    return [
        f"{item['kind']}/{item['metadata']['name']}"
        for item in found
        if not any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (item.get("status") or {}).get("conditions") or []
        )
    ]


@pytest.mark.node_only("builds an earlier commit's images and imports them into the node's containerd")
def test_helm_upgrade_from_the_previous_release_under_traffic(cluster: Any, namespace: Namespace) -> None:
    """Installed by the previous release's chart: the example broker and connector under traffic; then
    `helm upgrade` to this tree. The operator's Pod is replaced; a broker or worker Pod is restarted only
    when the new operator changes its StatefulSet's spec; nothing acknowledged is lost; every object of
    the namespace is Ready afterwards."""
    previous = release.build(previous_commit())
    cluster.install_operator(previous)
    try:
        assert _operator_images(cluster) == {previous.operator_ref}
        workers, publisher = car_through_the_example(namespace)
        statefulsets = ["devices", WORKERS]
        try:
            wait_for("traffic flowing", lambda: len(publisher.acked) >= 500, timeout=60)
            pods_before = _pods(namespace, ["devices-0", *workers])
            generations_before = _generations(namespace, statefulsets)
            began = time.monotonic()
            cluster.install_operator()  # helm upgrade --wait: the new operator's Pod is Ready
            upgraded = time.monotonic() - began
            assert previous.operator_ref not in _operator_images(cluster)
            # The new operator resumes every object: a full reconcile of each, and a recheck after
            # the drift period.
            time.sleep(2 * cluster.drift_period + 5)
            wait_for("every object Ready", lambda: not _not_ready(namespace), timeout=120)
            time.sleep(10)  # traffic after the upgrade
        finally:
            publisher.stop()
        changed = [
            name
            for name, generation in _generations(namespace, statefulsets).items()
            if generation != generations_before[name]
        ]
        pods_after = _pods(namespace, list(pods_before))
        restarted = [name for name, before in pods_before.items() if pods_after[name] != before]
        none_lost(
            cluster,
            publisher,
            f"helm upgrade from {previous.commit[:7]} to the working tree",
            f"upgrade took {upgraded:.1f} s; StatefulSets changed by the new operator: {changed or 'none'}; "
            f"Pods restarted: {restarted or 'none'}",
            max_duplicates=len(restarted) * 1000,
        )
        # A Pod restarted only because the new operator changed its StatefulSet.
        unexplained = [name for name in restarted if name.rsplit("-", 1)[0] not in changed]
        assert unexplained == [], f"restarted with their StatefulSet unchanged: {unexplained}"
    finally:
        cluster.install_operator()  # the working tree's operator for the tests after this one
