"""A broker process that dies is restarted in the same Pod; an account removed from the broker behind the
operator's back comes back with drift repair."""

from __future__ import annotations

import subprocess
from typing import Any

from e2e.helpers import MQU, apply_examples, connects, pod, pod_ready, restart_count, wait_ready_instance
from mqtt_operator.resources.admin_secret import ADMIN_USERNAME
from testenv.cluster import Namespace, wait_for
from testenv.paths import tool


def test_a_killed_broker_is_restarted_and_drift_repair_restores_its_users(
    cluster: Any, namespace: Namespace
) -> None:
    ns = namespace.namespace
    apply_examples(namespace, "mqttinstance", "authuser", "aclpolicy")
    wait_ready_instance(namespace)
    namespace.wait_condition(MQU, "fleet-dashboard", timeout=90)
    password = namespace.secret("fleet-dashboard-credentials")
    before = pod(namespace, "devices-0")
    assert restart_count(before, "mosquitto") == 0

    cluster.kill_container(ns, "devices-0", "mosquitto")
    after = wait_for(
        "the broker restarted and Ready again",
        lambda: (
            (found := pod_ready(namespace, "devices-0")) and restart_count(found, "mosquitto") >= 1 and found
        ),
        timeout=60,
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # the same Pod: only the container restarted
    mosquitto = next(s for s in after["status"]["containerStatuses"] if s["name"] == "mosquitto")
    assert "terminated" in mosquitto["lastState"]

    with cluster.broker(ns, "devices") as (host, port):
        # The account lives on the data volume, which outlives the container.
        assert connects(host, port, "fleet-dashboard", password)
        admin = namespace.secret("devices-admin")
        connection = [tool("mosquitto_ctrl"), "-h", host, "-p", str(port), "-u", ADMIN_USERNAME, "-P", admin]
        subprocess.run(
            [*connection, "dynsec", "deleteClient", "fleet-dashboard"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        assert not connects(host, port, "fleet-dashboard", password)  # the broker really forgot
        wait_for(
            "fleet-dashboard back in the broker",
            lambda: connects(host, port, "fleet-dashboard", password),
            timeout=cluster.drift_period * 6,
        )
