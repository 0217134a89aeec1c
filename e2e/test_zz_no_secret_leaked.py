"""No password in any log, Event, status or annotation, after every other e2e test has run.

Named test_zz_* so that it runs last: pytest runs a folder's files in name order, and the session-scoped
`cluster` fixture only groups the tests per target, keeping that order within each. Run alone it still
searches what the cluster holds then.

The passwords are those of the operator's generated Secrets (`<AuthUser>-credentials`,
`<MqttInstance>-admin`) and of the Secrets AuthUsers name in passwordSecretRef. Each test namespace was
collected (testenv/secret_scan.collect) just before the `namespace` fixture deleted its objects; here
the whole cluster is collected too: every namespace's Secrets, Events and objects, and `kubectl logs` of
every container of every Pod (the operator's own log, all session long, among them). On the node of
`make dev` the container log files under its /var/log/pods are read as well, rotated ones included.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.targets import NodeTarget
from testenv.secret_scan import LeakScan, collect

# The chart's container (charts/mqtt-operator/templates/deployment.yaml).
OPERATOR_CONTAINER = "operator"


def test_no_password_in_any_log_event_status_or_annotation(cluster: Any, leak_scan: LeakScan) -> None:
    collect(leak_scan, cluster.kubectl)
    if isinstance(cluster, NodeTarget):
        leak_scan.add_log_files(cluster.node.layout.var_log / "pods")
    tested = [scope for scope in leak_scan.scopes if scope != "*"]
    if not tested and not leak_scan.passwords:
        pytest.skip("no e2e test ran before this one, and the cluster holds no password to search for")
    assert leak_scan.errors == [], "some namespaces could not be collected: the search is incomplete"
    # The e2e tests make AuthUsers with generated passwords; none collected means the collection is broken.
    assert leak_scan.passwords, f"no password found in the Secrets of {tested}"
    operator_logs = [where for where, _ in leak_scan.texts if where.endswith(f"/{OPERATOR_CONTAINER}")]
    assert operator_logs, f"the operator's log was not read; unread: {leak_scan.unread}"
    hits = leak_scan.hits()
    summary = (
        f"{len(leak_scan.passwords)} passwords searched in {len(leak_scan.texts)} logs and "
        f"{len(leak_scan.objects)} objects and Events"
    )
    assert hits == [], f"{summary}:\n{leak_scan.report()}"
